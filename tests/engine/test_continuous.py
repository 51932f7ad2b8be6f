"""Continuous batching: prompts that arrive while a batch decodes join it at the next step boundary.

A joining prompt is prefilled in its own RowBatch and merged into the running one (`RowBatch.merge`),
so its tokens and scores must equal a solo run's, and the running prompts must not notice.
"""

from __future__ import annotations

import random
import threading

import pytest
import torch

from steer_plugins import EngineStats, SteerEngine
from steer_plugins.core.rows import RowBatch, UnmergeableCache
from steer_plugins.testing import tiny_lora_expert, tiny_model

CONTEXTS = [
    "Does dark matter",
    "Write a question about astronomy: Could the quick brown fox jump over the lazy dog?",
    "Is",
    "The quick brown fox jumps over the lazy dog. Is the Hubble tension a sign of new physics?",
    "What is the capital",
]
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
NEGS = [["The quick brown fox jumps over the lazy dog.", "Is the Hubble tension real?"], ["x y z"], ["neg"]]


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def _pair_engine(tok, arch: str = "llama", **kw) -> SteerEngine:
    """An engine over a tiny expert/base pair of `arch` (seeds 1 and 2)."""
    return SteerEngine(tiny_model(arch, tok, seed=1), tiny_model(arch, tok, seed=2), tok, **kw)


def _record_widths(monkeypatch) -> list[int]:
    """The number of prompts in every decode step from now on (a live list)."""
    import steer_plugins.core.decode as decode_mod

    widths: list[int] = []
    real = decode_mod._gather_plan

    def recording(groups, active, device):
        widths.append(len(active))
        return real(groups, active, device)

    monkeypatch.setattr(decode_mod, "_gather_plan", recording)
    return widths


# ---------------------------------------------------------------- RowBatch.merge
def merge_against_reference(model, tok, names_a=None, names_b=None, *, a_idx, b_idx, min_rows):
    """Batch A (prefilled, then one step) merged with a freshly prefilled batch B must equal one batch
    prefilled with every row's whole context, for the next two steps and after dropping rows."""
    ctx = [tok(c).input_ids for c in CONTEXTS]
    kw = {"pad_id": 0, "min_rows": min_rows}
    a = RowBatch(model, adapter_names=names_a, **kw)
    b = RowBatch(model, adapter_names=names_b, **kw)
    tok_a = a.prefill([ctx[i] for i in a_idx]).argmax(-1)
    lp_a = a.step(tok_a)
    lp_b = b.prefill([ctx[i] for i in b_idx])
    full = [ctx[i] + [int(t)] for i, t in zip(a_idx, tok_a, strict=True)] + [ctx[i] for i in b_idx]
    names = None if names_a is None else names_a + names_b
    ref = RowBatch(model, adapter_names=names, **kw)
    lp_ref = ref.prefill(full)
    close(torch.cat([lp_a, lp_b]), lp_ref)

    a.merge(b)
    n = len(a_idx) + len(b_idx)
    assert len(a) == n
    assert a.attention_mask.shape[0] == (min_rows if 1 < n < min_rows else n)
    if names is not None:
        assert a.adapter_names[:n] == names
    tokens = lp_ref.argmax(-1)
    for _ in range(2):
        got, want = a.step(tokens), ref.step(tokens)
        close(got, want)
        tokens = want.argmax(-1)
    keep = torch.tensor([0, n - 1])  # one row of each side
    a.select(keep)
    ref.select(keep)
    close(a.step(tokens[keep]), ref.step(tokens[keep]))


# b_wider: the joining batch holds the longest context (the running one gets left-padded);
# min_rows=4: the running side carries padding rows (2 real rows run as 4) that merge must drop.
@pytest.mark.parametrize("b_wider, min_rows", [(False, 1), (True, 4), (False, 4)])
def test_merge_equals_one_batch_prefilled_with_all_contexts(tiny_pair_models, min_rows, b_wider):
    expert, _, tok = tiny_pair_models
    a_idx, b_idx = ([0, 2], [3]) if b_wider else ([1, 3], [2])
    merge_against_reference(expert, tok, a_idx=a_idx, b_idx=b_idx, min_rows=min_rows)


