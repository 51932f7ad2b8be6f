"""`combine` and the samplers on hand-written 4-token distributions with exact answers."""

from __future__ import annotations

import math

import pytest
import torch

from steer_plugins import SteerConfig, combine, guard_non_finite, head_mask
from steer_plugins.core.config import DEFAULT_ETA
from steer_plugins.core.sampling import apply_min_p, apply_top_k, apply_top_p, make_sampler

NEG_INF = float("-inf")


def lp(*probs):
    return torch.log(torch.tensor(probs, dtype=torch.float32))


def test_paper_form_weights_and_sum():
    expert, base, neg = lp(0.4, 0.3, 0.2, 0.1), lp(0.1, 0.5, 0.2, 0.2), lp(0.7, 0.1, 0.1, 0.1)
    w = SteerConfig(gamma=0.2, eta=0.6).branch_weights()
    assert (w.expert, w.base, w.negative) == (pytest.approx(1.2), -0.2, -0.6)
    got = combine(torch.stack([expert, base, neg])[None], torch.tensor([w.expert, w.base, w.negative]))
    want = 1.2 * expert - 0.2 * base - 0.6 * neg
    torch.testing.assert_close(got[0], want)
    assert expert.argmax() == 0 and got[0].argmax() == 1  # the negatives push the expert off its favourite


def test_cfg_form_is_guidance_scale_one_plus_eta():
    w = SteerConfig(form="cfg", gamma=0.0, eta=0.5).branch_weights()
    cond, uncond = lp(0.4, 0.3, 0.2, 0.1), lp(0.1, 0.5, 0.2, 0.2)
    got = combine(torch.stack([cond, uncond, uncond])[None], torch.tensor([w.expert, w.base, w.negative]))
    torch.testing.assert_close(got[0], 1.5 * (cond - uncond) + uncond)


