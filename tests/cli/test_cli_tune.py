"""`steer tune` on the tiny model: grid, refinement, budget, recipe `steer generate` loads, resume, report."""

from __future__ import annotations

import json

import pytest

from steer_plugins.apps.cli import main
from steer_plugins.apps.data_io import read_jsonl
from steer_plugins.apps.tune import (
    Budget,
    Setting,
    best_setting,
    initial_grid,
    meets_budget,
    refine_points,
    split_dev,
)

pytest.importorskip("wordfreq")


def test_budget_rules_and_grid_helpers():
    anchor = {
        "adversarial_auroc": 0.8,
        "cosine_centroid": 0.9,
        "invented_word_rate": 0.01,
        "ci": {"adversarial_auroc": [0.7, 0.85], "cosine_centroid": [0.88, 0.92]},
    }
    budget = Budget(within=("adversarial_auroc", "cosine_centroid"))
    ok = {"adversarial_auroc": 0.84, "cosine_centroid": 0.881, "invented_word_rate": 0.014}
    assert meets_budget(ok, anchor, budget) == []
    bad = {"adversarial_auroc": 0.86, "cosine_centroid": 0.87, "invented_word_rate": 0.016}
    misses = meets_budget(bad, anchor, budget)
    assert len(misses) == 3 and "above" in misses[0] and "below" in misses[1] and "invented" in misses[2]
    rows = {"a": {"normalised_3grams": 0.9, "misses": []}, "b": {"normalised_3grams": 0.95, "misses": ["x"]}}
    assert best_setting(rows, budget) == "a"
    assert best_setting({"b": rows["b"]}, budget) is None
    assert Setting(0.2, 1.0, 0.1) != Setting(0.2, 1.0) and Setting(0.2, 1.0, 0.1).name == "γ0.2 η1 α0.1"
    assert [s.name for s in refine_points(Setting(0.0, 0.2))] == ["γ0.2 η0.2", "γ0 η0.4"]
    words = Setting(0.2, 1.0, None, True)
    assert words.name == "γ0.2 η1 words" and words.slug == "g0.2_e1_w" and words.overrides()["whole_words"]
    assert all(s.whole_words for s in refine_points(words))
    grid = initial_grid([0.0, 0.2], [0.6], [None], [False, True])
    assert [s.name for s in grid] == ["γ0 η0.6", "γ0.2 η0.6", "γ0 η0.6 words", "γ0.2 η0.6 words"]
    pool, dev = split_dev([f"t{i}" for i in range(8)], 0.25, seed=0)
    assert (
        len(dev) == 2
        and not set(pool) & set(dev)
        and split_dev(list(map(str, range(8))), 0.25, 0)[1] == split_dev(list(map(str, range(8))), 0.25, 0)[1]
    )
    with pytest.raises(ValueError, match="at least 4"):
        split_dev(["a", "b", "c"], 0.5, 0)


def test_tune_on_tiny_model_writes_recipe_generate_loads_and_resumes(
    tmp_path, tiny_model_dir, real_file, capsys
):
    out = tmp_path / "tuned"
    argv = ["tune", real_file, "--expert", tiny_model_dir, "--prompt", "Write a question:", "--out", str(out),
            "--n", "4", "--max-new-tokens", "5", "--num-negatives", "2", "--seed", "0", "--gammas", "0",
            "--etas", "0.5", "--alphas", "none", "--no-whole-words", "--rounds", "1", "--fidelity-metrics", "none",
            "--diversity-metric", "distinct_2", "--invented-slack", "100", "--resamples", "10", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "tune.json").read_text())
    # anchor + grid (γ0 η0.5) + refinement around it (γ0.2 η0.5, γ0 η0.3, γ0 η0.7)
    assert [t["name"] for t in result["tried"]] == [
        "anchor γ0 η0",
        "γ0 η0.5",
        "γ0.2 η0.5",
        "γ0 η0.3",
        "γ0 η0.7",
    ]
    assert result["winner"] != "anchor γ0 η0" and "winner:" in printed
    anchor = result["results"]["anchor γ0 η0"]
    assert len(anchor["ci"]["distinct_2"]) == 2 and "completion_rate" in anchor
    assert (out / "report.html").read_text().count("data:image/png;base64,") >= 1
    assert len(read_jsonl(out / "results.jsonl")) == 5

    recipe = json.loads((out / "steer_tuned.json").read_text())
    assert (
        recipe["config"]["gamma"] == result["winner_setting"]["gamma"]
        and recipe["prompt"] == "Write a question:"
    )
    assert recipe["config"]["negatives_from"] == "synthetic"  # the draw it was measured with, pinned
    assert recipe["config"]["spelling_min_p"] == 0.5  # and the spelling floor
    assert recipe["config"]["known_words"] is True  # and the known-words guard
    synth = tmp_path / "synth.jsonl"
    assert (
        main(
            [
                "generate",
                "--config",
                str(out / "steer_tuned.json"),
                "--n",
                "2",
                "--out",
                str(synth),
                "--quiet",
            ]
        )
        == 0
    )
    assert len(read_jsonl(synth)) == 2

    # the integrations load the same recipe: an engine with the winner's settings and the pool
    from langchain_steer import SteerLLM

    from steer_plugins.apps.tune import load_tuned

    tuned = load_tuned(out / "steer_tuned.json")
    try:
        winner = result["winner_setting"]
        assert {k: getattr(tuned.engine.config, k) for k in winner} == winner
        assert tuned.prompt == "Write a question:" and len(tuned.engine.pool) > 0
        assert isinstance(SteerLLM(engine=tuned.engine, seed=0).invoke(tuned.prompt), str)
    finally:
        tuned.engine.close()
    with pytest.raises(ValueError, match="not a `steer tune` recipe"):
        load_tuned(out / "tune.json")

    # rerun: every setting is skipped (same settings, same weights), nothing new is generated
    assert main(argv) == 0
    assert len(read_jsonl(out / "results.jsonl")) == 5
    assert json.loads((out / "tune.json").read_text())["winner"] == result["winner"]


