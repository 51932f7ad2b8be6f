"""The cached, batched decode loop against a naive reference that recomputes every branch from scratch."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import UnbatchedClassifierFreeGuidanceLogitsProcessor

from steer_plugins import SteerConfig, SteerEngine
from steer_plugins.core import kernels
from steer_plugins.core.rows import RowBatch
from steer_plugins.testing import TINY_CORPUS, tiny_lora_expert, tiny_model

PROMPTS = ["Does dark matter", "Write a question about astronomy: Could the quick brown fox", "Is"]
NEGS = [
    ["The quick brown fox jumps over the lazy dog.", "Is the Hubble tension a sign of new physics?"],
    ["What is the capital of France?"],
    [
        "A synthetic example about stars, planets, comets and galaxies.",
        "Do fast radio bursts come from magnetars?",
    ],
]


@torch.inference_mode()
def last_logprobs(model, ids: list[int]) -> torch.Tensor:
    out = model(input_ids=torch.tensor([ids]))
    return out.logits[0, -1].float().log_softmax(-1)


def naive_scores(
    engine: SteerEngine, prompt: str, negatives: list[str], result, cfg: SteerConfig
) -> torch.Tensor:
    """Every step, every branch: a full forward over context + tokens so far, no cache, no padding."""
    tok = engine.tokenizer
    p_ids = tok(prompt).input_ids
    w = cfg.branch_weights()
    expert, base = engine.models.expert, engine.models.base
    if cfg.negative_form == "concat":
        neg_ctxs = [tok(cfg.negative_separator.join(negatives)).input_ids] if negatives else []
    else:
        neg_ctxs = [tok(n).input_ids for n in negatives]
    rows = []
    for t in range(len(result.token_ids)):
        gen = result.token_ids[:t]
        s = (w.expert) * last_logprobs(expert, p_ids + gen)
        if w.base:
            if base is None:  # LoRA expert: base = adapter off
                with expert.disable_adapter():
                    s = s + w.base * last_logprobs(expert, p_ids + gen)
            else:
                s = s + w.base * last_logprobs(base, p_ids + gen)
        for ctx in neg_ctxs:
            s = s + (w.negative / len(neg_ctxs)) * last_logprobs(expert, ctx + gen)
        head = last_logprobs(expert, p_ids + gen)
        steered = not (w.base == 0 and (w.negative == 0 or not neg_ctxs) and w.expert == 1)
        if cfg.known_words and steered:
            bias = naive_word_bias(tok, prompt, gen, head)
            head, s = (head + bias).log_softmax(-1), s + bias  # the expert's share: among allowed tokens
        if cfg.whole_words and steered:  # the expert spells (its top-k), the steered scores pick new words
            names = tok.convert_ids_to_tokens(list(range(len(head))))
            goes_on = torch.tensor([n[0] not in "ĠĊĉ▁" and n[0].isalnum() for n in names])
            p_new = head.exp()[~goes_on].sum()
            in_top_k = head >= head.topk(cfg.top_k or len(head)).values[-1]
            if cfg.spelling_min_p is not None:  # and no rarer than min_p x the head's best token
                in_top_k &= head.exp() >= cfg.spelling_min_p * head.exp().max()
            new = (torch.where(goes_on, float("-inf"), s).softmax(-1) * p_new).nan_to_num(
                nan=0.0
            )  # no start left
            s = torch.where(goes_on, torch.where(in_top_k, head.exp(), 0.0), new).log()
        if cfg.alpha is not None and steered:
            s = s.masked_fill(head < head.max() + torch.log(torch.tensor(cfg.alpha)), float("-inf"))
        rows.append(s.log_softmax(-1))
    return torch.stack(rows)


def naive_word_bias(tok, prompt: str, gen: list[int], head: torch.Tensor) -> torch.Tensor:
    """Known words, from the decoded text with a regex: 0 on the head's 64 best tokens after which
    every word finished this step is known and the word written into is a known word's start."""
    from steer_plugins.core.lexicon import english_words

    english = english_words()
    prompt_words = set(re.findall(r"[^\W\d_]+", prompt.lower()))
    is_word = lambda w: len(w) < 2 or w in prompt_words or english.is_word(w)  # noqa: E731
    is_start = lambda w: len(w) < 2 or any(p.startswith(w) for p in prompt_words) or english.is_prefix(w)  # noqa: E731
    # token by token: a character split across byte-level tokens is U+FFFD per piece, a word break
    before = "".join(tok.decode([t]) for t in gen if t not in tok.all_special_ids)
    word_at = len(before) - len(re.search(r"[^\W\d_]*$", before).group())  # where the open word starts
    finished = re.findall(r"[^\W\d_]+", before[:word_at].lower())
    before_words = finished[-1] if finished else None  # never the same word twice in a row
    bias = torch.full_like(head, float("-inf"))
    for c in head.topk(64).indices.tolist():
        after = before if c in tok.all_special_ids else before + tok.decode([c])
        previous = before_words
        runs = [m for m in re.finditer(r"[^\W\d_]+", after.lower()) if m.end() > word_at]
        ok = all(is_word(m.group()) for m in runs if m.end() < len(after) or c in tok.all_special_ids)
        for m in runs:  # each word against the one before it
            ok = ok and m.group() != previous
            previous = m.group()
        last = runs[-1] if runs else None
        if last is not None and last.end() == len(after) and c not in tok.all_special_ids:
            ok = ok and is_start(last.group())
        if ok:
            bias[c] = 0.0
    return bias if torch.isfinite(bias).any() else torch.zeros_like(head)