@pytest.mark.parametrize("min_rows", [1, 4])
def test_merge_of_peft_mixed_adapter_batches(tiny_tok, min_rows):
    expert = tiny_lora_expert(tiny_model("llama", tiny_tok, seed=2), seed=5)
    merge_against_reference(
        expert,
        tiny_tok,
        ["default", "__base__"],
        ["default", "__base__", "default"],
        a_idx=[0, 0],
        b_idx=[3, 3, 4],
        min_rows=min_rows,
    )


def test_merge_refuses_unfamiliar_caches_and_other_models(tiny_tok, monkeypatch):
    import steer_plugins.core.rows as rows_mod

    m1, m2 = tiny_model("llama", tiny_tok, seed=1), tiny_model("llama", tiny_tok, seed=2)
    a, b, c = RowBatch(m1, pad_id=0), RowBatch(m1, pad_id=0), RowBatch(m2, pad_id=0)
    for rb in (a, b, c):
        rb.prefill([tiny_tok("Is the").input_ids])
    with pytest.raises(ValueError, match="different models"):
        a.merge(c)
    mask = a.attention_mask
    monkeypatch.setattr(rows_mod, "_layer_tensors", lambda cache: None)
    with pytest.raises(UnmergeableCache):
        a.merge(b)
    assert len(a) == 1 and a.attention_mask is mask  # untouched


# ---------------------------------------------------------------- admission into a running decode
def run_with_late_joiner(engine: SteerEngine, long_kw: dict, short_kw: dict):
    """Start a long stream; once its first event is out, submit a short request from this thread."""
    before = engine.stats
    it = engine.stream([PROMPTS[0]], negatives=[NEGS[0]], seed=1, **long_kw)
    first = next(it)  # decoding has started
    short = engine.generate(PROMPTS[1:4], negatives=NEGS, return_scores=True, seed=2, **short_kw)
    events = [first, *it]
    long_result = events[-1].result
    assert long_result is not None and "".join(e.delta for e in events) == long_result.text
    return long_result, short, before, engine.stats


@pytest.mark.parametrize("engine_kind", ["tiny_engine", "tiny_lora_engine"])
@pytest.mark.parametrize(
    "long_kw, short_kw",
    [
        ({}, {"max_new_tokens": 8}),
        # no base rows in the running batch: the joiners' base (or mixed) rows form a new group
        ({"gamma": 0.0}, {"max_new_tokens": 8, "negative_form": "per_example"}),
        # joiners without base/negative rows merge into the running expert rows only
        ({}, {"max_new_tokens": 8, "gamma": 0.0, "eta": 0.0}),
    ],
)
def test_prompt_admitted_mid_decode_equals_solo_run(request, engine_kind, long_kw, short_kw):
    engine: SteerEngine = request.getfixturevalue(engine_kind)
    long_kw = {"max_new_tokens": 64, "ignore_eos": True, **long_kw}
    long_result, short, before, after = run_with_late_joiner(engine, long_kw, short_kw)
    assert after.batches_started - before.batches_started == 1, "the late request must join, not wait"
    assert after.prompts_admitted - before.prompts_admitted == 3
    assert after.prompts_decoded - before.prompts_decoded == 4
    assert len(long_result.token_ids) == 64

    solo_long = engine.generate([PROMPTS[0]], negatives=[NEGS[0]], seed=1, **long_kw)[0]
    assert solo_long.token_ids == long_result.token_ids and solo_long.text == long_result.text
    for i, r in enumerate(short):
        solo = engine.generate(
            [PROMPTS[1 + i]], negatives=[NEGS[i]], return_scores=True, seed=2 + i, **short_kw
        )[0]
        assert r.token_ids == solo.token_ids and r.text == solo.text
        close(r.scores, solo.scores)


