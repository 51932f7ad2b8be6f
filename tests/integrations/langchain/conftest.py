"""LangChain fixtures: pytest-benchmark off for LangChain's standard suites, and their STEER engine."""

from __future__ import annotations

import pytest
import torch

from steer_plugins import SteerConfig, SteerEngine
from steer_plugins.testing import TINY_CORPUS

# Hidden-size-32 models gain nothing from intra-op threads (and the test machine is shared).
torch.set_num_threads(1)


@pytest.fixture
def benchmark(benchmark):
    """`--benchmark-disable` for these tests only: the standard suites' `test_init_time` /
    `test_stream_time` run their function once, untimed, instead of benchmarking rounds."""
    benchmark.disabled = True
    return benchmark


@pytest.fixture(scope="module")
def folder_engine(tiny_folders):
    """The tiny Llama pair loaded from its saved folders (the realistic route), pool seeded."""
    engine = SteerEngine(
        tiny_folders[0],
        tiny_folders[1],
        config=SteerConfig(max_new_tokens=16, num_negatives=3),
        pool=list(TINY_CORPUS),
    )
    yield engine
    engine.close()
