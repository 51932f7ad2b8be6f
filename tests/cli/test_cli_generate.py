"""`steer generate` → `steer evaluate` on a tiny model loaded by folder; resuming; config files."""

from __future__ import annotations

import json

import pytest

from steer_plugins import SteerConfig, SteerEngine
from steer_plugins.apps.cli import config_flag_specs, main
from steer_plugins.apps.data_io import read_jsonl
from steer_plugins.apps.eval import METRICS


def _rows(path):
    return read_jsonl(path)


def test_generate_then_evaluate_round_trip(tmp_path, gen_args, real_file, capsys):
    out = tmp_path / "synth.jsonl"
    assert main(["generate", *gen_args, "--n", "5", "--chunk-size", "2", "--out", str(out)]) == 0
    rows = _rows(out)
    assert len(rows) == 5 and all(isinstance(r["text"], str) and r["tokens"] <= 6 for r in rows)
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["generated"] == 5 and stats["skipped"] == 0 and stats["tokens_per_s"] > 0

    scores = tmp_path / "scores.json"
    code = main(["evaluate", "--reference", real_file, str(out), "--metrics", "normalised_3grams,diversity",
                 "--json", str(scores)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "sample size used: 5" in printed and "normalised_3grams" in printed
    data = json.loads(scores.read_text())
    assert list(data) == [str(out)] and set(data[str(out)]) == {
        "sample_size",
        "normalised_3grams",
        "diversity",
    }


def test_evaluate_all_nine_metrics_and_plain_text_input(tmp_path, real_file, capsys):
    from steer_plugins.testing import TINY_CORPUS

    synth = tmp_path / "synth.txt"  # plain text, one example per line
    synth.write_text("\n".join(t.replace("?", " today?") for t in TINY_CORPUS) + "\n")
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"text": t}) + "\n" for t in TINY_CORPUS[:6]))
    scores = tmp_path / "scores.json"
    assert main(["evaluate", "--reference", real_file, str(synth), str(other), "--json", str(scores)]) == 0
    data = json.loads(scores.read_text())
    assert set(data) == {str(synth), str(other)}
    for row in data.values():
        assert set(METRICS) <= set(row) and row["sample_size"] == 6  # equal sizes: the smallest set
    assert "sample size used: 6" in capsys.readouterr().out


def test_interrupted_generate_resumes_without_losing_rows(tmp_path, gen_args, monkeypatch, capsys):
    out = tmp_path / "synth.jsonl"
    full = tmp_path / "full.jsonl"
    assert main(["generate", *gen_args, "--n", "6", "--chunk-size", "2", "--out", str(full)]) == 0

    real_generate = SteerEngine.generate
    calls = []

    def flaky(self, *a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user hits Ctrl-C during the second chunk
        return real_generate(self, *a, **kw)

    monkeypatch.setattr(SteerEngine, "generate", flaky)
    assert main(["generate", *gen_args, "--n", "6", "--chunk-size", "2", "--out", str(out)]) == 130
    assert "rerun the same command to resume" in capsys.readouterr().err
    first = _rows(out)
    assert len(first) == 2
    monkeypatch.setattr(SteerEngine, "generate", real_generate)

    with out.open("a") as f:  # a crash mid-write leaves a partial line: it is dropped, not counted
        f.write('{"text": "half a ro')
    assert main(["generate", *gen_args, "--n", "6", "--chunk-size", "2", "--out", str(out)]) == 0
    rows = _rows(out)
    assert len(rows) == 6 and rows[:2] == first
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["skipped"] == 2
    # same seeds per row as the uninterrupted run
    assert [r["seed"] for r in rows] == [r["seed"] for r in _rows(full)]
    # already complete: nothing to do
    assert main(["generate", *gen_args, "--n", "6", "--out", str(out)]) == 0
    assert len(_rows(out)) == 6


def test_config_file_yaml_and_flag_override(tmp_path, tiny_model_dir, real_file):
    out = tmp_path / "synth.parquet"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"expert: {tiny_model_dir}\npool: {real_file}\nprompt: 'Write:'\nn: 3\nout: {out}\n"
        "gamma: 0.4\nconfig:\n  eta: 0.2\n  num_negatives: 2\n  max_new_tokens: 4\n  stop: ['?']\n"
    )
    assert main(["generate", "--config", str(cfg), "--n", "4", "--quiet"]) == 0
    import pyarrow.parquet as pq

    assert pq.read_table(out).num_rows == 4


def test_every_steer_config_field_has_a_flag():
    flags = {flag for flag, _ in config_flag_specs()}
    assert flags == {"--" + f.replace("_", "-") for f in SteerConfig.model_fields}


def test_prompted_expert_gives_the_base_branch_the_plain_instruction(
    tmp_path, gen_args, real_file, monkeypatch
):
    seen = {}
    real_generate = SteerEngine.generate

    def spy(self, prompts, *a, **kw):
        seen["prompt"], seen["base_prompts"] = prompts[0], kw.get("base_prompts")
        return real_generate(self, prompts, *a, **kw)

    monkeypatch.setattr(SteerEngine, "generate", spy)
    args = [a for a in gen_args if a not in ("--prompt", "Write a question:")]
    out = tmp_path / "p.jsonl"
    assert main(["generate", *args, "--prompted-expert", real_file, "--num-shots", "2", "--n", "2",
                 "--out", str(out)]) == 0  # fmt: skip
    assert len(_rows(out)) == 2
    real = [row["text"] for row in read_jsonl(real_file)]
    assert sum(t in seen["prompt"] for t in real) == 2  # the expert branch sees the examples
    assert seen["base_prompts"] and not any(t in seen["base_prompts"][0] for t in real)  # the base does not


@pytest.mark.parametrize("command", ["demo", "generate", "finetune", "evaluate", "sweep"])
def test_every_command_help_teaches_with_an_example(command, capsys):
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert "example" in text and f"steer {command}" in text
