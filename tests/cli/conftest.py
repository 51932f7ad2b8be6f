"""Fixtures for the `steer` CLI tests: a tiny model saved to disk (loaded by folder) and small data files."""

from __future__ import annotations

import json

import pytest

from steer_plugins.testing import TINY_CORPUS, tiny_model, tiny_tokenizer


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny Llama + tokenizer written with save_pretrained, so the CLI loads it like any folder."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tok = tiny_tokenizer()
    tiny_model("llama", tok, seed=1).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture
def real_file(tmp_path):
    """The tiny corpus as JSONL (the "real" examples)."""
    path = tmp_path / "real.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in TINY_CORPUS), encoding="utf-8")
    return str(path)


@pytest.fixture
def gen_args(tiny_model_dir, real_file):
    """Fast `steer generate` flags on the tiny model."""
    return [
        "--expert", tiny_model_dir, "--pool", real_file, "--prompt", "Write a question:",
        "--max-new-tokens", "6", "--num-negatives", "2", "--seed", "0", "--quiet",
    ]  # fmt: skip