def test_gamma_eta_zero_returns_expert_unchanged_and_does_not_modify_input():
    x = torch.stack([lp(0.4, 0.3, 0.2, 0.1), lp(0.25, 0.25, 0.25, 0.25)])[None]
    copy = x.clone()
    out = combine(x, torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(out[0], x[0, 0])
    assert torch.equal(x, copy)
    out[0, 0] = 99.0
    assert torch.equal(x, copy), "the result must not alias the input"


def test_zero_weight_ignores_minus_inf_branch():
    x = torch.stack([lp(0.5, 0.5, 0.0, 0.0), lp(0.0, 1.0, 0.0, 0.0)])[None]
    out = combine(x, torch.tensor([1.0, 0.0]))
    assert not torch.isnan(out).any()


def test_batch_mode_with_per_prompt_weights():
    a = torch.stack([lp(0.4, 0.3, 0.2, 0.1), lp(0.1, 0.2, 0.3, 0.4)])
    x = torch.stack([a, a])
    out = combine(x, torch.tensor([[1.0, 0.0], [2.0, -1.0]]))
    torch.testing.assert_close(out[0], a[0])
    torch.testing.assert_close(out[1], 2 * a[0] - a[1])


def test_head_mask_alpha():
    head = lp(0.5, 0.3, 0.04, 0.16)
    assert head_mask(head[None], 0.1)[0].tolist() == [True, True, False, True]
    out = combine(torch.stack([head, lp(0.25, 0.25, 0.25, 0.25)])[None], torch.tensor([1.0, -0.6]), alpha=0.5)
    assert torch.isinf(out[0]).tolist() == [False, False, True, True]
    per_row = head_mask(torch.stack([head, head]), torch.tensor([0.1, math.nan]))
    assert per_row[1].all()


def test_combine_shape_errors_name_the_argument():
    with pytest.raises(ValueError, match="weights"):
        combine(torch.zeros(1, 3, 4), torch.tensor([1.0, 0.5]))
    with pytest.raises(ValueError, match="branch_logprobs"):
        combine(torch.zeros(3, 4), torch.tensor([1.0, 0.5, 0.1]))


def test_guard_falls_back_on_unusable_rows():
    good = lp(0.4, 0.3, 0.2, 0.1)
    scores = torch.stack(
        [
            good,
            torch.full((4,), NEG_INF),
            torch.tensor([0.0, math.nan, 0.0, 0.0]),
            torch.tensor([0.0, math.inf, 0.0, 0.0]),
        ]
    )
    fallback = torch.stack([lp(0.25, 0.25, 0.25, 0.25)] * 4)
    fixed, bad = guard_non_finite(scores, fallback)
    assert bad.tolist() == [False, True, True, True]
    torch.testing.assert_close(fixed[0], good)
    torch.testing.assert_close(fixed[1:], fallback[1:])


def test_top_k_top_p_min_p_exact():
    x = lp(0.9, 0.0, 0.0, 0.1)
    assert torch.isfinite(apply_top_p(x[None], 0.3))[0].tolist() == [True, False, False, False]
    y = lp(0.4, 0.3, 0.2, 0.1)
    assert torch.isfinite(apply_top_k(y[None], 2))[0].tolist() == [True, True, False, False]
    assert torch.isfinite(apply_top_p(y[None], 0.65))[0].tolist() == [True, True, False, False]
    assert torch.isfinite(apply_min_p(y[None], 0.5))[0].tolist() == [True, True, True, False]
    both = apply_top_k(torch.stack([y, x]), 1)
    assert torch.isfinite(both).sum(-1).tolist() == [1, 1]


def test_samplers_greedy_and_seeded():
    y = torch.stack([lp(0.1, 0.6, 0.2, 0.1), lp(0.7, 0.1, 0.1, 0.1)])
    assert make_sampler(temperature=0)(y, [None, None]).tolist() == [1, 0]
    s = make_sampler(top_k=2)
    draws = {int(s(y[:1], [torch.Generator().manual_seed(i)])[0]) for i in range(50)}
    assert draws == {1, 2}  # only the top-2 tokens can be drawn
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert s(y, [g1, torch.Generator()])[0] == s(y[:1], [g2])[0]


def test_sampling_over_the_kept_tokens_has_the_filtered_distribution():
    """The sampler draws over the tokens the filters kept (not the whole vocabulary): its
    frequencies match the filtered, renormalised distribution, rows that keep fewer tokens than
    their neighbours never draw a dropped one, and with most of the vocabulary kept it still works."""
    torch.manual_seed(0)
    vocab = 1000
    logits = torch.randn(2, vocab) * 2
    s = make_sampler(top_p=0.5)  # row-dependent support sizes
    kept = torch.isfinite(apply_top_p(logits, 0.5))
    assert kept.sum(-1).tolist()[0] != kept.sum(-1).tolist()[1]
    g = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    n = 20_000
    counts = torch.zeros(2, vocab)
    for _ in range(n // 100):
        draws = torch.stack([s(logits, g) for _ in range(100)])  # (100, 2)
        for row in range(2):
            counts[row] += torch.bincount(draws[:, row], minlength=vocab)
    assert not counts[~kept].any()  # never a dropped token, in either row
    want = apply_top_p(logits, 0.5).softmax(-1)
    tolerance = 4 * (want * (1 - want) / n).sqrt() + 1e-3  # 4 standard errors per token
    assert ((counts / n - want).abs() <= tolerance).all()
    wide = make_sampler(temperature=2.0)  # keeps everything: the whole-vocabulary path
    assert 0 <= int(wide(logits, [torch.Generator().manual_seed(0)] * 2)[1]) < vocab


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_top_k_sampler_draws_as_filter_then_draw(temperature):
    """Top-k alone takes a fast path (one `topk` of the batch, no vocabulary-wide mask): for the same
    generators it draws exactly the tokens of the general path (filter the vocabulary, then draw over
    the kept tokens), including a row with fewer than k finite tokens and a row whose k-th token
    ties the next (both tied tokens stay, as the filter keeps them)."""
    from steer_plugins.core.sampling import _draw, make_filter

    torch.manual_seed(0)
    vocab, k = 500, 10
    logits = (torch.randn(4, vocab) * 3).log_softmax(-1)
    logits[1, 6:] = -math.inf  # six tokens left
    top = logits[2].topk(k + 1)
    logits[2, top.indices[k]] = top.values[k - 1]  # a tie at the k-th place
    fast = make_sampler(temperature=temperature, top_k=k)
    filt = make_filter(temperature=temperature, top_k=k)
    for seed in range(40):
        gens = [torch.Generator().manual_seed(seed * 4 + i) for i in range(4)]
        got = fast(logits, gens).tolist()
        filtered = filt(logits)
        ref_gens = [torch.Generator().manual_seed(seed * 4 + i) for i in range(4)]
        kept = (filtered > -math.inf).sum(-1).tolist()
        want = [int(_draw(filtered[i], kept[i], ref_gens[i])) for i in range(4)]
        assert got == want
        assert torch.isfinite(filtered[1, got[1]]) and got[1] < 6
    assert kept[2] == k + 1


@pytest.mark.parametrize(
    "bad",
    [
        {"gamma": math.nan},
        {"eta": math.inf},
        {"gamma": -0.1},
        {"eta": -1},
        {"top_k": 0},
        {"top_k": -3},
        {"max_new_tokens": 0},
        {"num_negatives": 0},
        {"top_p": 0.0},
        {"alpha": 1.5},
        {"temperature": -1},
    ],
)
def test_config_rejects_bad_values_naming_the_field(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=f"`{name}`"):
        SteerConfig(**bad)


def test_config_roundtrip_merge_and_presets():
    cfg = SteerConfig(gamma=0.4, stop="?")
    assert cfg.stop == ["?"]
    assert SteerConfig.model_validate_json(cfg.model_dump_json()) == cfg
    assert cfg.merged(eta=0.1).eta == 0.1 and cfg.eta == DEFAULT_ETA
    assert cfg.merged(eta=0.1).fingerprint() != cfg.fingerprint()
    with pytest.raises(ValueError, match="unknown SteerConfig field"):
        cfg.merged(gama=1)
    assert SteerConfig.preset("contrastive").alpha == 0.1
    assert SteerConfig.preset("expert").branch_weights().negative == 0
    # the paper's exact rule for reproductions, whatever the product defaults become
    paper = SteerConfig.preset("paper")
    assert (paper.gamma, paper.eta, paper.alpha, paper.whole_words, paper.top_k) == (
        0.2,
        0.6,
        None,
        False,
        10,
    )
    assert SteerConfig.preset("steer") == SteerConfig()


def test_guards_leave_plain_sampling_alone():
    # γ = η = 0 (one branch of weight 1) is plain sampling: the head mask and whole words guard steering
    head = torch.stack([lp(0.5, 0.3, 0.15, 0.05), lp(0.5, 0.3, 0.15, 0.05)])
    neg = torch.stack([lp(0.25, 0.25, 0.25, 0.25), lp(0.1, 0.2, 0.3, 0.4)])
    w = torch.tensor([[1.0, 0.0], [1.0, -0.6]])
    out = combine(torch.stack([head, neg], dim=1), w, alpha=0.5, continuation=torch.tensor([0, 1, 0, 0]).bool(),
                  whole_words=True)  # fmt: skip
    assert torch.equal(out[0], head[0])  # row 0: plain, unmasked
    assert torch.isneginf(out[1, 2:]).all()  # row 1: steered, masked
    with pytest.raises(ValueError, match="unknown preset"):
        SteerConfig.preset("nope")


def test_whole_words_expert_spells_steering_picks_new_words():
    # vocab: 0 "Ġsuper", 1 "nova", 2 "?", 3 "Ġstar"; token 1 continues a word
    continuation = torch.tensor([False, True, False, False])
    head = torch.stack([lp(0.2, 0.6, 0.1, 0.1), lp(0.5, 0.1, 0.1, 0.3)])
    neg = torch.stack([lp(0.1, 0.7, 0.1, 0.1), lp(0.7, 0.1, 0.1, 0.1)])
    branches, w = torch.stack([head, neg], dim=1), torch.tensor([1.0, -1.5])
    steered = combine(branches, w)
    out = combine(branches, w, continuation=continuation, whole_words=True)
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(2))  # a distribution
    torch.testing.assert_close(out[:, 1], head[:, 1])  # continuing the word: the expert's probability
    starts = [0, 2, 3]  # starting something new: the expert's total, shared out by the steered scores
    torch.testing.assert_close(out[:, starts].exp().sum(-1), head[:, starts].exp().sum(-1))
    torch.testing.assert_close(out[:, starts].log_softmax(-1), steered[:, starts].log_softmax(-1))
    assert steered[0].argmax() != 1 and out[0].argmax() == 1  # the negatives no longer break the word
    per_prompt = combine(branches, w, continuation=continuation, whole_words=torch.tensor([False, True]))
    assert torch.equal(per_prompt[0], steered[0]) and torch.equal(per_prompt[1], out[1])
    masked = combine(branches, w, alpha=0.5, continuation=continuation, whole_words=True)
    assert torch.isneginf(masked[0, [0, 2, 3]]).all() and masked[0, 1] == out[0, 1]  # α still applies
    # head_top_k: a word goes on only with one of the head's own k best tokens
    spelled = combine(branches, w, continuation=continuation, whole_words=True, head_top_k=1)
    assert torch.isneginf(spelled[1, 1]) and spelled[0, 1] == out[0, 1]  # "nova" is not row 1's best
    assert torch.equal(spelled[:, starts], out[:, starts])
    # spelling_min_p: a word goes on only with a piece >= min_p x the head's best token ("nova" is 0.2x
    # row 1's best, row 0's best itself); NaN switches it off per row, starts are untouched
    floor = combine(branches, w, continuation=continuation, whole_words=True, spelling_min_p=0.25)
    assert torch.isneginf(floor[1, 1]) and floor[0, 1] == out[0, 1]
    assert torch.equal(floor[:, starts], out[:, starts])
    per_row = combine(branches, w, continuation=continuation, whole_words=True,
                      spelling_min_p=torch.tensor([0.25, float("nan")]))  # fmt: skip
    assert torch.equal(per_row, out)
    assert torch.equal(
        combine(branches, w, continuation=continuation, whole_words=True, spelling_min_p=0.2), out
    )
    # only with whole words: the paper's rule steers every token and keeps "nova" for row 1
    assert torch.isfinite(combine(branches, w, spelling_min_p=0.25)[1, 1])
    # no word start left at all (known words allow only the piece "nova"): the word goes on, no NaN
    only_piece = branches.clone()
    only_piece[:, 0, starts] = float("-inf")
    forced = combine(only_piece, w, continuation=continuation, whole_words=True, alpha=0.05)
    assert not forced.isnan().any() and (forced.argmax(-1) == 1).all()
    assert torch.isneginf(forced[:, starts]).all()


def test_continuation_tokens_read_the_space_markers(tiny_tok):
    from steer_plugins.core.combine import continuation_tokens

    flags = continuation_tokens(tiny_tok, len(tiny_tok) + 3)
    assert flags[len(tiny_tok) :].tolist() == [False] * 3  # padded vocabulary rows
    starts, inside = [], []
    for word in ("steering", "negatives", "hypothesis"):
        ids = tiny_tok(" " + word, add_special_tokens=False)["input_ids"]
        assert len(ids) > 1, word  # the tiny vocabulary splits these words
        starts.append(bool(flags[ids[0]]))  # "Ġ..." starts a word
        inside += [bool(flags[i]) for i in ids[1:]]  # the rest continue it
    assert starts == [False] * 3 and all(inside)
    for text in ("?", ",", "\n"):
        assert not flags[tiny_tok(text, add_special_tokens=False)["input_ids"][0]]
