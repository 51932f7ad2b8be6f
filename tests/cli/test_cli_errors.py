"""Bad input gives one clear line on stderr and exit status 2 (no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys

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