def test_tune_user_errors(tmp_path, real_file, capsys):
    assert main(["tune", real_file, "--out", str(tmp_path), "--fidelity-metrics", "bleurt"]) == 2
    assert "unknown metric" in capsys.readouterr().err
    assert main(["tune", real_file, "--out", str(tmp_path), "--etas", "a,b"]) == 2
    assert "not a number" in capsys.readouterr().err


def test_tune_time_budget_skips_what_does_not_fit_and_a_rerun_adds_it(
    tmp_path, tiny_model_dir, real_file, capsys
):
    out = tmp_path / "tuned"
    argv = ["tune", real_file, "--expert", tiny_model_dir, "--prompt", "Write a question:", "--out", str(out),
            "--n", "4", "--max-new-tokens", "5", "--num-negatives", "2", "--seed", "0", "--gammas", "0",
            "--etas", "0.3,0.5,0.7", "--alphas", "none", "--no-whole-words", "--rounds", "1",
            "--fidelity-metrics", "none", "--diversity-metric", "distinct_2", "--invented-slack", "100",
            "--resamples", "10", "--quiet"]  # fmt: skip
    # a budget of 6 ms: the anchor and the first grid setting run, nothing else is started
    assert main([*argv, "--max-minutes", "0.0001"]) == 0
    assert "not tried within --max-minutes" in capsys.readouterr().out
    first = json.loads((out / "tune.json").read_text())
    assert [t["name"] for t in first["tried"]] == ["anchor γ0 η0", "γ0 η0.3"]
    assert first["skipped"][:2] == ["γ0 η0.5", "γ0 η0.7"] and first["time_budget_s"] == pytest.approx(0.006)
    assert "not tried within the time budget" in (out / "report.html").read_text()
    done = read_jsonl(out / "results.jsonl")
    assert len(done) == 2
    # no limit: the skipped settings run, the two finished ones are reused as they are
    assert main([*argv, "--max-minutes", "0"]) == 0
    second = json.loads((out / "tune.json").read_text())
    assert second["skipped"] == [] and second["time_budget_s"] is None
    assert {"γ0 η0.5", "γ0 η0.7"} <= {t["name"] for t in second["tried"]}
    again = read_jsonl(out / "results.jsonl")
    assert again[:2] == done and len({r["key"] for r in again}) == len(again) >= 4
    assert main([*argv, "--max-minutes", "-1"]) == 2


def test_the_product_default_setting_is_tried_first():
    from steer_plugins import SteerConfig
    from steer_plugins.apps.tune import default_first

    cfg = SteerConfig()
    grid = initial_grid([0.0, 0.2], [0.4, cfg.eta, 1.5], [0.05, 0.1], [True])  # default in the middle
    assert grid[0] != Setting(cfg.gamma, cfg.eta, cfg.alpha, cfg.whole_words)
    ordered = default_first(grid)
    assert ordered[0] == Setting(cfg.gamma, cfg.eta, cfg.alpha, cfg.whole_words) and set(ordered) == set(grid)
    assert default_first(grid[:2]) == grid[:2]  # no default in the grid: the order is kept
    assert default_first(initial_grid())[0] == ordered[0]  # the shipped grid holds the default
