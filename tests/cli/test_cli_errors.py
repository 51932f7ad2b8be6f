"""Bad input gives one clear line on stderr and exit status 2 (no traceback)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from steer_plugins.apps.cli import main


def _err(capsys) -> str:
    return capsys.readouterr().err


def test_missing_file(tmp_path, real_file, capsys):
    missing = tmp_path / "nope.jsonl"
    assert main(["evaluate", "--reference", real_file, str(missing)]) == 2
    err = _err(capsys)
    assert "not found" in err and str(missing) in err and "Traceback" not in err


def test_malformed_jsonl_names_the_line(tmp_path, real_file, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "also fine"}\n{"text": "broken\n')
    assert main(["evaluate", "--reference", real_file, str(bad)]) == 2
    err = _err(capsys)
    assert "line 3" in err and str(bad) in err


def test_unknown_config_key(tmp_path, capsys):
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"n": 2, "out": str(tmp_path / "o.jsonl"), "gamme": 0.3}))
    assert main(["generate", "--config", str(cfg)]) == 2
    err = _err(capsys)
    assert "unknown config key(s) ['gamme']" in err and "gamma" in err


def test_empty_reference_set(tmp_path, real_file, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    assert main(["evaluate", "--reference", str(empty), real_file]) == 2
    assert "has no examples" in _err(capsys)


def test_invalid_decoding_value_and_grid(tmp_path, gen_args, real_file, capsys):
    assert (
        main(["generate", *gen_args, "--n", "1", "--out", str(tmp_path / "o.jsonl"), "--top-p", "1.5"]) == 2
    )
    assert "top_p" in _err(capsys)
    assert main(["sweep", "--reference", real_file, "--out", str(tmp_path / "s"), "--gammas", "0,x"]) == 2
    assert "--gammas" in _err(capsys)


def test_unknown_metric(tmp_path, real_file, capsys):
    assert main(["evaluate", "--reference", real_file, real_file, "--metrics", "bleu"]) == 2
    assert "unknown metric" in _err(capsys)


def test_console_script_help():
    exe = [sys.executable, "-m", "steer_plugins.apps.cli"]
    try:
        out = subprocess.run(["steer", "--help"], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:  # console script not on PATH (e.g. not pip-installed): same entry point
        out = subprocess.run([*exe, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for command in ("demo", "generate", "finetune", "evaluate", "sweep"):
        assert command in out.stdout
    assert "steer demo" in out.stdout


# ------------------------------------------------------------------ issue 10, items 13 and 14


def _one_line_error(capsys, code: int, *needles: str) -> str:
    """Exit 2, no traceback, one line on stderr containing every needle."""
    err = _err(capsys)
    lines = [line for line in err.splitlines() if line.startswith("steer ")]
    assert code == 2, err
    assert "Traceback" not in err and len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _config(tmp_path, text: str) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("n: [1, 2\nout: o.jsonl\n", ["run.yaml, line", "malformed YAML"]),
        ("n: [1, 2]\nout: o.jsonl\n", ["`n` (--n) must be a positive integer", "[1, 2]"]),
        ("n: 2.7\nout: o.jsonl\n", ["`n` (--n) must be a positive integer", "2.7"]),
        ("n: 2\nout: 123\n", ["`out` (--out) must be a string", "123"]),
        ("n: 2\nout: o.jsonl\npool: 7\n", ["`pool` (--pool) must be a string"]),
        ("n: 2\nout: o.jsonl\nexpert: 5\n", ["`expert` (--expert) must be a string"]),
        ("n: 2\nout: o.jsonl\nprompt: [a, b]\n", ["`prompt` (--prompt) must be a string", "--prompts FILE"]),
        ("n: 2\nout: o.jsonl\nchunk_size: 0\n", ["`chunk_size` (--chunk-size) must be a positive integer"]),
    ],
)
def test_bad_config_values_are_one_line_errors(tmp_path, capsys, text, needles):
    code = main(["generate", "--config", _config(tmp_path, text)])
    _one_line_error(capsys, code, *needles)
    assert not (tmp_path / "o.jsonl").exists()


def test_chunk_size_zero_flag_is_an_error(tmp_path, gen_args, capsys):
    code = main(["generate", *gen_args, "--n", "2", "--chunk-size", "0", "--out", str(tmp_path / "o.jsonl")])
    _one_line_error(capsys, code, "chunk_size", "positive integer")


def test_non_utf8_input_names_file_and_line(tmp_path, gen_args, capsys):
    pool = tmp_path / "pool.jsonl"
    pool.write_bytes(b'{"text": "fine?"}\n{"text": "caf\xe9?"}\n')
    args = [a for a in gen_args if a != gen_args[gen_args.index("--pool") + 1]]
    args.remove("--pool")
    code = main(["generate", *args, "--pool", str(pool), "--n", "1", "--out", str(tmp_path / "o.jsonl")])
    _one_line_error(capsys, code, str(pool), "line 2", "not UTF-8")
    cfg = tmp_path / "run.yaml"
    cfg.write_bytes(b"n: 1\nout: o.jsonl\nprompt: caf\xe9\n")
    _one_line_error(capsys, main(["generate", "--config", str(cfg)]), str(cfg), "line 3", "not UTF-8")


def test_unsupported_output_suffix_is_reported_before_any_model_loads(tmp_path, capsys):
    # the expert does not exist: had it been loaded first, the error would name the model
    code = main(
        ["generate", "--expert", str(tmp_path / "no-model"), "--n", "1", "--out", str(tmp_path / "o.csv")]
    )
    _one_line_error(capsys, code, "o.csv", ".jsonl or .parquet")


def _read_only_dir(tmp_path):
    """A folder this process cannot create files in: chmod for a normal user; root ignores modes, so
    root gets /sys (read-only for root too); None when neither holds here."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    for candidate in (ro, Path("/sys")):
        try:
            (candidate / "probe.jsonl").open("a").close()
        except OSError:
            return candidate
        (candidate / "probe.jsonl").unlink()
    return None


