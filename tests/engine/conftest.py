"""`--device`: the device the engine tests that take the `device` fixture run on (default cpu).

python -m pytest tests/engine --device cuda      # what benchmarks/gpu_check.sh runs on a GPU machine
"""

from __future__ import annotations

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="torch device for the engine tests (cpu, cuda, cuda:1)")


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    # a session started above tests/engine never saw pytest_addoption here: default to cpu
    dev = torch.device(request.config.getoption("--device", default="cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("--device cuda given but CUDA is not available")
    return dev
