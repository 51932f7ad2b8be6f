"""SteerLLM through real langchain-core on tiny in-code models (and one slow real-model chain)."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.caches import InMemoryCache
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import PromptTemplate
from langchain_steer import ChatSteer, SteerLLM
from langchain_steer.params import CONFIG_FIELDS

from steer_plugins import SteerConfig

PROMPT = PromptTemplate.from_template("Write a question about {topic}:")
TOPICS = [{"topic": t} for t in ("stars", "comets", "galaxies", "planets", "dust")]


class Recorder:
    """Records what the adapter hands the real engine (llm's MockModel idea, output not faked)."""

    def __init__(self, engine, monkeypatch) -> None:
        self.calls: list[tuple[str, list[str], dict]] = []
        for name in ("generate", "agenerate", "stream", "astream"):
            monkeypatch.setattr(engine, name, self._wrap(name, getattr(engine, name)))

    def _wrap(self, name, fn):
        def call(prompts, *args, **kwargs):
            self.calls.append((name, list(prompts), as_keywords(kwargs)))
            return fn(prompts, *args, **kwargs)

        return call

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


def as_keywords(kwargs: dict) -> dict:
    """A call's settings as keywords: `options=` (a CallOptions) spelled out as its config fields,
    `negatives` (lists) and `add_to_pool`."""
    opts = kwargs.get("options")
    if opts is None:
        return kwargs
    negatives = None if opts.negatives is None else [list(n) for n in opts.negatives]
    return {**opts.config.model_dump(), "negatives": negatives, "add_to_pool": opts.add_to_pool}


class TokenCollector(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.ended = 0

    def on_llm_new_token(self, token: str, **kwargs) -> None:
        self.tokens.append(token)

    def on_llm_end(self, response, **kwargs) -> None:
        self.ended += 1


@pytest.fixture
def rec(tiny_engine, monkeypatch) -> Recorder:
    return Recorder(tiny_engine, monkeypatch)


@pytest.fixture
def llm(tiny_engine) -> SteerLLM:
    return SteerLLM(engine=tiny_engine, gamma=0.2, eta=0.6, max_new_tokens=8)  # short: the CI box is shared


def test_fields_mirror_steer_config_and_default_to_engine(tiny_engine, llm):
    assert set(SteerConfig.model_fields) == set(CONFIG_FIELDS) <= set(SteerLLM.model_fields)
    assert SteerLLM(engine=tiny_engine).max_new_tokens == tiny_engine.config.max_new_tokens == 16  # engine's
    assert llm.num_negatives == 3 and llm.gamma == 0.2 and llm.max_new_tokens == 8
    assert llm.steer_config == tiny_engine.config.merged(gamma=0.2, eta=0.6, max_new_tokens=8)


def test_lcel_invoke_passes_formatted_prompt_and_returns_completion_only(llm, rec):
    out = (PROMPT | llm | StrOutputParser()).invoke({"topic": "stars"})
    assert isinstance(out, str)
    assert rec.calls == [("generate", ["Write a question about stars:"], rec.calls[0][2])]
    assert rec.calls[0][2]["gamma"] == 0.2 and rec.calls[0][2]["negatives"] is None


def test_lcel_batch_is_one_engine_call(llm, rec):
    outs = (PROMPT | llm | StrOutputParser()).batch(TOPICS)
    assert len(outs) == 5 and all(isinstance(o, str) for o in outs)
    assert [(n, len(p)) for n, p, _ in rec.calls] == [("generate", 5)]


def test_batch_respects_max_concurrency(llm, rec):
    outs = (PROMPT | llm).batch(TOPICS, config={"max_concurrency": 2})
    assert len(outs) == 5
    assert [len(p) for _, p, _ in rec.calls] == [2, 2, 1]


def test_stream_callbacks_receive_every_token(llm, rec):
    cb = TokenCollector()
    chunks = list((PROMPT | llm | StrOutputParser()).stream({"topic": "comets"}, config={"callbacks": [cb]}))
    assert rec.names() == ["stream"]
    assert len(chunks) >= 2  # streamed, not one final blob
    assert cb.tokens == [c for c in chunks] and cb.ended == 1


async def test_async_paths_use_async_engine_and_keep_loop_free(llm, rec):
    chain = PROMPT | llm | StrOutputParser()
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    t = asyncio.create_task(ticker())
    try:
        one = await chain.ainvoke({"topic": "stars"})
        many = await chain.abatch(TOPICS)
        streamed = [c async for c in chain.astream({"topic": "dust"})]
    finally:
        t.cancel()
    assert isinstance(one, str) and len(many) == 5 and streamed
    assert [(n, len(p)) for n, p, _ in rec.calls] == [("agenerate", 1), ("agenerate", 5), ("astream", 1)]
    assert ticks >= 3  # the event loop kept running while the engine decoded


def _greedy(llm: SteerLLM) -> SteerLLM:
    return llm.model_copy(update={"temperature": 0.0, "negatives": ["Is the Hubble tension real?"]})


def test_stop_strings_cut_text_in_generate_and_stream(llm):
    g = _greedy(llm)
    prompt = "Write a question about astronomy:"
    full = g.invoke(prompt)
    assert len(full) >= 4
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    expected = full[: full.find(stop)]
    assert g.invoke(prompt, stop=[stop]) == expected
    assert "".join(g.stream(prompt, stop=[stop])) == expected


def test_usage_counts_match_token_ids(llm):
    prompts = ["Write a question about stars:", "Is the"]
    res = llm.generate(prompts)
    usage = res.llm_output["token_usage"]
    infos = [g[0].generation_info for g in res.generations]
    for p, info in zip(prompts, infos, strict=True):
        assert info["prompt_tokens"] == len(llm.get_token_ids(p))
        assert info["completion_tokens"] == len(info["token_ids"])
        assert info["total_tokens"] == info["prompt_tokens"] + info["completion_tokens"]
        assert info["finish_reason"] in ("stop", "length") and len(info["negatives_used"]) == 3
    assert usage["completion_tokens"] == sum(i["completion_tokens"] for i in infos)
    assert usage["total_tokens"] == sum(i["total_tokens"] for i in infos)


def test_stream_final_chunk_carries_usage(llm):
    chunks = list(llm._stream("Write a question:"))  # the chunks stream() builds on
    info = chunks[-1].generation_info
    assert info["completion_tokens"] == len(info["token_ids"]) and info["finish_reason"]
    assert all(c.generation_info is None for c in chunks[:-1])


def test_get_token_ids_uses_engine_tokenizer(llm, tiny_tok):
    assert llm.get_token_ids("dark matter") == tiny_tok("dark matter").input_ids
    assert llm.get_num_tokens("dark matter") == len(tiny_tok("dark matter").input_ids)


def test_cache_key_changes_with_gamma(tiny_engine, rec):
    cache = InMemoryCache()
    llm = SteerLLM(engine=tiny_engine, cache=cache, negatives=["a negative"], seed=3)  # seeded: cacheable
    a = llm.invoke("Write a question:")
    assert llm.invoke("Write a question:") == a and len(rec.calls) == 1  # hit
    SteerLLM(engine=tiny_engine, cache=cache, negatives=["a negative"], seed=3, gamma=0.5).invoke(
        "Write a question:"
    )
    assert len(rec.calls) == 2  # another gamma: miss
    llm.bind(gamma=0.7).invoke("Write a question:")
    assert len(rec.calls) == 3 and rec.calls[-1][2]["gamma"] == 0.7  # per-call gamma: miss
    llm.configurable_steering().with_config(configurable={"gamma": 0.9}).invoke("Write a question:")
    assert len(rec.calls) == 4 and rec.calls[-1][2]["gamma"] == 0.9
    llm.bind(negatives=["another"]).invoke("Write a question:")
    assert len(rec.calls) == 5  # other negatives: miss
    llm.bind(gamma=llm.gamma).invoke("Write a question:")
    assert len(rec.calls) == 5  # same settings: hit


def test_configurable_sweep_over_gamma_and_eta(llm, rec):
    swept = PROMPT | llm.configurable_steering() | StrOutputParser()
    ids = {s.id for s in swept.config_specs}
    assert {"gamma", "eta"} <= ids
    for gamma, eta in [(0.0, 0.0), (0.5, 0.3), (1.0, 0.6)]:
        swept.invoke({"topic": "stars"}, config={"configurable": {"gamma": gamma, "eta": eta}})
    assert [(c[2]["gamma"], c[2]["eta"]) for c in rec.calls] == [(0.0, 0.0), (0.5, 0.3), (1.0, 0.6)]


def test_bind_overrides_reach_engine(llm, rec):
    res = llm.bind(negatives=["Is a comet icy?", "Do stars die?"], gamma=0.5, max_new_tokens=4).invoke(
        "Write:"
    )
    kw = rec.calls[0][2]
    assert kw["negatives"] == [["Is a comet icy?", "Do stars die?"]] and kw["gamma"] == 0.5
    assert kw["max_new_tokens"] == 4 and kw["add_to_pool"] is None
    assert isinstance(res, str)
    r = llm.generate(["Write:"], negatives=["Do stars die?"]).generations[0][0].generation_info
    assert r["negatives_used"] == ["Do stars die?"]


def test_stop_field_and_call_stop_combine(llm, rec):
    llm.model_copy(update={"stop": ["?"]}).invoke("Write:", stop=["!"])
    assert rec.calls[0][2]["stop"] == ["?", "!"]


def test_bad_input_errors(tiny_engine, llm):
    with pytest.raises(TypeError, match="must be a str"):
        llm.invoke(5)
    with pytest.raises(TypeError, match="must be a str"):
        llm.generate([None])
    with pytest.raises(ValueError, match=r"unknown keyword argument\(s\) \['foo'\]"):
        llm.invoke("Write:", foo=1)
    with pytest.raises(ValueError, match=r"unknown keyword argument\(s\) \['bar'\]"):
        list(llm.bind(bar=2).stream("Write:"))
    with pytest.raises(ValueError, match="`gamma` must be a finite number >= 0"):
        llm.invoke("Write:", gamma=-1)
    with pytest.raises(ValueError, match="`gamma` must be a finite number >= 0"):
        SteerLLM(engine=tiny_engine, gamma=-1)
    with pytest.raises(TypeError, match="`negatives` must be a list of strings"):
        llm.invoke("Write:", negatives="one string")
    with pytest.raises(ValueError, match="needs `engine=`"):
        SteerLLM()
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['gammma'\].*not permitted"):
        SteerLLM(engine=tiny_engine, gammma=0.1)
    with pytest.raises(ValueError, match="`task` must be 'text-generation'"):
        SteerLLM.from_model_id("x", task="summarization")
    with pytest.raises(ValueError, match="pipeline_kwargs"):
        SteerLLM.from_model_id("x", pipeline_kwargs={"num_beams": 4})


@pytest.mark.slow
def test_real_model_chains(real_engine):
    llm = SteerLLM(engine=real_engine, eta=0.0, max_new_tokens=24, seed=0)
    out = (PROMPT | llm.bind(stop=[","]) | StrOutputParser()).invoke(
        {"topic": "stars"}
    )  # LCEL: stop via bind
    assert out.strip() and "," not in out
    chat = ChatSteer(engine=real_engine, eta=0.0, max_new_tokens=24, seed=0)
    msg = chat.invoke([("system", "You write one short question."), ("user", "A question about comets.")])
    assert msg.content.strip() and msg.usage_metadata["output_tokens"] <= 24