def assert_close_finite(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert torch.equal(torch.isinf(a), torch.isinf(b))
    fin = torch.isfinite(a)
    torch.testing.assert_close(a[fin], b[fin], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"form": "cfg", "gamma": 0.5, "eta": 1.0},
        {"negative_form": "per_example"},
        {"alpha": 0.1, "gamma": 1.0},
        {"spelling_min_p": 0.6},  # a floor that bites on the tiny models' flat distributions
        {"spelling_min_p": None},
        {"alpha": None, "whole_words": False},  # the paper's rule
        {"gamma": 0.0, "eta": 0.0},  # plain sampling: the guards stay off
        {"known_words": True},
        {"known_words": True, "alpha": None, "whole_words": False},
        {"known_words": True, "gamma": 0.0, "eta": 0.0},
    ],
)
def test_batch_of_one_matches_naive_reference(tiny_pair_models, overrides):
    expert, base, tok = tiny_pair_models
    engine = SteerEngine(expert, base, tok, config=SteerConfig(max_new_tokens=8, **overrides))
    r = engine.generate([PROMPTS[0]], negatives=[NEGS[0]], return_scores=True, seed=3)[0]
    assert r.scores is not None and r.scores.shape == (len(r.token_ids), len(tok))
    assert_close_finite(r.scores, naive_scores(engine, PROMPTS[0], NEGS[0], r, engine.config))
    engine.close()


def test_ragged_left_padded_batch_matches_reference_and_single_runs(tiny_pair_models):
    expert, base, tok = tiny_pair_models
    engine = SteerEngine(expert, base, tok, config=SteerConfig(max_new_tokens=10))
    batch = engine.generate(PROMPTS, negatives=NEGS, return_scores=True, seed=11)
    lengths = {len(tok(p).input_ids) for p in PROMPTS}
    assert len(lengths) == len(PROMPTS), "prompts must be ragged to exercise left padding"
    for i, r in enumerate(batch):
        assert_close_finite(r.scores, naive_scores(engine, PROMPTS[i], NEGS[i], r, engine.config))
        single = engine.generate([PROMPTS[i]], negatives=[NEGS[i]], return_scores=True, seed=11 + i)[0]
        assert single.token_ids == r.token_ids  # same seed per prompt → same draw, whatever the batch
        assert_close_finite(single.scores, r.scores)
    engine.close()