def test_read_only_output_folder_is_reported_before_any_model_loads(tmp_path, capsys):
    folder = _read_only_dir(tmp_path)
    if folder is None:
        pytest.skip("no read-only folder here (root on a machine without a read-only /sys)")
    out = folder / "synth.jsonl"
    code = main(["generate", "--expert", str(tmp_path / "no-model"), "--n", "1", "--out", str(out)])
    _one_line_error(capsys, code, "cannot write", str(out))


def test_full_disk_is_one_line(tmp_path, gen_args, monkeypatch, capsys):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)  # every durable write (rows, settings record) hits a full disk
    code = main(["generate", *gen_args, "--n", "2", "--out", str(tmp_path / "o.jsonl")])
    _one_line_error(capsys, code, "No space left on device", "disk is full", "rerun")


def _copy_model(tiny_model_dir, tmp_path, name="model"):
    dst = tmp_path / name
    shutil.copytree(tiny_model_dir, dst)
    return dst


def test_corrupt_safetensors_is_one_line(tmp_path, tiny_model_dir, gen_args, capsys):
    broken = _copy_model(tiny_model_dir, tmp_path)
    weights = next(broken.glob("*.safetensors"))
    weights.write_bytes(b"\x00garbage, not a safetensors file")
    args = gen_args[2:]  # without --expert
    code = main(["generate", "--expert", str(broken), *args, "--n", "1", "--out", str(tmp_path / "o.jsonl")])
    _one_line_error(capsys, code, str(weights), "not a valid safetensors file")

    truncated = _copy_model(tiny_model_dir, tmp_path, "truncated")  # header fine, tensors cut short
    weights = next(truncated.glob("*.safetensors"))
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    code = main(
        ["generate", "--expert", str(truncated), *args, "--n", "1", "--out", str(tmp_path / "o.jsonl")]
    )
    _one_line_error(capsys, code, "could not load the model", str(truncated))


def test_broken_lora_configs_are_one_line(tmp_path, gen_args, capsys):
    args = gen_args[2:]
    selfish = tmp_path / "selfish-lora"
    selfish.mkdir()
    (selfish / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "base_model_name_or_path": str(selfish)})
    )
    code = main(["generate", "--expert", str(selfish), *args, "--n", "1", "--out", str(tmp_path / "o.jsonl")])
    _one_line_error(capsys, code, "names itself as its base")

    baseless = tmp_path / "baseless-lora"
    baseless.mkdir()
    (baseless / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    code = main(
        ["generate", "--expert", str(baseless), *args, "--n", "1", "--out", str(tmp_path / "o.jsonl")]
    )
    _one_line_error(capsys, code, "no `base_model_name_or_path`", "--base")
