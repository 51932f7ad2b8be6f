"""Tiny expert/base models saved as safetensors folders (loaded by path, the realistic route)."""

from __future__ import annotations

import pytest

from steer_plugins.testing import save_tiny_pair

TOPICS = ["comets", "pulsars", "quasars", "nebulae", "exoplanets", "black holes", "meteors", "galaxies"]


@pytest.fixture(scope="session")
def tiny_folders(tmp_path_factory):
    """(expert_dir, base_dir): two seeds of a tiny Llama sharing one tokenizer, saved with save_pretrained."""
    return save_tiny_pair(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture
def topics_ds():
    import datasets

    return datasets.Dataset.from_dict(
        {"topic": TOPICS, "text": [f"A real note about {t} and the night sky." for t in TOPICS]}
    )