def test_unmergeable_cache_runs_joiners_as_their_own_group(tiny_engine, monkeypatch):
    def refuse(self, other):
        raise UnmergeableCache("test")

    monkeypatch.setattr(RowBatch, "merge", refuse)
    long_kw = {"max_new_tokens": 64, "ignore_eos": True}
    long_result, short, before, after = run_with_late_joiner(tiny_engine, long_kw, {"max_new_tokens": 6})
    assert after.prompts_admitted - before.prompts_admitted == 3
    solo_long = tiny_engine.generate([PROMPTS[0]], negatives=[NEGS[0]], seed=1, **long_kw)[0]
    assert solo_long.token_ids == long_result.token_ids
    for i, r in enumerate(short):
        solo = tiny_engine.generate(
            [PROMPTS[1 + i]], negatives=[NEGS[i]], return_scores=True, seed=2 + i, max_new_tokens=6
        )[0]
        assert r.token_ids == solo.token_ids
        close(r.scores, solo.scores)


def test_max_batch_size_caps_active_prompts(tiny_tok, monkeypatch):
    engine = _pair_engine(tiny_tok, max_batch_size=2)
    widths = _record_widths(monkeypatch)
    negs = [["neg"]] * 5
    rs = engine.generate(PROMPTS[:5], negatives=negs, seed=0, max_new_tokens=3)
    again = engine.generate(PROMPTS[:5], negatives=negs, seed=0, max_new_tokens=3)
    engine.close()
    assert max(widths) == 2  # later prompts of the request joined as earlier ones finished
    assert [r.token_ids for r in rs] == [r.token_ids for r in again]
    assert engine.stats.prompts_decoded == 10 and engine.stats.prompts_admitted > 0


def test_skewed_threads_equal_serial_and_share_batches(tiny_engine):
    serial = [tiny_engine.generate([p], negatives=[["neg"]], seed=100 + i)[0] for i, p in enumerate(PROMPTS)]
    rng = random.Random(0)
    delays = [rng.uniform(0, 0.05) for _ in PROMPTS]
    before = tiny_engine.stats
    out: dict[int, object] = {}
    barrier = threading.Barrier(len(PROMPTS))

    def call(i):
        barrier.wait()
        threading.Event().wait(delays[i])
        out[i] = tiny_engine.generate([PROMPTS[i]], negatives=[["neg"]], seed=100 + i)[0]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = tiny_engine.stats
    assert isinstance(after, EngineStats)
    assert [out[i].token_ids for i in range(8)] == [r.token_ids for r in serial]
    assert [out[i].text for i in range(8)] == [r.text for r in serial]
    assert after.prompts_decoded - before.prompts_decoded == 8
    batches = after.batches_started - before.batches_started
    assert batches < 8, f"skewed calls were not batched together: {after} vs {before}"


# ---------------------------------------------------------------- the cache budget (max_cache_mb)
def _cache_bytes_in_use(engine: SteerEngine) -> int:
    from steer_plugins.core.rows import _layer_tensors

    return sum(
        k.nbytes + v.nbytes
        for g in engine._scheduler.decoder._groups
        for k, v in _layer_tensors(g.batch.cache) or []
    )


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_cache_estimate_matches_the_allocated_cache(arch, tiny_tok):
    engine = _pair_engine(tiny_tok, arch)
    from steer_plugins.core.jobs import prepare_job

    job = prepare_job(
        engine._scheduler.tokens, PROMPTS[1], engine.config.merged(max_new_tokens=8), seed=0,
        pool=engine.pool, negatives=NEGS[0],
    )  # fmt: skip
    estimate = engine._scheduler.decoder.cache_bytes(job)
    engine._scheduler.decoder.insert([job])
    real = _cache_bytes_in_use(engine)
    assert 0.5 * estimate <= real <= 1.25 * estimate, (real, estimate)