def test_finished_rows_leave_the_batch_and_others_stay_exact(tiny_engine):
    # Short and long budgets in one batch: prompts finish at different steps, rows are dropped.
    eng = tiny_engine
    long_r = eng.generate(PROMPTS, negatives=NEGS, return_scores=True, seed=5, max_new_tokens=12)
    mixed = [
        eng.generate([p], negatives=[n], return_scores=True, seed=5 + i, max_new_tokens=3 if i == 1 else 12)[
            0
        ]
        for i, (p, n) in enumerate(zip(PROMPTS, NEGS, strict=True))
    ]
    for i in (0, 2):
        assert mixed[i].token_ids == long_r[i].token_ids
    assert len(mixed[1].token_ids) == 3 and mixed[1].finish_reason in {"length", "stop"}


def test_gamma_eta_zero_is_expert_sampling(tiny_engine):
    eng = tiny_engine
    r = eng.generate([PROMPTS[1]], negatives=[NEGS[1]], return_scores=True, seed=7, gamma=0.0, eta=0.0)[0]
    p_ids = eng.tokenizer(PROMPTS[1]).input_ids
    ref = torch.stack(
        [last_logprobs(eng.models.expert, p_ids + r.token_ids[:t]) for t in range(len(r.token_ids))]
    )
    assert_close_finite(r.scores, ref)
    # and the draw equals a sampler fed the expert's own distribution with the same generator
    from steer_plugins.core.sampling import make_sampler

    g = torch.Generator().manual_seed(7)
    sampler = make_sampler(temperature=1.0, top_k=10)
    replay = [int(sampler(ref[t : t + 1], [g])[0]) for t in range(len(r.token_ids))]
    assert replay == r.token_ids


def test_cfg_form_equals_transformers_unbatched_cfg(tiny_pair_models):
    expert, base, tok = tiny_pair_models
    eta = 0.7
    engine = SteerEngine(
        expert,
        base,
        tok,
        config=SteerConfig(
            form="cfg", gamma=0.0, eta=eta, max_new_tokens=6, alpha=None, whole_words=False, known_words=False
        ),
    )
    neg = "The quick brown fox jumps over the lazy dog."
    r = engine.generate([PROMPTS[0]], negatives=[[neg]], return_scores=True, seed=2)[0]
    proc = UnbatchedClassifierFreeGuidanceLogitsProcessor(
        guidance_scale=1 + eta, model=expert, unconditional_ids=torch.tensor([tok(neg).input_ids])
    )
    ids = tok(PROMPTS[0]).input_ids
    for t, token in enumerate(r.token_ids):
        with torch.inference_mode():
            logits = expert(input_ids=torch.tensor([ids])).logits[:, -1]
            hf = proc(torch.tensor([ids]), logits).log_softmax(-1)[0]
        assert_close_finite(r.scores[t], hf)
        ids = ids + [token]
    engine.close()


