"""DSPy fixtures: a hermetic in-memory DSPy cache, and STEER LMs over the tiny engines."""

from __future__ import annotations

import dspy
import pytest
import torch
from dspy.clients.cache import Cache
from dspy_steer import FieldByFieldAdapter, steer_lm

# Hidden-size-32 models gain nothing from intra-op threads; on a shared 2-core machine extra threads
# oversubscribe the CPU and one 16-token call goes from ~0.07 s to ~2 s.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def hermetic_dspy(tmp_path):
    """A fresh memory-only DSPy cache and clean settings per test (nothing on disk is read or written)."""
    saved = dspy.cache
    dspy.cache = Cache(enable_disk_cache=False, enable_memory_cache=True, disk_cache_dir=str(tmp_path))
    with dspy.context(lm=None, adapter=None, track_usage=False):
        yield
    dspy.cache = saved


@pytest.fixture
def lm(tiny_engine):
    """A STEER LM over the tiny Llama pair; add_to_pool off so call order cannot change results."""
    return steer_lm(engine=tiny_engine, add_to_pool=False, seed=7, max_new_tokens=8, cache=False)


@pytest.fixture
def adapter():
    return FieldByFieldAdapter()
