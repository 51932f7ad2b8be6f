"""RowBatch with row attention (RowKVCache + "steer_rows") against transformers' own attention and a
no-cache reference: prefill, steps, buffer growth, rows leaving, merges, shared prefill, bf16 prefill."""

from __future__ import annotations

import threading
import warnings

import pytest
import torch

from steer_plugins import SteerConfig, SteerEngine
from steer_plugins.core import attention
from steer_plugins.core.kv_cache import RowKVCache
from steer_plugins.core.rows import MAX_ROOM, RowBatch
from steer_plugins.testing import tiny_lora_expert, tiny_model

TEXTS = [
    "Is",
    "Does dark matter shape the rotation curves of dwarf galaxies? " * 3,
    "Could the quick brown fox",
    "The quick brown fox jumps over the lazy dog. Is the Hubble tension real?",
    "What is the capital",
]


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


@torch.inference_mode()
def reference(model, ids: list[int], adapter: bool = True) -> torch.Tensor:
    """Last-position log-probs of one row, no cache, no padding."""
    if not adapter:
        with model.disable_adapter():
            return reference(model, ids)
    return model(input_ids=torch.tensor([ids], device=model.device)).logits[0, -1].float().log_softmax(-1)


def test_device_option_is_wired(device):
    assert isinstance(device, torch.device)


@pytest.mark.parametrize("peft_mode", ["mixed", "two_pass"])
def test_engine_on_device_matches_no_cache_reference(tiny_tok, device, peft_mode):
    """STEER scores on `device` (LoRA expert, base = adapter off, one concatenated negative context)
    against every branch recomputed from scratch at every step."""
    expert = tiny_lora_expert(tiny_model("llama", tiny_tok, seed=2), seed=5).to(device)
    # the paper's rule (no guards): this checks the rows, caches and attention, not the guards
    cfg = SteerConfig(max_new_tokens=6, gamma=0.5, eta=0.8, alpha=None, whole_words=False, known_words=False)
    engine = SteerEngine(expert, tokenizer=tiny_tok, config=cfg, peft_mode=peft_mode)
    prompts, negs = [TEXTS[2], TEXTS[4]], [[TEXTS[3], "x y z"], ["Is it?"]]
    results = engine.generate(prompts, negatives=negs, return_scores=True, seed=4)
    engine.close()
    w = cfg.branch_weights()
    for prompt, neg, r in zip(prompts, negs, results, strict=True):
        p_ids, n_ids = tiny_tok(prompt).input_ids, tiny_tok(" ".join(neg)).input_ids
        for t in range(len(r.token_ids)):
            gen = r.token_ids[:t]
            s = w.expert * reference(expert, p_ids + gen) + w.base * reference(
                expert, p_ids + gen, adapter=False
            )
            s = s + w.negative * reference(expert, n_ids + gen)
            close(r.scores[t], s.log_softmax(-1).cpu(), tol=1e-4)


@pytest.mark.parametrize("min_rows", [1, 4])
def test_rows_match_dynamic_path_and_reference(tiny_pair_models, min_rows, device):
    expert, _, tok = tiny_pair_models
    expert = expert.to(device)
    ctx = [tok(t).input_ids for t in TEXTS[:3]]
    rows = RowBatch(expert, pad_id=0, min_rows=min_rows)
    dyn = RowBatch(expert, pad_id=0, min_rows=min_rows, row_attention=False)
    assert rows.rows_mode and not dyn.rows_mode
    lp, lp_dyn = rows.prefill(ctx), dyn.prefill(ctx)
    close(lp, lp_dyn)
    assert rows.attention_mask.shape == dyn.attention_mask.shape
    assert torch.equal(rows.attention_mask, dyn.attention_mask)
    for _ in range(3):
        tokens = lp.argmax(-1)
        ctx = [c + [int(t)] for c, t in zip(ctx, tokens, strict=True)]
        lp, lp_dyn = rows.step(tokens), dyn.step(tokens)
        close(lp, lp_dyn)
        for i, c in enumerate(ctx):
            close(lp[i], reference(expert, c), tol=1e-4)
    logits = rows.step(lp.argmax(-1), logprobs=False)
    close(logits.log_softmax(-1), dyn.step(lp.argmax(-1)))


