"""LangChain's LLM cache and the negative pool: unseeded calls are fresh samples, seeded ones are
cached under a key that holds the pool's state."""

from __future__ import annotations

import pytest
from langchain_core.caches import InMemoryCache
from langchain_core.globals import get_llm_cache, set_llm_cache
from langchain_steer import ChatSteer, SteerLLM

PROMPTS = ["Write a question:"] * 4
NEG = ["Is a comet icy?"]


class CountingCache(InMemoryCache):
    """An InMemoryCache that counts what is stored."""

    def __init__(self) -> None:
        super().__init__()
        self.stored = 0

    def update(self, prompt, llm_string, return_val) -> None:
        self.stored += 1
        super().update(prompt, llm_string, return_val)


@pytest.fixture
def global_cache():
    """`set_llm_cache(InMemoryCache())` for one test, as users write it."""
    saved = get_llm_cache()
    cache = CountingCache()
    set_llm_cache(cache)
    yield cache
    set_llm_cache(saved)


@pytest.fixture
def engine_calls(tiny_engine, monkeypatch):
    """How many prompts reached the engine (outputs stay real)."""
    seen: list[int] = []
    for name in ("generate", "agenerate", "stream"):
        real = getattr(tiny_engine, name)

        def wrapper(prompts, *a, _real=real, **kw):
            seen.append(len(prompts))
            return _real(prompts, *a, **kw)

        monkeypatch.setattr(tiny_engine, name, wrapper)
    return seen


def test_unseeded_batches_are_new_samples_every_time(tiny_engine, global_cache, engine_calls):
    llm = SteerLLM(engine=tiny_engine, max_tokens=8)
    first, second = llm.batch(PROMPTS), llm.batch(PROMPTS)
    assert len(set(first)) == 4 and len(set(second)) == 4 and not set(first) & set(second)
    assert sum(engine_calls) == 8 and global_cache.stored == 0  # nothing stored, nothing served
    chat = ChatSteer(engine=tiny_engine, max_tokens=8)
    texts = [m.content for m in chat.batch(PROMPTS) + chat.batch(PROMPTS)]
    assert len(set(texts)) == 8 and sum(engine_calls) == 16


def test_seeded_calls_with_fixed_negatives_hit(tiny_engine, global_cache, engine_calls):
    llm = SteerLLM(engine=tiny_engine, max_tokens=8, seed=11, negatives=NEG)
    first = llm.batch(PROMPTS)
    assert len(set(first)) == 4  # prompt i decodes with seed + i, each with its own cache entry
    assert llm.batch(PROMPTS) == first and sum(engine_calls) == 4  # all four served from the cache
    assert llm.invoke(PROMPTS[0]) == first[0] and sum(engine_calls) == 4
    chat = ChatSteer(engine=tiny_engine, max_tokens=8, seed=11, negatives=NEG)
    once = [m.content for m in chat.batch(PROMPTS)]
    assert [m.content for m in chat.batch(PROMPTS)] == once and sum(engine_calls) == 8


async def test_seeded_async_batch_caches_each_prompt(tiny_engine, global_cache, engine_calls):
    llm = SteerLLM(engine=tiny_engine, max_tokens=8, seed=11, negatives=NEG)
    first = await llm.abatch(PROMPTS)
    assert len(set(first)) == 4 and await llm.abatch(PROMPTS) == first and sum(engine_calls) == 4
    assert llm.batch(PROMPTS) == first and sum(engine_calls) == 4  # sync and async share entries


def test_pool_state_is_in_the_key(tiny_engine, global_cache, engine_calls):
    grows = SteerLLM(engine=tiny_engine, max_tokens=8, seed=3)  # draws from the pool and grows it
    before = len(tiny_engine.pool)
    grows.invoke("Write a question:")
    grows.invoke("Write a question:")
    assert sum(engine_calls) == 2 and len(tiny_engine.pool) == before + 2  # the pool grew: a new call
    frozen = SteerLLM(engine=tiny_engine, max_tokens=8, seed=3, add_to_pool=False)
    a = frozen.invoke("Write a question:")
    assert frozen.invoke("Write a question:") == a and sum(engine_calls) == 3  # pool unchanged: hit
    tiny_engine.pool.add(["A new real example?"], real=True)
    frozen.invoke("Write a question:")
    assert sum(engine_calls) == 4  # the pool changed under it: miss
    chat = ChatSteer(engine=tiny_engine, max_tokens=8, seed=3, add_to_pool=False)
    m = chat.invoke("Hi")
    assert chat.invoke("Hi").content == m.content and sum(engine_calls) == 5


def test_per_model_cache_follows_the_same_rule(tiny_engine, engine_calls):
    cache = InMemoryCache()
    unseeded = SteerLLM(engine=tiny_engine, max_tokens=8, cache=cache, negatives=NEG)
    assert unseeded.invoke("Write:") != unseeded.invoke("Write:") and sum(engine_calls) == 2
    seeded = unseeded.model_copy(update={"seed": 1})
    assert seeded.invoke("Write:") == seeded.invoke("Write:") and sum(engine_calls) == 3
    assert unseeded.invoke("Write:", seed=1) == seeded.invoke("Write:") and sum(engine_calls) == 3
