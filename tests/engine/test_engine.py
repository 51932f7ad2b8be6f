"""Engine behaviour: streaming, threads, pool, budgets, sources and bad input."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading

import pytest
import torch

from steer_plugins import NegativePool, SteerConfig, SteerEngine
from steer_plugins.testing import TINY_CORPUS, tiny_model, tiny_tokenizer

PROMPTS = [
    "Does dark matter",
    "Write a question about astronomy:",
    "Is the Hubble",
    "Could",
    "The quick brown",
    "What is the capital",
    "Do fast radio bursts",
    "A synthetic example",
]


# ---------------------------------------------------------------- streaming
def test_stream_batch_deltas_join_to_generate_text(tiny_engine):
    want = tiny_engine.generate(PROMPTS[:3], negatives=[["x"]] * 3, seed=9)
    pieces, finals = {0: "", 1: "", 2: ""}, {}
    for ev in tiny_engine.stream(PROMPTS[:3], negatives=[["x"]] * 3, seed=9):
        pieces[ev.index] += ev.delta
        if ev.finish_reason:
            finals[ev.index] = ev.result
    assert set(finals) == {0, 1, 2}
    for i in range(3):
        assert pieces[i] == want[i].text == finals[i].text
        assert finals[i].token_ids == want[i].token_ids


def hash_without(cfg: SteerConfig, *later: str) -> str:
    """The fingerprint `cfg` had before the fields `later` existed: files made then must still resume."""
    fields = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in later}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def test_stop_string_cuts_text_and_is_never_streamed(tiny_engine):
    free = tiny_engine.generate([PROMPTS[0]], negatives=[["x"]], seed=21, max_new_tokens=24)[0]
    assert len(free.text) > 6
    stop = free.text[3:5]
    cut = tiny_engine.generate([PROMPTS[0]], negatives=[["x"]], seed=21, max_new_tokens=24, stop=[stop])[0]
    assert cut.finish_reason == "stop" and cut.text == free.text[: free.text.find(stop)]
    streamed = "".join(
        ev.delta
        for ev in tiny_engine.stream([PROMPTS[0]], negatives=[["x"]], seed=21, max_new_tokens=24, stop=[stop])
    )
    assert streamed == cut.text and stop not in streamed


def test_stop_token_ids_stop(tiny_engine):
    free = tiny_engine.generate([PROMPTS[1]], negatives=[["x"]], seed=4)[0]
    r = tiny_engine.generate([PROMPTS[1]], negatives=[["x"]], seed=4, stop_token_ids=[free.token_ids[2]])[0]
    assert (
        r.finish_reason == "stop"
        and r.token_ids == free.token_ids[: free.token_ids.index(free.token_ids[2]) + 1]
    )


async def test_async_generate_and_stream(tiny_engine):
    want = tiny_engine.generate(PROMPTS[:2], negatives=[["x"]] * 2, seed=5)
    got = await tiny_engine.agenerate(PROMPTS[:2], negatives=[["x"]] * 2, seed=5)
    assert [r.token_ids for r in got] == [r.token_ids for r in want]
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    text = {0: "", 1: ""}
    async for ev in tiny_engine.astream(PROMPTS[:2], negatives=[["x"]] * 2, seed=5):
        text[ev.index] += ev.delta
    task.cancel()
    assert [text[0], text[1]] == [r.text for r in want]
    assert ticks > 1, "the event loop kept running while the engine decoded"


def test_closing_a_stream_cancels(tiny_engine):
    it = tiny_engine.stream([PROMPTS[0]], negatives=[["x"]], seed=1, max_new_tokens=64)
    next(it)
    it.close()
    r = tiny_engine.generate([PROMPTS[0]], negatives=[["x"]], seed=1, max_new_tokens=4)[0]
    assert len(r.token_ids) == 4  # the engine is still healthy


# ---------------------------------------------------------------- threads
def test_eight_threads_equal_serial_and_are_coalesced(tiny_engine):
    serial = [tiny_engine.generate([p], negatives=[["neg"]], seed=100 + i)[0] for i, p in enumerate(PROMPTS)]
    before = tiny_engine.stats
    tiny_engine.coalesce_s = 0.05
    out: dict[int, object] = {}
    barrier = threading.Barrier(8)

    def call(i):
        barrier.wait()
        out[i] = tiny_engine.generate([PROMPTS[i]], negatives=[["neg"]], seed=100 + i)[0]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [out[i].token_ids for i in range(8)] == [r.token_ids for r in serial]
    assert [out[i].text for i in range(8)] == [r.text for r in serial]
    after = tiny_engine.stats
    batches = after.batches_started - before.batches_started
    decoded = after.prompts_decoded - before.prompts_decoded
    assert decoded == 8 and batches < 8, f"8 concurrent calls ran as {batches} batches: not coalesced"


def test_large_request_is_chunked_and_later_chunks_see_earlier_outputs(tiny_tok):
    engine = SteerEngine(
        tiny_model("llama", tiny_tok, seed=1),
        tiny_model("llama", tiny_tok, seed=2),
        tiny_tok,
        config=SteerConfig(max_new_tokens=4, num_negatives=9),
        pool=list(TINY_CORPUS),
        max_batch_size=2,
    )
    rs = engine.generate(PROMPTS, seed=0)
    assert len(rs) == 8
    assert len(engine.pool) == len(TINY_CORPUS) + sum(bool(r.text.strip()) for r in rs)
    real = set(TINY_CORPUS)
    assert any(not set(r.negatives_used) <= real for r in rs[2:]), (
        "later chunks draw earlier synthetic outputs"
    )
    engine.close()


# ---------------------------------------------------------------- pool and budgets
def test_pool_json_roundtrip_and_seeded_draws(tmp_path):
    pool = NegativePool(["a b", "c d", "e f"], seed=1)
    pool.add(["synthetic one"])
    again = NegativePool.from_json(pool.to_json())
    assert again.texts == pool.texts and again.num_real == 3
    pool.save(tmp_path / "pool.json")
    assert NegativePool.load(tmp_path / "pool.json").texts == pool.texts
    import random

    assert pool.draw(2, random.Random(5)) == again.draw(2, random.Random(5))
    with pytest.raises(ValueError, match="num_negatives"):
        pool.draw(5)
    with pytest.raises(TypeError, match="wrap it in a list"):
        pool.add("oops")


def test_synthetic_source_draws_outputs_topped_up_with_real():
    """`source="synthetic"`: real examples only while no output exists, outputs plus real top-up while
    fewer than K exist, then outputs alone; real examples added late still count as real."""
    import random

    real = ["r one", "r two", "r three", "r four"]
    pool = NegativePool(real, seed=0)
    assert set(pool.draw(3, random.Random(1), source="synthetic")) <= set(real)
    pool.add(["s one"])
    pool.add(["r five"], real=True)  # real after synthetic: still real
    assert pool.num_real == 5 and pool.num_synthetic == 1 and pool.texts[:5] == [*real, "r five"]
    for seed in range(20):
        drawn = pool.draw(3, random.Random(seed), source="synthetic")
        assert drawn[0] == "s one" and set(drawn[1:]) <= {*real, "r five"} and len(set(drawn)) == 3
    pool.add(["s two", "s three", "s four"])
    draws = {tuple(sorted(pool.draw(3, random.Random(s), source="synthetic"))) for s in range(30)}
    assert all(set(d) <= {"s one", "s two", "s three", "s four"} for d in draws) and len(draws) > 1
    assert any(t in real for s in range(30) for t in pool.draw(3, random.Random(s)))  # "pool": all
    again = NegativePool.from_json(pool.to_json())
    assert again.num_synthetic == 4 and again.texts == pool.texts
    with pytest.raises(ValueError, match="one of"):
        pool.draw(2, source="real")
    with pytest.raises(ValueError, match="negatives_from"):
        SteerConfig(negatives_from="outputs")


def test_engine_negatives_from_synthetic_and_fingerprint(tiny_tok):
    """Through the engine: with `negatives_from="synthetic"` (the default) a call after outputs joined
    the pool draws only outputs; the paper's draw keeps the fingerprint it had before the field existed."""
    engine = SteerEngine(
        tiny_model("llama", tiny_tok, seed=1),
        tokenizer=tiny_tok,
        config=SteerConfig(max_new_tokens=3, num_negatives=2),
        pool=list(TINY_CORPUS),
    )
    made = ["an earlier output", "another earlier output", "a third output"]
    engine.pool.add(made)
    rows = engine.generate([PROMPTS[0]] * 4, seeds=[1, 2, 3, 4], negatives_from="synthetic")
    assert all(set(r.negatives_used) <= set(made) and len(r.negatives_used) == 2 for r in rows)
    rows = engine.generate([PROMPTS[0]] * 8, seeds=list(range(8)), negatives_from="pool")
    assert any(set(r.negatives_used) - set(made) for r in rows)  # the paper's draw reaches real ones
    rows = engine.generate([PROMPTS[0]] * 4, seeds=[5, 6, 7, 8])  # the default draws outputs only
    assert all(r.negatives_used and not set(r.negatives_used) & set(TINY_CORPUS) for r in rows)
    engine.close()
    cfg = SteerConfig()
    assert cfg.negatives_from == "synthetic" == SteerConfig.preset("steer").negatives_from
    assert SteerConfig.preset("paper").negatives_from == "pool"
    # the paper's draw hashes as it did before the field existed, so files made then still resume
    before = hash_without(cfg, "negatives_from", "share_negatives", "known_words")
    old = cfg.merged(negatives_from="pool", known_words=False)
    assert old.fingerprint() == before != cfg.merged(known_words=False).fingerprint()