def test_lora_base_rows_equal_plain_base_model(tiny_tok):
    base_plain = tiny_model("llama", tiny_tok, seed=2)
    expert = tiny_lora_expert(tiny_model("llama", tiny_tok, seed=2), seed=5)
    contexts = [tiny_tok(p).input_ids for p in PROMPTS]
    rows = RowBatch(expert, pad_id=0, adapter_names=["default", "__base__", "__base__"])
    lp = rows.prefill(contexts)
    for i, ctx in enumerate(contexts):
        want_base = last_logprobs(base_plain, ctx)
        if i == 0:
            assert not torch.allclose(lp[i], want_base, atol=1e-3), "the adapter must change the expert rows"
        else:
            torch.testing.assert_close(lp[i], want_base, atol=1e-5, rtol=1e-5)
    nxt = lp.argmax(-1)
    lp2 = rows.step(nxt)
    torch.testing.assert_close(
        lp2[2], last_logprobs(base_plain, contexts[2] + [int(nxt[2])]), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("peft_mode", ["mixed", "two_pass"])
def test_lora_engine_matches_reference(tiny_tok, peft_mode):
    expert = tiny_lora_expert(tiny_model("llama", tiny_tok, seed=2), seed=5)
    engine = SteerEngine(
        expert, tokenizer=tiny_tok, config=SteerConfig(max_new_tokens=6), peft_mode=peft_mode
    )
    assert engine.models.shared_weights
    r = engine.generate(PROMPTS[:2], negatives=NEGS[:2], return_scores=True, seed=4)
    for i in range(2):
        assert_close_finite(r[i].scores, naive_scores(engine, PROMPTS[i], NEGS[i], r[i], engine.config))
    engine.close()


def test_pool_draws_are_recorded_and_outputs_appended(tiny_engine):
    before = len(tiny_engine.pool)
    rs = tiny_engine.generate(PROMPTS, seed=1)
    for r in rs:
        assert len(r.negatives_used) == 3 and set(r.negatives_used) <= set(TINY_CORPUS)
        assert len(set(r.negatives_used)) == 3  # without replacement
    assert len(tiny_engine.pool) == before + sum(bool(r.text.strip()) for r in rs)
    again = tiny_engine.generate(PROMPTS[:1], negatives=[["x y z"]], seed=1)
    assert again[0].negatives_used == ["x y z"]
    assert len(tiny_engine.pool) == before + sum(bool(r.text.strip()) for r in rs), (
        "explicit negatives: no append"
    )


def test_row_padding_changes_nothing_but_shape(tiny_tok):
    model = tiny_model("gpt2", tiny_tok, seed=3)
    contexts = [tiny_tok(p).input_ids for p in PROMPTS[:3]]
    plain, padded = RowBatch(model, pad_id=0), RowBatch(model, pad_id=0, min_rows=4)
    a, b = plain.prefill(contexts), padded.prefill(contexts)
    assert padded.attention_mask.shape[0] == 4 and len(padded) == 3 and b.shape[0] == 3
    torch.testing.assert_close(a, b)
    tokens = a.argmax(-1)
    torch.testing.assert_close(plain.step(tokens), padded.step(tokens))
    keep = torch.tensor([0, 2])
    plain.select(keep)
    padded.select(keep)
    assert padded.attention_mask.shape[0] == 4 and len(padded) == 2
    torch.testing.assert_close(plain.step(tokens[keep]), padded.step(tokens[keep]))
    padded.select(torch.tensor([1]))
    assert padded.attention_mask.shape[0] == 1  # one row takes the fast path unpadded


def test_bucketed_prefill_equals_one_padded_forward(tiny_pair_models, monkeypatch):
    import steer_plugins.core.rows as rows_mod

    expert, _, tok = tiny_pair_models
    contexts = [
        tok(p).input_ids
        for p in [
            "Is",
            "Does dark matter shape the rotation curves of dwarf galaxies? " * 3,
            "Could",
            "The quick brown fox jumps over the lazy dog.",
        ]
    ]
    assert len(rows_mod._length_buckets([len(c) for c in contexts])) > 1
    bucketed = RowBatch(expert, pad_id=0)
    a = bucketed.prefill(contexts)
    monkeypatch.setattr(rows_mod, "_length_buckets", lambda lengths: [list(range(len(lengths)))])
    single = RowBatch(expert, pad_id=0)
    b = single.prefill(contexts)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    tokens = a.argmax(-1)
    for _ in range(3):
        sa, sb = bucketed.step(tokens), single.step(tokens)
        torch.testing.assert_close(sa, sb, atol=1e-5, rtol=1e-5)
        tokens = sa.argmax(-1)


@pytest.mark.parametrize("lora", [False, True])
def test_base_prompts_give_the_base_branch_its_own_context(tiny_tok, lora):
    """The prompted expert: the same weights, expert branch with examples in context, base without."""
    model = tiny_model("llama", tiny_tok, seed=2)
    expert = tiny_lora_expert(model, seed=5) if lora else model
    cfg = SteerConfig(
        max_new_tokens=6, gamma=0.5, alpha=None, whole_words=False, known_words=False
    )  # the rule alone
    engine = SteerEngine(expert, tokenizer=tiny_tok, config=cfg)
    in_context = (
        "Does dark matter shape galaxies? Is the Hubble tension real? Write a question about astronomy:"
    )
    plain = "Write a question about astronomy:"
    r = engine.generate([in_context], negatives=[NEGS[0]], base_prompts=[plain], return_scores=True, seed=2)[
        0
    ]
    w = engine.config.branch_weights()
    p_ids, b_ids = tiny_tok(in_context).input_ids, tiny_tok(plain).input_ids
    neg_ids = tiny_tok(" ".join(NEGS[0])).input_ids
    for t in range(len(r.token_ids)):
        gen = r.token_ids[:t]
        s = w.expert * last_logprobs(expert, p_ids + gen) + w.negative * last_logprobs(expert, neg_ids + gen)
        if lora:
            with expert.disable_adapter():
                s = s + w.base * last_logprobs(expert, b_ids + gen)
        else:
            s = s + w.base * last_logprobs(expert, b_ids + gen)
        assert_close_finite(r.scores[t], s.log_softmax(-1))
    same = engine.generate([in_context], negatives=[NEGS[0]], return_scores=True, seed=2)[0]
    assert not torch.allclose(same.scores[0], r.scores[0]), "base_prompts must change the base branch"
    with pytest.raises(ValueError, match="base_prompts"):
        engine.generate([in_context, plain], base_prompts=[plain])
    engine.close()


@pytest.mark.skipif(not kernels.available(), reason="this PyTorch build has no oneDNN linear op")
def test_onednn_linear_matches_the_reference_and_leaves_other_callers_alone(tiny_tok, monkeypatch):
    """`fast_linear`: the engine's forwards through oneDNN's fp32 linear (every layer, every row count
    here) match the no-cache reference run with PyTorch's own kernels; outside the engine the same
    converted model computes exactly as before."""
    expert = tiny_lora_expert(tiny_model("llama", tiny_tok, seed=1), seed=4)
    ids = torch.tensor([tiny_tok(PROMPTS[1]).input_ids])
    with torch.inference_mode():
        before = expert(input_ids=ids).logits
    assert kernels.install(expert, min_features=1) > 0
    calls = []
    real = kernels._onednn
    monkeypatch.setattr(kernels, "_onednn", lambda *a: (calls.append(1), real(*a))[1])
    monkeypatch.setattr(kernels, "MIN_ROWS", 1)
    with torch.inference_mode():
        assert torch.equal(expert(input_ids=ids).logits, before) and not calls  # not enabled
        with kernels.enabled(True):
            fast = expert(input_ids=ids).logits
    assert calls  # oneDNN ran
    torch.testing.assert_close(fast, before, atol=1e-4, rtol=1e-4)
    calls.clear()
    engine = SteerEngine(expert, tokenizer=tiny_tok, config=SteerConfig(max_new_tokens=8), fast_linear=True)
    assert engine.models.fast_linear
    batch = engine.generate(PROMPTS, negatives=NEGS, return_scores=True, seed=11)
    assert calls
    for i, r in enumerate(batch):
        assert_close_finite(r.scores, naive_scores(engine, PROMPTS[i], NEGS[i], r, engine.config))
    engine.close()
    off = SteerEngine(tiny_model("llama", tiny_tok, seed=1), tokenizer=tiny_tok, fast_linear=False)
    assert not off.models.fast_linear
    assert not any(isinstance(m, kernels.FastLinear) for m in off.models.expert.modules())
    off.close()


@pytest.mark.parametrize("kind", kernels.PACKINGS)
def test_packed_decode_weights_match_the_reference_and_follow_weight_changes(kind, tiny_tok, monkeypatch):
    """`fast_linear`'s packed weights: decode steps (9 rows here) use them and match the no-cache
    reference; a oneDNN pack serves every row count (each layer packs once), an MKL pack one bucket
    (9 rows padded to 16); prefill forwards never pack; a weight changed in place is packed again
    (never a stale pack), other threads' callers compute exactly as before, and `close()` frees
    the packs."""
    if not kernels.packing_available(kind):
        pytest.skip(f"this PyTorch build has no packed {kind} linear ops")
    expert = tiny_lora_expert(tiny_model("llama", tiny_tok, seed=1), seed=4)
    layers = kernels.install(expert, min_features=1)
    assert layers > 0
    packs: list[tuple[str, int]] = []
    real = kernels._pack
    monkeypatch.setattr(kernels, "_pack", lambda w, rows, k: (packs.append((k, rows)), real(w, rows, k))[1])
    engine = SteerEngine(expert, tokenizer=tiny_tok, config=SteerConfig(max_new_tokens=8), fast_linear=True)
    assert engine.models.packed_linear == "onednn" if kernels.packing_available("onednn") else "mkl"
    engine.models.packed_linear = kind
    batch = engine.generate(PROMPTS, negatives=NEGS, return_scores=True, seed=11)
    if kind == "mkl":  # 3 prompts x (expert, base, negatives) = 9 rows -> bucket 16
        assert packs and set(packs) == {("mkl", 16)}
    else:  # one pack per layer, made at the first decode step's 9 rows, whatever rows follow
        held = sum("_steer_pack" in m.__dict__ for m in expert.modules())
        assert held > 0 and packs == [("onednn", 9)] * held
    for i, r in enumerate(batch):
        assert_close_finite(r.scores, naive_scores(engine, PROMPTS[i], NEGS[i], r, engine.config))
    layer = next(m for m in expert.modules() if isinstance(m, kernels.FastLinear))
    x = torch.randn(9, layer.in_features)
    with torch.inference_mode(), kernels.enabled(False, packed=kind):
        torch.testing.assert_close(
            layer(x), torch.nn.functional.linear(x, layer.weight), atol=1e-5, rtol=1e-5
        )
        packs.clear()
        with torch.no_grad():
            layer.weight.mul_(2.0)  # e.g. load_state_dict, in place (PEFT merges: the test below)
        torch.testing.assert_close(
            layer(x), torch.nn.functional.linear(x, layer.weight), atol=1e-5, rtol=1e-5
        )
        assert len(packs) == 1  # packed again for the new weight
        torch.testing.assert_close(  # another row count: the oneDNN pack serves it, MKL packs again
            layer(x[:5]), torch.nn.functional.linear(x[:5], layer.weight), atol=1e-5, rtol=1e-5
        )
        assert len(packs) == (2 if kind == "mkl" else 1)
    assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight))  # not enabled: PyTorch's kernel
    engine.close()
    assert not any("_steer_pack" in m.__dict__ for m in expert.modules())


