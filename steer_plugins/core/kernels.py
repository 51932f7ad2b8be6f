"""oneDNN for the engine's fp32 linear layers on CPUs where PyTorch's default (MKL) is slow.

PyTorch's CPU build multiplies fp32 `nn.Linear` with MKL. MKL picks its fastest kernels only on
Intel CPUs; on this project's AMD EPYC machines with AVX-512 it runs at about a quarter of the
core's peak, while oneDNN (also in every PyTorch CPU build, `torch.ops.mkldnn._linear_pointwise`)
reaches it: 57 vs 212 GFLOP/s on one core for a SmolLM2 MLP projection of a prefill chunk
(3824 × 576 → 1536), 2× for the 24-row decode step. Both compute in fp32; the results differ by
summation order only (1.4e-4 vs 5.8e-5 absolute against fp64 on that projection).

`install(model)` makes every large `nn.Linear` a `OneDNNLinear` (same weights), which calls oneDNN only
inside `enabled(True)` on the calling thread (a `RowBatch` forward), for fp32 CPU inputs of at least
`MIN_ROWS` rows outside autocast, and `nn.Linear`'s own forward otherwise: another thread using the
same model (plain `generate()`, a second engine) keeps PyTorch's kernels. `faster_than_default()`
times both on one projection of the model's shape and says whether oneDNN pays on this machine
(it does not on CPUs where MKL is at its best, and for 1-row GEMVs, which stay with MKL).
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time

import torch

__all__ = ["MIN_ROWS", "OneDNNLinear", "available", "enabled", "faster_than_default", "install"]

MIN_ROWS = 8  # below this many rows (decode steps of 1-4 rows) MKL's GEMV path is as fast or faster
MIN_FEATURES = 128  # LoRA's rank-r projections and other small layers keep nn.Linear
_local = threading.local()


def available() -> bool:
    """Whether this PyTorch build has oneDNN's linear op."""
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _use(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        getattr(_local, "on", False)
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.device.type == "cpu"
        and x.dim() >= 2
        and x.numel() >= MIN_ROWS * x.shape[-1]
        and not torch.is_autocast_enabled("cpu")
    )


class OneDNNLinear(torch.nn.Linear):
    """An `nn.Linear` whose forward calls oneDNN inside `enabled(True)` (see the module docstring);
    `install` turns a model's large `nn.Linear` layers into this class in place (same weights, same
    state dict, still an `nn.Linear`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _use(x, self.weight):
            return _onednn(x, self.weight, self.bias)
        return super().forward(x)


def install(model: torch.nn.Module, min_features: int = MIN_FEATURES) -> int:
    """Make `model`'s `nn.Linear` layers with at least `min_features` inputs and outputs
    `OneDNNLinear` (idempotent); returns how many layers are. Outside `enabled(True)` they run
    exactly as before."""
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and min(module.in_features, module.out_features) >= min_features:
            module.__class__ = OneDNNLinear
        count += type(module) is OneDNNLinear
    return count


@contextlib.contextmanager
def enabled(on: bool):
    """Use oneDNN in wrapped layers on this thread for the enclosed forward (when `on`)."""
    outer = getattr(_local, "on", False)
    _local.on = on
    try:
        yield
    finally:
        _local.on = outer


@functools.cache
def faster_than_default(in_features: int, out_features: int, threads: int, rows: int = 64) -> bool:
    """Whether oneDNN beats `nn.functional.linear` by at least 15 % on a `(rows, in) → out` fp32
    projection with this many torch threads (a few ms of timing, cached), with results within fp32
    rounding of each other."""
    if not available():
        return False
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, in_features, generator=gen)
    w = torch.randn(out_features, in_features, generator=gen) / in_features**0.5
    try:
        fast = _onednn(x, w, None)
    except RuntimeError:  # a build whose op refuses these inputs
        return False
    if not torch.allclose(fast, torch.nn.functional.linear(x, w), rtol=1e-4, atol=1e-4):
        return False

    def best(fn) -> float:
        times = []
        for _ in range(7):
            start = time.perf_counter()
            for _ in range(3):
                fn()
            times.append(time.perf_counter() - start)
        return min(times)

    with torch.inference_mode():
        default = best(lambda: torch.nn.functional.linear(x, w))
        onednn = best(lambda: _onednn(x, w, None))
    return onednn * 1.15 < default