def test_spelling_floor_is_a_default_that_names_itself():
    cfg = SteerConfig()
    assert cfg.spelling_min_p == 0.5 == SteerConfig.preset("steer").spelling_min_p
    assert SteerConfig.preset("paper").spelling_min_p is None
    # off, it hashes as before the field existed (files made then resume); on, it is another setting
    before = hash_without(cfg, "spelling_min_p", "share_negatives", "known_words")
    old = cfg.merged(spelling_min_p=None, known_words=False)
    assert old.fingerprint() == before != cfg.merged(known_words=False).fingerprint()
    with pytest.raises(ValueError, match=r"spelling_min_p.*\(0, 1\]"):
        SteerConfig(spelling_min_p=1.5)


def test_known_words_are_a_default_that_hashes_as_before_while_off():
    assert SteerConfig().known_words is True is SteerConfig.preset("steer").known_words
    assert SteerConfig.preset("paper").known_words is False
    cfg = SteerConfig(known_words=False)
    before = hash_without(cfg, "share_negatives", "known_words")
    assert cfg.fingerprint() == before != cfg.merged(known_words=True).fingerprint()
    with pytest.raises(ValueError, match="known_words"):
        SteerConfig(known_words="sometimes")


def test_negative_budget_drops_whole_examples(tiny_engine):
    negs = [
        "Is the Hubble tension a sign of new physics?",
        "x " * 200,
        "Do fast radio bursts come from magnetars?",
    ]
    r = tiny_engine.generate([PROMPTS[0]], negatives=[negs], seed=1, negative_max_tokens=60)[0]
    assert r.negatives_used == [negs[0], negs[2]] and r.negatives_dropped == [negs[1]]
    assert r.warnings and "dropped" in r.warnings[0]