def test_peft_merges_are_seen_packs_follow_them_and_a_merged_shared_expert_fails_clearly(tiny_tok):
    """PEFT's `merge_adapter()` edits `weight.data` in place, invisible to a pack's key: with a
    separate base the engine notices the merge between requests and repacks (scores still match the
    reference, merged and unmerged again); with a shared-weights expert, whose base rows need the
    adapter off per row, a merged adapter fails the request with an error that names the fix, and
    unmerging recovers."""
    negs = [NEGS[0][:1]] * len(PROMPTS)
    expert = tiny_lora_expert(tiny_model("llama", tiny_tok, seed=1), seed=4)
    assert kernels.install(expert, min_features=1) > 0  # the tiny layers pack too
    engine = SteerEngine(
        expert,
        tiny_model("llama", tiny_tok, seed=2),
        tokenizer=tiny_tok,
        config=SteerConfig(max_new_tokens=6),
        fast_linear=True,
    )
    for step in ("packed", "merged", "unmerged"):
        if step == "merged":
            expert.merge_adapter()
        if step == "unmerged":
            expert.unmerge_adapter()
        batch = engine.generate(PROMPTS, negatives=negs, return_scores=True, seed=11)
        assert any("_steer_pack" in m.__dict__ for m in expert.modules())
        for i, r in enumerate(batch):
            assert_close_finite(r.scores, naive_scores(engine, PROMPTS[i], negs[i], r, engine.config))
    engine.close()
    shared = SteerEngine(expert, tokenizer=tiny_tok, config=SteerConfig(max_new_tokens=6), fast_linear=True)
    shared.generate(PROMPTS, negatives=negs, seed=11)
    expert.merge_adapter()
    with pytest.raises(ValueError, match="unmerge_adapter"):
        shared.generate(PROMPTS, negatives=negs, seed=11)
    assert shared.generate(
        PROMPTS, negatives=negs, seed=11, gamma=0.0
    )  # no base rows: a merged expert is fine
    expert.unmerge_adapter()
    batch = shared.generate(PROMPTS, negatives=negs, return_scores=True, seed=11)
    for i, r in enumerate(batch):
        assert_close_finite(r.scores, naive_scores(shared, PROMPTS[i], negs[i], r, shared.config))
    shared.close()