def test_cache_budget_holds_prompts_back_and_keeps_outputs(tiny_tok, monkeypatch):
    def engine(**kw):
        return _pair_engine(tiny_tok, **kw)

    negs = [NEGS[i % len(NEGS)] for i in range(6)]
    free = engine(max_cache_mb=None)
    ref = free.generate(PROMPTS[:6], negatives=negs, seed=3, max_new_tokens=6, return_scores=True)
    free.close()
    assert free.stats.prompts_waited == 0

    one = free._scheduler.decoder.cache_bytes  # the estimate of a single prompt, to size the budget
    from steer_plugins.core.jobs import prepare_job

    costs = [
        one(prepare_job(free._scheduler.tokens, p, free.config.merged(max_new_tokens=6), seed=0, pool=free.pool,
                        negatives=n))
        for p, n in zip(PROMPTS[:6], negs, strict=True)
    ]  # fmt: skip
    budget_mb = 2.2 * max(costs) / 2**20
    bounded = engine(max_cache_mb=budget_mb)
    widths = _record_widths(monkeypatch)
    out = bounded.generate(PROMPTS[:6], negatives=negs, seed=3, max_new_tokens=6, return_scores=True)
    bounded.close()
    stats = bounded.stats
    assert stats.prompts_waited > 0 and stats.prompts_admitted > 0
    assert 0 < stats.peak_cache_mb <= budget_mb
    assert 2 <= max(widths) < 6  # more than one prompt at a time, never all six
    for r, s in zip(out, ref, strict=True):  # a prompt's output does not depend on its batch
        assert r.token_ids == s.token_ids and r.negatives_used == s.negatives_used
        close(r.scores, s.scores)


def test_cache_budget_below_one_prompt_still_decodes_one_at_a_time(tiny_tok, monkeypatch):
    engine = _pair_engine(tiny_tok, max_cache_mb=1e-6)
    widths = _record_widths(monkeypatch)
    out = engine.generate(PROMPTS[:3], negatives=[["neg"]] * 3, seed=0, max_new_tokens=3, ignore_eos=True)
    engine.close()
    assert [len(r.token_ids) for r in out] == [3, 3, 3]
    assert max(widths) == 1 and engine.stats.prompts_decoded == 3 and engine.stats.prompts_waited >= 2


def test_the_default_cache_budget_is_a_share_of_the_weights_size_with_a_floor(tiny_tok):
    from steer_plugins.core.engine import AUTO_CACHE_FLOOR_MB, AUTO_CACHE_SHARE, _weights_mb

    expert, base = tiny_model("llama", tiny_tok, seed=1), tiny_model("llama", tiny_tok, seed=2)
    weights = sum(
        p.numel() * p.element_size() for m in (expert, base) for p in [*m.parameters(), *m.buffers()]
    )
    engine = SteerEngine(expert, base, tiny_tok)
    assert _weights_mb(engine.models) == pytest.approx(weights / 2**20)
    assert (
        engine.cache_budget_mb
        == max(AUTO_CACHE_SHARE * weights / 2**20, AUTO_CACHE_FLOOR_MB)
        == AUTO_CACHE_FLOOR_MB
    )
    lora = tiny_lora_expert(tiny_model("llama", tiny_tok, seed=2), seed=5)  # base = the same weights
    shared = sum(p.numel() * p.element_size() for p in [*lora.parameters(), *lora.buffers()])
    assert _weights_mb(SteerEngine(lora, tokenizer=tiny_tok).models) == pytest.approx(shared / 2**20)
    assert SteerEngine(expert, base, tiny_tok, max_cache_mb=None).cache_budget_mb is None
    assert SteerEngine(expert, base, tiny_tok, max_cache_mb=3).cache_budget_mb == 3


@pytest.mark.parametrize("bad", [0, -5.0, "big", True])
def test_cache_budget_is_checked_before_any_model_loads(bad):
    with pytest.raises(ValueError, match="max_cache_mb"):
        SteerEngine("no/such-model-anywhere", max_cache_mb=bad)
