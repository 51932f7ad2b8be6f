"""`steer finetune` writes an adapter `steer generate` loads; `steer sweep` on a 2×2 grid writes its PNGs."""

from __future__ import annotations

import json

from steer_plugins.apps.cli import main
from steer_plugins.apps.data_io import read_jsonl


def test_finetune_adapter_loads_in_generate(tmp_path, tiny_model_dir, real_file, capsys):
    adapter = tmp_path / "lora"
    code = main(["finetune", real_file, "--base", tiny_model_dir, "--out", str(adapter), "--steps", "2",
                 "--batch-size", "2", "--instruction", "Write a question.", "--quiet"])  # fmt: skip
    assert code == 0
    assert (adapter / "adapter_model.safetensors").is_file()
    recipe = json.loads((adapter / "steer_recipe.json").read_text())
    assert recipe["training"]["steps"] == 2 and "Write a question." in recipe["training"]["prompt"]
    assert recipe["heldout"]["num_texts"] == 1  # --holdout 0.1 of 9 examples
    capsys.readouterr()

    out = tmp_path / "synth.jsonl"
    code = main(["generate", "--expert", str(adapter), "--pool", real_file, "--n", "3", "--max-new-tokens", "4",
                 "--num-negatives", "2", "--seed", "1", "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0 and len(read_jsonl(out)) == 3
    # the adapter's recorded training prompt is reused
    assert "Write a question." in capsys.readouterr().err


def test_sweep_2x2_writes_heatmaps_and_pareto(tmp_path, gen_args, real_file, capsys):
    out = tmp_path / "sweep"
    metrics = "normalised_3grams,diversity,distinct_2,self_bleu"
    code = main(["sweep", *gen_args, "--reference", real_file, "--out", str(out), "--gammas", "0,0.5",
                 "--etas", "0,0.5", "--n", "3", "--metrics", metrics, "--fidelity-metric", "self_bleu"])  # fmt: skip
    assert code == 0
    for name in ("heatmap_normalised_3grams", "heatmap_diversity", "heatmap_distinct_2", "heatmap_self_bleu",
                 "pareto"):  # fmt: skip
        png = out / f"{name}.png"
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
    result = json.loads((out / "sweep.json").read_text())
    assert set(result["results"]) == {"g0_e0", "g0_e0.5", "g0.5_e0", "g0.5_e0.5"}
    assert all(len(read_jsonl(out / f"{cell}.jsonl")) == 3 for cell in result["results"])
    assert result["pareto_front"] and "Pareto front" in capsys.readouterr().out


def test_pareto_front_by_hand():
    from steer_plugins.apps.sweep import pareto_front

    pts = [("a", 0.9, 0.1), ("b", 0.5, 0.5), ("c", 0.4, 0.4), ("d", 0.5, 0.2)]
    assert pareto_front(pts) == ["a", "b"]