@pytest.mark.skipif(
    not any(map(kernels.packing_available, kernels.PACKINGS)),
    reason="this PyTorch build has no packed linear ops",
)
def test_no_packed_weights_while_the_cache_budget_holds_prompts_back(tiny_tok, monkeypatch):
    """Packs cost the weights' size again: a batch whose cache budget holds prompts back makes
    none, down to its last prompts, and the next request that fits packs again."""
    expert = tiny_lora_expert(tiny_model("llama", tiny_tok, seed=1), seed=4)
    kernels.install(expert, min_features=1)
    packs: list[int] = []
    real = kernels._pack
    monkeypatch.setattr(kernels, "_pack", lambda w, rows, k: (packs.append(rows), real(w, rows, k))[1])
    engine = SteerEngine(
        expert, tokenizer=tiny_tok, config=SteerConfig(max_new_tokens=4), fast_linear=True, max_cache_mb=0.05
    )
    assert engine.models.packed_linear
    prompts = [p for p in PROMPTS for _ in range(3)]
    engine.generate(prompts, negatives=[NEGS[0]] * len(prompts), seed=3)
    assert engine.stats.prompts_waited > 0 and packs == []
    engine.close()
    roomy = SteerEngine(expert, tokenizer=tiny_tok, config=SteerConfig(max_new_tokens=4), fast_linear=True)
    roomy.generate(PROMPTS, negatives=NEGS, seed=3)
    assert roomy.stats.prompts_waited == 0 and packs
    roomy.close()


@pytest.mark.slow
def test_real_model_with_its_default_kernels_matches_the_reference():
    """SmolLM2-135M with the shipped LoRA expert, as the engine runs it on this machine (oneDNN
    linear layers when `fast_linear`'s timing picks them; forwards of 8+ rows use them), against
    the no-cache reference on PyTorch's own kernels: every step within 1e-4."""
    from pathlib import Path

    adapter = (
        Path(__file__).resolve().parents[2] / "steer_plugins" / "assets" / "adapters" / "hypotheses-lora"
    )
    engine = SteerEngine(str(adapter), config=SteerConfig(max_new_tokens=6))
    prompts = ["Write a research hypothesis in astronomy, phrased as a question."] * 3
    negatives = [NEGS[0] + NEGS[2], NEGS[1] + NEGS[0], NEGS[2]]
    batch = engine.generate(prompts, negatives=negatives, return_scores=True, seed=2)
    for i, r in enumerate(batch):
        assert_close_finite(r.scores, naive_scores(engine, prompts[i], negatives[i], r, engine.config))
    engine.close()
