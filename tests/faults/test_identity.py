"""Identities (cache keys, checkpoint keys, model strings) follow the weights, not the path."""

from __future__ import annotations

import shutil

import torch

from steer_plugins import SteerEngine
from steer_plugins.core.sources import weights_fingerprint
from steer_plugins.testing import tiny_model


def test_retrained_file_in_place_changes_the_fingerprint(tmp_path):
    src = "steer_plugins/assets/adapters/hypotheses-lora"
    folder = tmp_path / "adapter"
    shutil.copytree(src, folder)
    before = weights_fingerprint(folder)
    assert weights_fingerprint(folder) == before  # stable
    weights = folder / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # "retrained": same path, same size, other weights
    weights.write_bytes(bytes(data))
    assert weights_fingerprint(folder) != before


def test_engine_identity_follows_in_memory_weights(tiny_tok):
    a, same = tiny_model("llama", tiny_tok, seed=1), tiny_model("llama", tiny_tok, seed=1)
    e1, e2 = SteerEngine(a, tokenizer=tiny_tok), SteerEngine(same, tokenizer=tiny_tok)
    assert e1.fingerprint() == e2.fingerprint() and e1.name == e2.name  # no id() in the identity
    with torch.no_grad():
        next(same.parameters()).add_(0.01)
    e3 = SteerEngine(same, tokenizer=tiny_tok)
    assert e3.fingerprint() != e1.fingerprint()
    for e in (e1, e2, e3):
        e.close()