def test_buffers_grow_and_rows_leave_without_changing_results(tiny_tok, device):
    model = tiny_model("llama", tiny_tok, seed=3).to(device)
    ctx = [tiny_tok(t).input_ids for t in TEXTS]
    rows = RowBatch(model, pad_id=0)
    lp = rows.prefill(ctx)
    rows.cache.reserve = 2  # grow every other step
    assert len(rows.cache.segments) > 1, "short and long contexts sit in separate segments"
    alive = list(range(len(ctx)))
    for step in range(7):
        tokens = lp.argmax(-1)
        for i, t in zip(alive, tokens.tolist(), strict=True):
            ctx[i] = ctx[i] + [t]
        lp = rows.step(tokens)
        for k, i in enumerate(alive):
            close(lp[k], reference(model, ctx[i]), tol=1e-4)
        if step in (1, 4):  # drop the first and a middle row: the last rows move into the holes
            keep = [k for k in range(len(alive)) if k not in (0, len(alive) // 2)]
            rows.select(torch.tensor(keep))
            alive = [alive[k] for k in keep]
            lp = lp[torch.tensor(keep, device=lp.device)]
    assert len(rows) == len(alive) == 1


def test_merge_combines_segments_and_keeps_rows_exact(tiny_tok, device):
    model = tiny_model("gpt2", tiny_tok, seed=4).to(device)
    texts = [TEXTS[1], TEXTS[0], TEXTS[1][:-60] + " Yes", "Is it"]  # widths 102, 2 | 72, 4
    ctx = [tiny_tok(t).input_ids for t in texts]
    a, b = RowBatch(model, pad_id=0), RowBatch(model, pad_id=0)
    lp_a = a.prefill(ctx[:2])
    tokens = lp_a.argmax(-1)
    ctx[:2] = [c + [int(t)] for c, t in zip(ctx[:2], tokens, strict=True)]
    lp_a = a.step(tokens)  # the running side has decoded a step: its segments end one column later
    lp_b = b.prefill(ctx[2:])
    assert len(a.cache.segments) == len(b.cache.segments) == 2
    a.merge(b)
    assert len(a.cache.segments) == 2, "segments of similar width are combined (103 with 72, 3 with 4)"
    assert len(a) == len(ctx) and b.cache is None
    lp = torch.cat([lp_a, lp_b])
    for _ in range(2):
        tokens = lp.argmax(-1)
        ctx = [c + [int(t)] for c, t in zip(ctx, tokens, strict=True)]
        lp = a.step(tokens)
        for i, c in enumerate(ctx):
            close(lp[i], reference(model, c), tol=1e-4)


def test_identical_contexts_are_prefilled_once(tiny_tok, device, monkeypatch):
    expert = tiny_lora_expert(tiny_model("llama", tiny_tok, seed=2), seed=5).to(device)
    p, n = tiny_tok(TEXTS[2]).input_ids, tiny_tok(TEXTS[3]).input_ids
    contexts = [p, p, n, p, p]
    names = ["default", "__base__", "default", "default", "__base__"]
    seen: list[int] = []
    forward = RowBatch._forward

    def counting(self, input_ids, *args, **kwargs):
        seen.append(input_ids.shape[0])
        return forward(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(RowBatch, "_forward", counting)
    rows = RowBatch(expert, pad_id=0, adapter_names=names)
    lp = rows.prefill(contexts)
    assert sum(seen) == 3, "one row per distinct (context, adapter)"
    for i, (c, name) in enumerate(zip(contexts, names, strict=True)):
        close(lp[i], reference(expert, c, adapter=name != "__base__"), tol=1e-4)
    tokens = lp.argmax(-1)
    lp = rows.step(tokens)
    for i, (c, name) in enumerate(zip(contexts, names, strict=True)):
        close(lp[i], reference(expert, c + [int(tokens[i])], adapter=name != "__base__"), tol=1e-4)


def test_bf16_prefill_is_opt_in_close_and_decodes_in_fp32(tiny_tok, device):
    model = tiny_model("llama", tiny_tok, seed=3).to(device)
    ctx = [tiny_tok(t).input_ids for t in TEXTS]
    exact, fast = RowBatch(model, pad_id=0), RowBatch(model, pad_id=0, prefill_dtype=torch.bfloat16)
    a, b = exact.prefill(ctx), fast.prefill(ctx)
    assert exact.prefill_dtype is None
    assert all(t.dtype == torch.float32 for t, _ in fast.cache.layer_tensors())
    assert (a - b).abs().max() < 0.25  # bf16 rounding, not an exact path
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.8
    tokens = a.argmax(-1)
    assert fast.step(tokens).dtype == torch.float32


def test_bf16_kv_of_reduced_rows_halves_their_cache_and_leaves_exact_rows_exact(tiny_tok, device):
    """`kv_dtype` stores only the reduced rows' segments in bf16; every other row stays bit-for-bit
    what the exact batch computes, through prefill, steps and buffer growth."""
    model = tiny_model("llama", tiny_tok, seed=3).to(device)
    ctx = [tiny_tok(t).input_ids for t in TEXTS]
    reduced = [len(c) > 20 for c in ctx]  # the long rows, as the negative contexts are
    exact = RowBatch(model, pad_id=0)
    low = RowBatch(model, pad_id=0, kv_dtype=torch.bfloat16, reduced_rows=reduced)
    a, b = exact.prefill(ctx), low.prefill(ctx)
    dtypes = {int(r): seg.keys[0].dtype for seg in low.cache.segments for r in seg.rows}
    assert all(dtypes[i] == (torch.bfloat16 if r else torch.float32) for i, r in enumerate(reduced))
    keep = torch.tensor([not r for r in reduced])
    close(a[keep], b[keep], tol=0.0)
    assert 0 < (a[~keep] - b[~keep]).abs().max() < 0.25  # bf16 rounding of the long rows' keys
    for _ in range(70):  # past the segments' spare columns: the buffers grow, keeping their dtype
        tokens = a.argmax(-1)
        a, b = exact.step(tokens), low.step(tokens)
        assert b.dtype == torch.float32
        close(a[keep], b[keep], tol=0.0)
    assert {seg.keys[0].dtype for seg in low.cache.segments} == {torch.float32, torch.bfloat16}
    # merged batches keep bf16 and fp32 segments apart
    more = RowBatch(model, pad_id=0, kv_dtype=torch.bfloat16, reduced_rows=reduced)
    more.prefill(ctx)
    low.merge(more)
    for seg in low.cache.segments:
        assert {seg.keys[layer].dtype for layer in range(len(seg.keys))} == {seg.dtype or torch.float32}
    assert low.step(torch.zeros(2 * len(ctx), dtype=torch.long)).isfinite().all()


def test_known_new_tokens_allocate_the_cache_once(tiny_tok):
    """With `new_tokens` the buffers get exactly that much room at prefill and are never copied to
    grow; the scores are those of a batch that grows as it goes."""
    model = tiny_model("llama", tiny_tok, seed=3)
    ctx = [tiny_tok(t).input_ids for t in TEXTS]
    growing, sized = RowBatch(model, pad_id=0), RowBatch(model, pad_id=0, new_tokens=40)
    a, b = growing.prefill(ctx), sized.prefill(ctx)
    buffers, grown = (
        [seg.keys[0] for seg in sized.cache.segments],
        [s.keys[0] for s in growing.cache.segments],
    )
    assert [t.shape[2] for t in buffers] == [seg.end + 40 for seg in sized.cache.segments]
    for _ in range(39):
        tokens = a.argmax(-1)
        a, b = growing.step(tokens), sized.step(tokens)
        close(a, b, tol=1e-5)
    assert all(seg.keys[0] is t for seg, t in zip(sized.cache.segments, buffers, strict=True))
    assert any(seg.keys[0] is not t for seg, t in zip(growing.cache.segments, grown, strict=True))
    # a large max_new_tokens reserves at most MAX_ROOM columns up front, then grows as usual
    big = RowBatch(model, pad_id=0, new_tokens=100_000)
    big.prefill(ctx)
    assert [seg.keys[0].shape[2] for seg in big.cache.segments] == [
        seg.end + MAX_ROOM for seg in big.cache.segments
    ]


@pytest.mark.parametrize("field", ["guidance_kv_dtype", "negative_prefill_dtype"])
def test_engine_reduced_dtypes_are_checked_first_and_change_the_fingerprint(field, tiny_tok):
    with pytest.raises(TypeError, match=f"{field}.*torch.bfloat16"):
        SteerEngine("/no/such/model", **{field: "bf16"})  # refused before any load
    model = tiny_lora_expert(tiny_model("llama", tiny_tok, seed=2), seed=5)
    exact = SteerEngine(model, tokenizer=tiny_tok, name="m")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # emulated bf16 on CPUs without it: slow, not wrong
        low = SteerEngine(model, tokenizer=tiny_tok, name="m", **{field: torch.bfloat16})
    assert getattr(low.models, field) == torch.bfloat16
    assert (
        len(
            {
                exact.fingerprint(),
                low.fingerprint(),
                SteerEngine(model, tokenizer=tiny_tok, name="m").fingerprint(),
            }
        )
        == 2
    )
    cfg = {"negatives": [[TEXTS[1], TEXTS[3]]] * 2, "max_new_tokens": 8, "seed": 3}
    a = exact.generate([TEXTS[2], TEXTS[4]], return_scores=True, **cfg)
    b = low.generate([TEXTS[2], TEXTS[4]], return_scores=True, **cfg)
    exact.close(), low.close()
    assert all(len(r.token_ids) > 0 for r in b)
    assert all(r.finish_reason in ("stop", "length") for r in b)
    for x, y in zip(a, b, strict=True):  # first step: same tokens kept, scores within bf16 rounding
        kept = x.scores[0].isfinite()
        assert torch.equal(kept, y.scores[0].isfinite())
        assert 0 < (x.scores[0][kept] - y.scores[0][kept]).abs().max() < 0.1


def test_other_threads_keep_their_attention_during_a_row_forward(tiny_tok):
    model = tiny_model("llama", tiny_tok, seed=3)
    ids = torch.tensor([tiny_tok(TEXTS[3]).input_ids])
    want = reference(model, ids[0].tolist())
    got: list[torch.Tensor] = []
    inside = threading.Event()
    release = threading.Event()

    def other_thread():
        inside.wait()
        assert model.config._attn_implementation == attention.NAME  # switched by the row forward
        got.append(reference(model, ids[0].tolist()))
        release.set()

    t = threading.Thread(target=other_thread)
    t.start()
    with attention.row_attention(model, RowKVCache()):
        inside.set()
        release.wait(timeout=30)
    t.join()
    assert model.config._attn_implementation == "sdpa"
    close(got[0], want)


def test_unsupported_models_use_the_dynamic_cache(tiny_tok, monkeypatch):
    model = tiny_model("llama", tiny_tok, seed=3)
    monkeypatch.setattr(model.config, "sliding_window", 4, raising=False)
    assert not attention.supports_row_attention(model)
    rows = RowBatch(model, pad_id=0)
    assert not rows.rows_mode
    rows.prefill([tiny_tok(TEXTS[0]).input_ids])
    assert not isinstance(rows.cache, RowKVCache)


def test_a_model_that_does_not_pass_its_cache_on_falls_back(tiny_tok, monkeypatch):
    model = tiny_model("llama", tiny_tok, seed=3)
    monkeypatch.setattr(RowKVCache, "update", lambda self, key, value, *args, **kwargs: (key, value))
    rows = RowBatch(model, pad_id=0)
    ids = tiny_tok(TEXTS[3]).input_ids
    lp = rows.prefill([ids])
    assert not rows.rows_mode and not isinstance(rows.cache, RowKVCache)
    close(lp[0], reference(model, ids))
    token = lp.argmax(-1)
    close(rows.step(token)[0], reference(model, ids + [int(token)]), tol=1e-4)


def test_prefill_in_row_chunks_equals_one_forward(tiny_tok, device, monkeypatch):
    import steer_plugins.core.rows as rows_mod

    expert = tiny_lora_expert(tiny_model("llama", tiny_tok, seed=2), seed=5).to(device)
    ctx = [tiny_tok(t).input_ids for t in [TEXTS[3], TEXTS[3][:-8], TEXTS[3][4:], TEXTS[2] + " and"]]
    names = ["default", "__base__", "default", "__base__"]
    whole = RowBatch(expert, pad_id=0, adapter_names=names)
    a = whole.prefill(ctx)
    monkeypatch.setattr(rows_mod, "PREFILL_CHUNK_TOKENS", 60)  # about one row per forward
    chunked = RowBatch(expert, pad_id=0, adapter_names=names)
    close(chunked.prefill(ctx), a)
    tokens = a.argmax(-1)
    close(chunked.step(tokens), whole.step(tokens))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_packed_prefill_equals_padded_prefill_and_the_reference(arch, tiny_tok, device, monkeypatch):
    """Contexts of different lengths prefilled back to back in one input row (no padding) give the
    padded prefill's logits and cache: the first steps agree, and each row matches its no-cache
    reference. Small chunks force several packed forwards."""
    import steer_plugins.core.rows as rows_mod

    model = tiny_model(arch, tiny_tok, seed=3).to(device)
    ctx = [tiny_tok(t).input_ids for t in [TEXTS[3], TEXTS[3][:-9], TEXTS[3][:-21], TEXTS[3][5:]]]
    assert len({len(c) for c in ctx}) == len(ctx)
    packs: list[list[int]] = []
    real_begin = RowKVCache.begin_packed
    monkeypatch.setattr(
        RowKVCache,
        "begin_packed",
        lambda self, seg, lengths, *a: (packs.append(list(lengths)), real_begin(self, seg, lengths, *a))[1],
    )
    monkeypatch.setattr(rows_mod, "PREFILL_CHUNK_TOKENS", 100)  # two contexts per forward
    packed = RowBatch(model, pad_id=0)
    a = packed.prefill(ctx)
    assert packs and sum(len(p) for p in packs) == len(ctx) and len(packs) > 1
    monkeypatch.setattr(rows_mod, "PACKED_PREFILL", False)
    padded = RowBatch(model, pad_id=0)
    close(padded.prefill(ctx), a, 1e-4)  # the same math in other GEMM shapes: rounding only
    for i, ids in enumerate(ctx):
        close(a[i], reference(model, ids), 1e-4)
    for _ in range(3):
        tokens = a.argmax(-1)
        a = packed.step(tokens)
        close(a, padded.step(tokens), 1e-4)
    # every written column (padding included) is finite; the reserved room after `end` is not yet written
    assert all(torch.isfinite(k[:, :, : seg.end]).all() for seg in packed.cache.segments for k in seg.keys)


def test_packed_prefill_keeps_a_reduced_kv_dtype(tiny_tok, device):
    """bf16 guidance KV rows prefilled packed store bf16 buffers, and attend over them as the padded
    prefill does (scores within bf16 rounding of the exact rows)."""
    model = tiny_model("llama", tiny_tok, seed=4).to(device)
    ctx = [tiny_tok(t).input_ids for t in [TEXTS[3], TEXTS[3][:-12], TEXTS[2]]]
    batch = RowBatch(model, pad_id=0, kv_dtype=torch.bfloat16, reduced_rows=[True, True, False])
    out = batch.prefill(ctx)
    dtypes = {seg.keys[0].dtype for seg in batch.cache.segments}
    assert dtypes == {torch.bfloat16, torch.float32}
    exact = RowBatch(model, pad_id=0).prefill(ctx)
    close(out[2], exact[2], 1e-4)
    close(out[:2], exact[:2], 3e-2)


def test_packed_prefill_falls_back_when_the_model_ignores_positions(tiny_tok, device, monkeypatch):
    """A model that returns every position's logits for a tensor `logits_to_keep` gets the padded
    prefill (same logits), not wrong rows."""
    model = tiny_model("llama", tiny_tok, seed=3).to(device)
    ctx = [tiny_tok(t).input_ids for t in [TEXTS[3], TEXTS[3][:-9]]]
    expected = RowBatch(model, pad_id=0).prefill(ctx)
    real_forward = model.forward

    def forward(*args, logits_to_keep=0, **kwargs):
        keep = 0 if isinstance(logits_to_keep, torch.Tensor) else logits_to_keep
        return real_forward(*args, logits_to_keep=keep, **kwargs)

    monkeypatch.setattr(model, "forward", forward)
    batch = RowBatch(model, pad_id=0)
    batch._keep_kw = batch._pack_ok = True  # the wrapper's signature hides these keywords
    batch._cache_kw = "cache"
    close(batch.prefill(ctx), expected)
    assert not batch._pack_ok and batch.rows_mode
