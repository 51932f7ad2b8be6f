"""Invented-word rate, completion rate, half-sample bootstrap intervals, and `steer evaluate --ci`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

pytest.importorskip("wordfreq")

from steer_plugins.apps.cli import main  # noqa: E402
from steer_plugins.apps.eval import (  # noqa: E402
    REGISTRY,
    completion_rate,
    evaluate,
    evaluate_with_ci,
    format_table,
    interval,
    invented_word_rate,
    invented_words,
    markdown_table,
    own_invented_word_rate,
    read_finish_reasons,
)

REAL = [
    "Can exomoons around hot Jupiters survive tidal migration?",
    "Does the Zeldovich effect constrain cluster velocities?",
    "Are magnetars the engines of fast radio bursts?",
    "Could dark matter subhaloes perturb stellar streams?",
]


def test_invented_words_english_or_reference_vocabulary():
    assert invented_words("Do supernovova host exomoons?", frozenset({"exomoons"})) == ["supernovova"]
    # "zeldovich" and "exomoons" are known from the reference even if wordfreq lacks them
    rate = invented_word_rate(["Does Zeldovich quasifersilish exomoons?"], REAL)
    assert rate == pytest.approx(1 / 4)  # does, zeldovich, quasifersilish, exomoons
    assert invented_word_rate(["Are stars hot?"], REAL) == 0.0
    assert math.isnan(invented_word_rate(["?? 42"], REAL))


def test_own_rate_is_leave_one_out():
    texts = ["the glorbax star", "the glorbax planet", "the zwindle moon"]
    # glorbax is used by two texts (known once either is left out); zwindle by one only
    assert own_invented_word_rate(texts) == pytest.approx(1 / 9)
    assert own_invented_word_rate(texts[2:], texts) == pytest.approx(1 / 3)


def test_completion_rate_and_reading_finish_reasons(tmp_path):
    assert completion_rate(["stop", "length", None, "stop"]) == pytest.approx(2 / 3)
    assert math.isnan(completion_rate(None)) and math.isnan(completion_rate([None]))
    rows = tmp_path / "s.jsonl"
    rows.write_text('{"text": "a?", "finish_reason": "stop"}\n\n{"text": "b", "finish_reason": "length"}\n')
    assert read_finish_reasons(rows) == ["stop", "length"]
    plain = tmp_path / "s.txt"
    plain.write_text("a?\nb\n")
    assert read_finish_reasons(plain) is None


def test_evaluate_new_metrics_and_reference_row():
    synth = {"s": ["Do supernovova explode?", "Are stars hot?", "Is it big?"]}
    out = evaluate(
        synth,
        REAL,
        metrics=["invented_word_rate", "completion_rate"],
        reference_name="real",
        finish_reasons={"s": ["stop", "length", "stop"]},
    )
    assert out["s"]["invented_word_rate"] == pytest.approx(1 / 9)
    assert out["s"]["completion_rate"] == pytest.approx(2 / 3)
    assert out["real"]["invented_word_rate"] >= 0.0  # leave-one-out, not trivially 0 by construction
    assert math.isnan(out["real"]["completion_rate"])
    assert (
        not REGISTRY["invented_word_rate"].higher_is_better and REGISTRY["completion_rate"].higher_is_better
    )


def test_one_example_reference_or_set_is_an_error():
    with pytest.raises(ValueError, match="fewer than 2 examples"):
        evaluate({"s": ["a b c", "d e f"]}, ["x y z"], metrics=["diversity"])
    with pytest.raises(ValueError, match="fewer than 2 examples"):
        evaluate({"s": ["a b c"]}, ["x y z", "u v w"], metrics=["diversity"])
    with pytest.raises(ValueError, match=">= 2"):
        evaluate({"s": ["a b c", "d e f"]}, ["x", "y"], metrics=["diversity"], sample_size=1)


def test_interval_centres_on_estimate_and_handles_nan():
    few = [0.1, 0.2, 0.3, 0.4, 0.5]  # under 100 replicates: normal interval, ±1.96·sd
    lo, hi = interval(0.5, few)
    assert (hi - lo) / 2 == pytest.approx(1.96 * np.std(few, ddof=1), rel=1e-3)
    many = np.linspace(-1, 1, 201)  # percentile interval of the deviations, centred on the estimate
    lo, hi = interval(0.5, many)
    assert (lo, hi) == (pytest.approx(0.5 - 0.95), pytest.approx(0.5 + 0.95))
    assert all(math.isnan(v) for v in interval(float("nan"), [0.1, 0.2]))
    assert all(math.isnan(v) for v in interval(0.5, [float("nan")] * 3 + [0.1]))


def test_bootstrap_seeded_brackets_estimates_and_matches_a_mean():
    rng = np.random.default_rng(0)
    synth = {"s": [" ".join(rng.choice(list("abcdefghij"), 6)) + "?" for _ in range(60)]}
    real = [" ".join(rng.choice(list("abcdefghij"), 6)) + "." for _ in range(60)]
    reasons = {"s": list(rng.choice(["stop", "length"], 60, p=[0.7, 0.3]))}
    kw = {
        "metrics": "normalised_3grams,self_bleu,completion_rate",
        "resamples": 60,
        "finish_reasons": reasons,
    }
    a = evaluate_with_ci(synth, real, seed=1, **kw)
    assert a == evaluate_with_ci(synth, real, seed=1, **kw)  # seeded
    assert a != evaluate_with_ci(synth, real, seed=2, **kw)
    row = a["s"]
    for metric in ("normalised_3grams", "self_bleu", "completion_rate"):
        lo, hi = row["ci"][metric]
        assert lo <= row[metric] <= hi, metric
    # for a proportion the half-sample interval approximates the binomial one: ±1.96·sqrt(p(1-p)/n)
    p = row["completion_rate"]
    half = 1.96 * math.sqrt(p * (1 - p) / 60)
    lo, hi = row["ci"]["completion_rate"]
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.35)
    assert row["ci_resamples"] == 60
    assert "[" in format_table(a) and "| s | 60 |" in markdown_table(a)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_cli_evaluate_ci_json_and_one_example_reference(tmp_path, capsys):
    real = _write(tmp_path / "real.jsonl", [{"text": t} for t in REAL * 3])
    synth = _write(
        tmp_path / "s.jsonl",
        [
            {"text": f"Do supernovova {i} explode?", "finish_reason": "stop" if i % 4 else "length"}
            for i in range(12)
        ],
    )
    out = tmp_path / "scores.json"
    argv = ["evaluate", "--reference", real, synth, "--metrics", "invented_word_rate,completion_rate"]
    assert main([*argv, "--ci", "--resamples", "20", "--json", str(out)]) == 0
    scores = json.loads(out.read_text())[synth]
    assert scores["completion_rate"] == pytest.approx(0.75)
    assert scores["invented_word_rate"] == pytest.approx(1 / 3)  # do, supernovova, explode
    assert len(scores["ci"]["completion_rate"]) == 2 and scores["ci_resamples"] == 20
    assert "half-sample" in capsys.readouterr().out

    one = _write(tmp_path / "one.jsonl", [{"text": REAL[0]}])
    assert main(["evaluate", "--reference", one, synth, "--metrics", "diversity"]) == 2
    assert "fewer than 2 examples" in capsys.readouterr().err
