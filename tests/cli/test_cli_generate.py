"""`steer generate` → `steer evaluate` on a tiny model loaded by folder; resuming; config files."""

from __future__ import annotations

import json
import os

import pytest

from steer_plugins import SteerConfig, SteerEngine
from steer_plugins.apps.cli import build_parser, config_flag_specs, main
from steer_plugins.apps.cli._common import UNSET
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
    # the same rows as the uninterrupted run: same seeds, and the same texts (the pool a resumed run
    # draws negatives from holds what the uninterrupted one held at that point, in the same order)
    assert [(r["seed"], r["text"]) for r in rows] == [(r["seed"], r["text"]) for r in _rows(full)]
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


@pytest.mark.parametrize("command", ["demo", "generate", "augment", "finetune", "evaluate", "sweep"])
def test_every_command_help_teaches_with_an_example(command, capsys):
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert "example" in text and f"steer {command}" in text


# ------------------------------------------------------------------ settings record (issue 10, item 9)


def _gen(gen_args, out, *extra):
    return main(["generate", *gen_args, "--chunk-size", "2", "--out", str(out), *extra])


def test_rerun_with_other_settings_is_refused_naming_the_fields(tmp_path, gen_args, capsys):
    out = tmp_path / "synth.jsonl"
    assert _gen(gen_args, out, "--n", "2", "--gamma", "0.2") == 0
    meta = json.loads((tmp_path / "synth.jsonl.meta.json").read_text())
    assert meta["settings"]["config"]["gamma"] == 0.2 and meta["settings"]["seed"] == 0
    name = meta["settings"]["model"]  # the folder and a hash of its weights
    assert (
        name.split("@")[0] == gen_args[1]
        and len(name.split("@")[1]) == 16
        and meta["settings"]["fingerprint"]
    )
    capsys.readouterr()

    # caught before any model loads: the expert given here does not even exist
    args = [a for a in gen_args]
    args[args.index("--expert") + 1] = str(tmp_path / "no-such-model")
    assert _gen(args, out, "--n", "4", "--gamma", "0.5", "--seed", "1") == 2
    err = capsys.readouterr().err
    assert "gamma: 0.2 in the file, 0.5 now" in err and "seed: 0 in the file, 1 now" in err
    assert "--out elsewhere" in err and "--overwrite" in err and "Traceback" not in err
    assert len(_rows(out)) == 2  # nothing appended

    assert _gen(gen_args, out, "--n", "3", "--gamma", "0.5", "--overwrite") == 0
    rows = _rows(out)
    assert len(rows) == 3 and [r["seed"] for r in rows] == [0, 1, 2]  # started over
    assert json.loads((tmp_path / "synth.jsonl.meta.json").read_text())["settings"]["config"]["gamma"] == 0.5


def test_rerun_after_retraining_the_model_in_place_or_with_another_prompt_is_refused(
    tmp_path, gen_args, tiny_model_dir, tiny_tok, capsys
):
    import shutil

    from steer_plugins.testing import tiny_model

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    args = list(gen_args)
    args[args.index("--expert") + 1] = str(model)
    out = tmp_path / "synth.jsonl"
    assert _gen(args, out, "--n", "2") == 0
    old = json.loads((tmp_path / "synth.jsonl.meta.json").read_text())["settings"]["model"]
    tiny_model("llama", tiny_tok, seed=7).save_pretrained(model)  # same folder, new weights
    capsys.readouterr()
    assert _gen(args, out, "--n", "4") == 2
    err = capsys.readouterr().err
    assert f"model: {old!r} in the file, '{model}@" in err and len(_rows(out)) == 2
    args[args.index("--prompt") + 1] = "Write a statement:"
    assert _gen(args, out, "--n", "4") == 2
    assert "prompt: 'Write a question:' in the file, 'Write a statement:' now" in capsys.readouterr().err


def test_rows_without_a_settings_record_are_not_appended_to(tmp_path, gen_args, capsys):
    out = tmp_path / "synth.jsonl"
    out.write_text('{"text": "made elsewhere"}\n')
    assert _gen(gen_args, out, "--n", "2") == 2
    assert "no settings record" in capsys.readouterr().err and len(_rows(out)) == 1


def test_two_spellings_of_one_path_are_one_file(tmp_path, gen_args, capsys):
    import fcntl

    (tmp_path / "f").mkdir()
    plain, dotted = tmp_path / "f" / "x.jsonl", tmp_path / "f" / ".." / "f" / "x.jsonl"
    assert _gen(gen_args, plain, "--n", "2") == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert _gen(gen_args, dotted, "--n", "2") == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["path"] == second["path"] == str(plain.resolve()) and second["skipped"] == 2
    with plain.open("ab") as held:  # another run is writing it: the other spelling waits its turn
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        assert _gen(gen_args, dotted, "--n", "4") == 2
    assert "being written by another process" in capsys.readouterr().err
    assert len(_rows(plain)) == 2


