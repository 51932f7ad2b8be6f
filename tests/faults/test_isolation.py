"""Fault injection: one request's bad input, abandonment, interrupt or cancellation never reaches
the requests sharing its batch, and a synchronous call returns once its own prompts are done."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from steer_plugins import SteerEngine

P = "Is the universe"
INNOCENT = {"seed": 1, "max_new_tokens": 120, "ignore_eos": True, "negatives": [["Do stars die?"]]}


def solo(engine: SteerEngine, **kw):
    return engine.generate([P], **kw)[0]


def run_beside_innocent(engine: SteerEngine, bad_call):
    """Start the innocent request on a thread, run `bad_call` while it decodes; return the innocent's
    result and what the bad call returned or raised."""
    out: dict[str, object] = {}
    started = threading.Event()

    def innocent():
        for ev in engine.stream([P], **INNOCENT):
            started.set()
            if ev.result is not None:
                out["innocent"] = ev.result

    t = threading.Thread(target=innocent)
    t.start()
    assert started.wait(30)
    try:
        out["bad"] = bad_call()
    except Exception as err:  # the bad call may fail: only its own
        out["bad"] = err
    t.join(60)
    assert not t.is_alive(), "the innocent request never finished"
    return out["innocent"], out["bad"]


BAD_CALLS = {
    "empty-string negative": lambda e: e.generate([P], negatives=[[""]]),
    "blank per_example negatives": lambda e: e.generate(
        [P], negatives=[["", "  "]], negative_form="per_example"
    ),
    "seed 2**64": lambda e: e.generate([P], seed=2**64),
    "seed overflow with 2 prompts": lambda e: e.generate([P, P], seed=2**63 - 1),
    "tiny temperature, no top-k": lambda e: e.generate([P], temperature=1e-40, top_k=None),
    "top_p below float32": lambda e: e.generate([P], top_p=1e-46),
    "gamma 1e39": lambda e: e.generate([P], gamma=1e39),
    "eta 1e39": lambda e: e.generate([P], eta=1e39),
    "gamma as a string": lambda e: e.generate([P], gamma="0.5"),
    "seed as a bool": lambda e: e.generate([P], seed=True),
    "K larger than the pool": lambda e: e.generate([P], num_negatives=10_000),
    "lone surrogate negative": lambda e: e.generate([P], negatives=[["x \ud800 y"]]),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_bad_request_never_harms_a_concurrent_one(tiny_engine, name):
    expected = solo(tiny_engine, **INNOCENT)
    innocent, bad = run_beside_innocent(tiny_engine, lambda: BAD_CALLS[name](tiny_engine))
    assert innocent.token_ids == expected.token_ids and innocent.text == expected.text
    if isinstance(bad, Exception):
        assert isinstance(bad, (ValueError, TypeError)), f"{name}: {type(bad).__name__}: {bad}"
    else:
        assert bad[0].finish_reason in ("stop", "length")


def test_blank_negatives_are_dropped_and_reported(tiny_engine):
    r = tiny_engine.generate([P], negatives=[["", "Do stars die?"]], seed=3)[0]
    assert r.negatives_used == ["Do stars die?"] and r.negatives_dropped == [""]


def test_lone_surrogate_in_the_pool_is_repaired(tiny_engine):
    tiny_engine.pool.add(["x \ud800 y"], real=True)
    assert "x \ufffd y" in tiny_engine.pool.texts
    for seed in range(10):  # every draw may pick it
        assert tiny_engine.generate([P], seed=seed, num_negatives=3, max_new_tokens=2)[0].token_ids


def test_abandoned_astream_fails_only_itself(tiny_engine):
    async def abandon():
        async for _ in tiny_engine.astream([P], seed=3, max_new_tokens=200, ignore_eos=True):
            break  # the loop closes while the worker still has events for it

    expected = solo(tiny_engine, **INNOCENT)
    innocent, bad = run_beside_innocent(tiny_engine, lambda: asyncio.run(abandon()))
    assert bad is None
    assert innocent.token_ids == expected.token_ids


def test_cancelled_agenerate_stops_decoding(tiny_engine):
    before = tiny_engine.stats

    async def impatient():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(
                tiny_engine.agenerate([P], seed=2, max_new_tokens=480, ignore_eos=True), 0.05
            )

    asyncio.run(impatient())
    deadline = time.monotonic() + 30
    while tiny_engine.stats.prompts_decoded == before.prompts_decoded and time.monotonic() < deadline:
        time.sleep(0.01)
    after = tiny_engine.stats
    assert after.prompts_decoded == before.prompts_decoded + 1
    assert after.steps - before.steps < 480, "the cancelled request decoded to the end"


def test_sync_caller_returns_when_its_own_prompts_are_done(tiny_engine):
    """The short call runs the loop on its own thread; a long call joins it; the short call returns
    as soon as its prompt is done (the loop moves to a worker), and the long one still finishes."""
    long_kw = {"seed": 5, "max_new_tokens": 400, "ignore_eos": True, "negatives": [["Do stars die?"]]}
    expected_long = solo(tiny_engine, **long_kw)
    before = tiny_engine.stats
    times: dict[str, float] = {}
    results: dict[str, object] = {}

    def joiner():
        while tiny_engine.stats.batches_started == before.batches_started:
            time.sleep(0.0005)
        results["long"] = tiny_engine.generate([P], **long_kw)[0]
        times["long"] = time.monotonic()

    t = threading.Thread(target=joiner)
    t.start()
    short = tiny_engine.generate([P], seed=6, max_new_tokens=30, ignore_eos=True)[0]
    times["short"] = time.monotonic()
    t.join(60)
    assert tiny_engine.stats.prompts_admitted - before.prompts_admitted == 1, "the long call did not join"
    assert times["short"] < times["long"]
    assert len(short.token_ids) == 30
    assert results["long"].token_ids == expected_long.token_ids


def test_interrupt_on_the_loop_thread_requeues_the_others(tiny_engine, monkeypatch):
    """A KeyboardInterrupt on the thread running the loop ends that caller's call; the requests
    that had joined its batch are re-run with their seeds and return the same results."""
    import steer_plugins.core.engine as engine_mod

    others_kw = [
        {"seed": 10 + i, "max_new_tokens": 60, "ignore_eos": True, "negatives": [["a"]]} for i in range(3)
    ]
    expected = [solo(tiny_engine, **kw) for kw in others_kw]
    before = tiny_engine.stats
    calls = {"n": 0}

    def interrupting(self, events):
        calls["n"] += 1
        if tiny_engine.stats.prompts_admitted - before.prompts_admitted >= 3 and calls["n"] > 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine_mod._ProgressBar, "update", interrupting)
    results: dict[int, object] = {}

    def other(i):
        while tiny_engine.stats.batches_started == before.batches_started:
            time.sleep(0.0005)
        results[i] = tiny_engine.generate([P], **others_kw[i])[0]

    threads = [threading.Thread(target=other, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    with pytest.raises(KeyboardInterrupt):
        tiny_engine.generate([P], seed=9, max_new_tokens=400, ignore_eos=True, progress=True)
    for t in threads:
        t.join(60)
        assert not t.is_alive(), "a request that joined the interrupted batch was left waiting"
    assert [results[i].token_ids for i in range(3)] == [e.token_ids for e in expected]


def test_lone_surrogate_in_a_call_is_refused_naming_it(tiny_engine):
    with pytest.raises(ValueError, match="negative #0 of prompt #0 contains an unpaired surrogate"):
        tiny_engine.generate([P], negatives=[["x \ud800 y"]])
    with pytest.raises(ValueError, match="prompt #0 contains an unpaired surrogate"):
        tiny_engine.generate(["x \ud800 y"])