def test_prompt_longer_than_context_window_is_truncated_not_fatal(tiny_engine):
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 80
    r = tiny_engine.generate([long_prompt], negatives=[["x " * 600]], seed=1, max_new_tokens=4)[0]
    assert r.prompt_truncated_tokens > 0 and r.prompt_tokens == tiny_engine.context_window - 4
    assert r.negatives_dropped and not r.negatives_used
    assert len(r.token_ids) == 4


def test_k_larger_than_pool_is_a_clear_error(tiny_tok):
    engine = SteerEngine(tiny_model("llama", tiny_tok, seed=1), tokenizer=tiny_tok, pool=["one", "two"])
    with pytest.raises(ValueError, match="num_negatives.*larger than the negative pool"):
        engine.generate(["Is"], num_negatives=3)
    engine.close()


def test_empty_pool_warns_and_runs_without_negatives(tiny_tok):
    engine = SteerEngine(
        tiny_model("llama", tiny_tok, seed=1), tokenizer=tiny_tok, config=SteerConfig(max_new_tokens=3)
    )
    with pytest.warns(UserWarning, match="pool is empty"):
        r = engine.generate(["Is"])[0]
    assert r.negatives_used == [] and len(engine.pool) == 0
    engine.close()


# ---------------------------------------------------------------- fallback
def test_unusable_scores_fall_back_to_expert_and_are_flagged(tiny_tok):
    base = tiny_model("llama", tiny_tok, seed=2)
    with torch.no_grad():
        base.lm_head.weight[5].fill_(float("inf"))  # base log-probs become NaN → combined NaN
    engine = SteerEngine(
        tiny_model("llama", tiny_tok, seed=1), base, tiny_tok, config=SteerConfig(max_new_tokens=5, eta=0.0)
    )
    r = engine.generate(["Does dark matter"], return_scores=True, seed=1, known_words=False)[0]
    assert r.fallback_steps == 5 and "fell back" in r.warnings[0]
    assert torch.isfinite(r.scores).all()
    # with known words the fallback is the expert among the allowed tokens: the promise holds
    guarded = engine.generate(["Does dark matter"], return_scores=True, seed=1)[0]
    assert guarded.fallback_steps == 5 and torch.isinf(guarded.scores).any(-1).all()
    engine.close()


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "prompts,match",
    [
        ([], "empty"),
        ([""], "prompt #0 is empty"),
        ("Is", "list of strings"),
        ([3], "prompt #0 must be a str"),
    ],
)
def test_bad_prompts(tiny_engine, prompts, match):
    with pytest.raises((ValueError, TypeError), match=match):
        tiny_engine.generate(prompts)


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"gamma": float("nan")}, "gamma"),
        ({"eta": -1.0}, "eta"),
        ({"top_k": 0}, "top_k"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"gama": 1.0}, "gama"),
    ],
)
def test_bad_overrides(tiny_engine, overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny_engine.generate(["Is"], **overrides)


def test_bad_negatives_shape(tiny_engine):
    with pytest.raises(ValueError, match="one list of strings per prompt"):
        tiny_engine.generate(["Is", "Do"], negatives=["a", "b"])


def test_max_new_tokens_beyond_context_window(tiny_engine):
    with pytest.raises(ValueError, match="max_new_tokens"):
        tiny_engine.generate(["Is"], max_new_tokens=tiny_engine.context_window + 1)


def test_no_pad_token_still_batches(tiny_tok):
    tok = tiny_tokenizer(pad=False)
    assert tok.pad_token_id is None
    engine = SteerEngine(
        tiny_model("gpt2", tok, seed=1),
        tiny_model("gpt2", tok, seed=2),
        tok,
        config=SteerConfig(max_new_tokens=4),
    )
    rs = engine.generate(PROMPTS[:3], negatives=[["x"], ["y z"], ["w"]], seed=1)
    assert [len(r.token_ids) for r in rs] == [4, 4, 4] or any(r.finish_reason == "stop" for r in rs)
    engine.close()


def test_mismatched_vocabularies_refused(tmp_path, tiny_tok):
    other_tok = tiny_tokenizer(vocab_size=280)
    a, b = tmp_path / "a", tmp_path / "b"
    tiny_model("llama", tiny_tok, seed=1).save_pretrained(a)
    tiny_tok.save_pretrained(a)
    tiny_model("llama", other_tok, seed=1).save_pretrained(b)
    other_tok.save_pretrained(b)
    with pytest.raises(ValueError, match="tokenizers differ"):
        SteerEngine(str(a), str(b))


def test_loads_safetensors_folder_and_refuses_pickles(tmp_path, tiny_tok):
    folder = tmp_path / "m"
    tiny_model("gpt2", tiny_tok, seed=1).save_pretrained(folder)
    tiny_tok.save_pretrained(folder)
    engine = SteerEngine(str(folder), config=SteerConfig(max_new_tokens=3))
    assert len(engine.generate(["Is"], negatives=[["x"]])[0].token_ids) == 3
    engine.close()
    pickled = tmp_path / "p"
    pickled.mkdir()
    (pickled / "config.json").write_text((folder / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="safetensors or GGUF only"):
        SteerEngine(str(pickled))


def test_logits_processor_in_generate_matches_engine(tiny_tok):
    expert, base = tiny_model("llama", tiny_tok, seed=1), tiny_model("llama", tiny_tok, seed=2)
    engine = SteerEngine(
        expert, base, tiny_tok, config=SteerConfig(max_new_tokens=6, temperature=0, top_k=None)
    )
    negs = ["The quick brown fox jumps over the lazy dog."]
    want = engine.generate([PROMPTS[0]], negatives=[negs], seed=1)[0]
    ids = torch.tensor([tiny_tok(PROMPTS[0]).input_ids])
    proc = engine.logits_processor(negatives=negs, temperature=0)
    out = expert.generate(
        ids, logits_processor=[proc], do_sample=False, max_new_tokens=6, pad_token_id=tiny_tok.pad_token_id
    )
    assert out[0, ids.shape[1] :].tolist() == want.token_ids[: out.shape[1] - ids.shape[1]]
    engine.close()


def test_per_prompt_seeds_and_per_call_pool(tiny_engine):
    a = tiny_engine.generate(PROMPTS[:2], negatives=[["x"]] * 2, seeds=[40, 7])
    b = tiny_engine.generate([PROMPTS[1]], negatives=[["x"]], seed=7)
    assert a[1].token_ids == b[0].token_ids and a[1].seed == 7 and a[0].seed == 40
    with pytest.raises(ValueError, match="`seeds`"):
        tiny_engine.generate(PROMPTS[:2], seeds=[1])
    own = NegativePool(["alpha beta", "gamma delta", "epsilon zeta"])
    before = len(tiny_engine.pool)
    r = tiny_engine.generate([PROMPTS[0]], pool=own, num_negatives=2, seed=1)[0]
    assert set(r.negatives_used) <= {"alpha beta", "gamma delta", "epsilon zeta"}
    assert len(own) == 3 + bool(r.text.strip()) and len(tiny_engine.pool) == before


def test_models_with_the_older_past_key_values_keyword(tiny_tok):
    from transformers import LlamaForCausalLM

    from steer_plugins.core.rows import forward_keywords

    class OldStyle(LlamaForCausalLM):
        def forward(
            self,
            input_ids=None,
            attention_mask=None,
            position_ids=None,
            past_key_values=None,
            use_cache=None,
            **kwargs,
        ):
            out = super().forward(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=past_key_values,
                use_cache=use_cache,
            )
            out.past_key_values = out.cache
            return out

    new = tiny_model("llama", tiny_tok, seed=1)
    old = OldStyle(new.config).eval()
    old.load_state_dict(new.state_dict())
    assert forward_keywords(old) == ("past_key_values", False)
    runs = []
    for model in (new, old):
        engine = SteerEngine(model, tokenizer=tiny_tok, config=SteerConfig(max_new_tokens=5))
        runs.append(engine.generate(PROMPTS[:2], negatives=[["x y"], ["z"]], seed=3))
        engine.close()
    assert [r.token_ids for r in runs[0]] == [r.token_ids for r in runs[1]]


def test_chat_template_prefill_and_stable_name(tiny_tok):
    engine = SteerEngine(tiny_model("llama", tiny_tok, seed=1), tokenizer=tiny_tok, name="tiny-llama")
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Is the"}]
    text = engine.apply_chat_template(msgs, continue_final_message=True)
    assert text.endswith("Is the")
    assert engine.apply_chat_template(msgs[:1]).endswith("<s>assistant\n")
    with pytest.raises(ValueError, match="roles"):
        engine.apply_chat_template([{"role": "tool", "content": "x"}])
    assert engine.name == "tiny-llama"
    assert engine.fingerprint() == engine.fingerprint() != engine.fingerprint(gamma=0.9)
    engine.close()


def test_share_negatives_draws_once_per_call_and_prefills_that_context_once(tiny_tok, monkeypatch):
    """`share_negatives`: every prompt of a call gets the one draw (made with the call's first seed),
    exactly as if it had been passed as every prompt's `negatives`, and the negative context's prefill
    runs once for all of them; the next call draws again. Left off, the fingerprint is what it was
    before the field existed."""
    from steer_plugins.core.rows import RowBatch

    engine = SteerEngine(
        tiny_model("llama", tiny_tok, seed=1),
        tiny_model("llama", tiny_tok, seed=2),
        tiny_tok,
        config=SteerConfig(max_new_tokens=5, num_negatives=3),
        pool=list(TINY_CORPUS),
    )
    prompts = [PROMPTS[1]] * 4
    prefilled: list[int] = []
    real = RowBatch._prefill_segment

    def spy(self, contexts, rows, *args, **kwargs):
        prefilled.append(len({tuple(contexts[i]) for i in rows}))
        return real(self, contexts, rows, *args, **kwargs)

    monkeypatch.setattr(RowBatch, "_prefill_segment", spy)
    shared = engine.generate(prompts, seeds=[3, 4, 5, 6], share_negatives=True, return_scores=True)
    draws = {tuple(r.negatives_used) for r in shared}
    assert len(draws) == 1 and len(next(iter(draws))) == 3
    assert sum(prefilled) == 3  # the prompt (expert model, base model) and the one negative context
    prefilled.clear()
    apart = engine.generate(prompts, seeds=[3, 4, 5, 6], eta=0.6)
    assert len({tuple(r.negatives_used) for r in apart}) > 1 and sum(prefilled) > 3
    explicit = engine.generate(
        prompts, seeds=[3, 4, 5, 6], negatives=[list(shared[0].negatives_used)] * 4, return_scores=True
    )
    for a, b in zip(shared, explicit, strict=True):
        assert a.token_ids == b.token_ids
        torch.testing.assert_close(a.scores, b.scores)
    engine.close()

    cfg = SteerConfig(negatives_from="pool", known_words=False)
    before = hash_without(cfg, "share_negatives", "negatives_from", "known_words")
    assert cfg.fingerprint() == before != cfg.merged(share_negatives=True).fingerprint()