# ------------------------------------------------------------------ issue 14: prompts file, progress, help


def test_prompts_file_gives_one_row_per_prompt(tmp_path, gen_args, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Write about stars:\n\nWrite about moons:\nWrite about comets:\n")
    args = [a for a in gen_args if a not in ("--prompt", "Write a question:")]
    out = tmp_path / "p.jsonl"
    assert main(["generate", *args, "--prompts", str(prompts), "--raw-prompts", "--out", str(out)]) == 0
    rows = _rows(out)
    assert [r["prompt"] for r in rows] == ["Write about stars:", "Write about moons:", "Write about comets:"]
    assert main(["generate", *gen_args, "--prompts", str(prompts), "--out", str(tmp_path / "q.jsonl")]) == 2
    assert "drop --prompt" in capsys.readouterr().err


def test_one_progress_bar_over_the_whole_run(tmp_path, gen_args, capsys):
    args = [a for a in gen_args if a != "--quiet"]
    assert main(["generate", *args, "--n", "5", "--chunk-size", "2", "--out", str(tmp_path / "o.jsonl")]) == 0
    err = capsys.readouterr().err.replace("\r", "\n")
    bars = [line for line in err.splitlines() if "steer generate" in line and "row" in line]
    assert bars and "5/5" in bars[-1]  # one total across the three chunks
    assert all("/5 " in line for line in bars)  # never a per-chunk total
    assert "prompt/s" not in err and "steer:" not in err  # the engine's per-call bars are off


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("steer ")


@pytest.mark.parametrize("command", ["demo", "generate", "augment", "finetune"])
def test_every_flag_has_help_and_shows_its_default(command):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    help_text = " ".join(sub.format_help().split())
    for action in sub._actions:
        if not action.option_strings or action.dest == "help":
            continue
        assert action.help, f"{command} {action.option_strings[0]} has no help"
        if action.default is UNSET:  # a SteerConfig flag: "not given"; its help names the field's default
            assert "(default " in action.help, (command, action.option_strings[0])
        elif action.default not in (None, False):
            assert f"default: {action.default}" in help_text or f"default {action.default}" in help_text, (
                command,
                action.option_strings[0],
            )
    if command == "generate":
        assert "'paper' = (1+γ)" in help_text and "'cfg' = (1+γ+η)" in help_text  # --form says what they are


@pytest.mark.slow
def test_demo_output_is_not_flooded_by_loading_bars_or_warnings(tmp_path):
    """The real shipped expert: no GGUF conversion / weight-loading bars, no FutureWarning."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "steer_plugins.apps.cli", "demo", "--n", "2", "--max-new-tokens", "4",
           "--no-embeddings"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    err = done.stderr
    assert "Converting and de-quantizing" not in err and "Loading weights" not in err
    assert "FutureWarning" not in err
    from steer_plugins import SteerConfig
    from steer_plugins.apps.cli.demo import _describe

    # the demo runs the product's default settings and says which
    assert "loading the shipped expert" in err and f"STEER ({_describe(SteerConfig())})" in done.stdout


def test_quiet_loading_silences_loading_bars_and_future_warnings_then_restores_them():
    import warnings

    from transformers import modeling_gguf_pytorch_utils as gguf
    from transformers.utils import logging as hf_logging

    from steer_plugins.apps.cli._setup import quiet_loading

    original = gguf.tqdm
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_loading():
            assert not hf_logging.is_progress_bar_enabled()
            assert gguf.tqdm(range(3)).disable  # the GGUF conversion bar
            warnings.warn("deprecated", FutureWarning, stacklevel=1)
        warnings.warn("after", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["after"]
    assert gguf.tqdm is original and hf_logging.is_progress_bar_enabled()


def test_resumed_run_without_real_pool_matches_uninterrupted(tmp_path, tiny_model_dir, capsys):
    """With no real examples the run's outputs never join the pool, so a resumed run must not add the
    rows already written either (it did, which turned negative prompting on after the restart)."""
    args = ["--expert", tiny_model_dir, "--prompt", "Write a question:", "--max-new-tokens", "8",
            "--num-negatives", "2", "--seed", "3", "--quiet", "--chunk-size", "2"]  # fmt: skip
    full, part = tmp_path / "full.jsonl", tmp_path / "part.jsonl"
    assert main(["generate", *args, "--n", "6", "--out", str(full)]) == 0
    assert main(["generate", *args, "--n", "2", "--out", str(part)]) == 0
    assert main(["generate", *args, "--n", "6", "--out", str(part)]) == 0  # resumes after 2 rows
    capsys.readouterr()
    assert [(r["seed"], r["text"]) for r in _rows(part)] == [(r["seed"], r["text"]) for r in _rows(full)]


def test_bf16_negatives_is_part_of_a_files_identity(tmp_path, gen_args, capsys):
    """`--bf16-negatives` changes the rows, so a file made without it is never resumed with it."""
    out = tmp_path / "synth.jsonl"
    assert _gen(gen_args, out, "--n", "2") == 0
    exact = json.loads((tmp_path / "synth.jsonl.meta.json").read_text())["settings"]["fingerprint"]
    capsys.readouterr()
    assert _gen(gen_args, out, "--n", "3", "--bf16-negatives") == 2
    err = capsys.readouterr().err
    assert "fingerprint" in err and "--overwrite" in err and len(_rows(out)) == 2
    assert _gen(gen_args, out, "--n", "3", "--bf16-negatives", "--overwrite") == 0
    assert len(_rows(out)) == 3
    assert json.loads((tmp_path / "synth.jsonl.meta.json").read_text())["settings"]["fingerprint"] != exact
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"bf16_negatives": "yes"}))
    capsys.readouterr()
    assert _gen(gen_args, tmp_path / "other.jsonl", "--n", "1", "--config", str(cfg)) == 2
    assert "`bf16_negatives` (--bf16-negatives) must be true or false, got 'yes'" in capsys.readouterr().err


def test_max_cache_mb_bounds_memory_not_the_rows(tmp_path, gen_args, capsys):
    """`--max-cache-mb` only changes how many rows decode at once: the same rows, and a file made
    without it resumes with it."""
    free, bounded, resumed = tmp_path / "free.jsonl", tmp_path / "bounded.jsonl", tmp_path / "resumed.jsonl"
    assert _gen(gen_args, free, "--n", "4", "--chunk-size", "4", "--max-cache-mb", "none") == 0
    assert _gen(gen_args, bounded, "--n", "4", "--chunk-size", "4", "--max-cache-mb", "0.001") == 0
    assert [r["text"] for r in _rows(bounded)] == [r["text"] for r in _rows(free)]
    # a resumed run draws from a pool that holds the first rows, so only the first chunk is compared
    assert _gen(gen_args, resumed, "--n", "2", "--chunk-size", "4") == 0  # the default: "auto"
    assert _gen(gen_args, resumed, "--n", "4", "--chunk-size", "4", "--max-cache-mb", "0.001") == 0
    assert len(_rows(resumed)) == 4 and _rows(resumed)[:2] == _rows(free)[:2]
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"max_cache_mb": 0}))
    capsys.readouterr()
    assert _gen(gen_args, tmp_path / "other.jsonl", "--n", "1", "--config", str(cfg)) == 2
    assert "`max_cache_mb` (--max-cache-mb) must be a positive number of MB, 'auto' or 'none', got 0" in (
        capsys.readouterr().err
    )
    assert _gen(gen_args, tmp_path / "other.jsonl", "--n", "1", "--max-cache-mb", "lots") == 2
    assert "expected a number of MB, 'auto' or 'none', got 'lots'" in capsys.readouterr().err


def test_a_file_made_before_share_negatives_existed_still_resumes(tmp_path, gen_args, capsys):
    """Config fields added later (`share_negatives`, `negatives_from`), left off, match a file that
    does not record them; turned on, each is a named difference. A file from before `negatives_from`
    drew from the whole pool, so the default ('synthetic') does not resume it: `--negatives-from
    pool` does."""
    out = tmp_path / "synth.jsonl"
    assert _gen(gen_args, out, "--n", "2", "--negatives-from", "pool") == 0
    meta_file = tmp_path / "synth.jsonl.meta.json"
    meta = json.loads(meta_file.read_text())
    assert meta["settings"]["config"].pop("share_negatives") is False
    assert meta["settings"]["config"].pop("negatives_from") == "pool"
    meta_file.write_text(json.dumps(meta))  # as written before the fields existed
    assert _gen(gen_args, out, "--n", "3", "--negatives-from", "pool") == 0 and len(_rows(out)) == 3
    capsys.readouterr()
    meta_file.write_text(json.dumps(meta))
    assert _gen(gen_args, out, "--n", "4", "--negatives-from", "pool", "--share-negatives") == 2
    assert "share_negatives: None in the file, True now" in capsys.readouterr().err
    assert _gen(gen_args, out, "--n", "4") == 2  # today's default draws from the outputs
    assert "negatives_from: None in the file, 'synthetic' now" in capsys.readouterr().err


def test_none_on_the_command_line_switches_an_optional_field_off():
    # `--alpha none` must override (None is a value here, not "flag not given")
    import argparse

    from steer_plugins.apps.cli._common import add_config_flags, make_config, split_settings

    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    _, fields = split_settings(parser.parse_args(["--spelling-min-p", "none", "--alpha", "off"]), {})
    cfg = make_config(fields)
    assert cfg.spelling_min_p is None and cfg.alpha is None
    _, fields = split_settings(parser.parse_args([]), {"alpha": 0.1})  # nothing given: the file's value
    assert make_config(fields).alpha == 0.1 and make_config(fields).spelling_min_p == 0.5
