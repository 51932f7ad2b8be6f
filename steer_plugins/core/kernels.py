"""Faster fp32 linear layers for the engine's forwards on CPU: oneDNN where MKL is slow, and MKL
with pre-packed weights for decode steps. Both compute in fp32; results differ from PyTorch's
default by summation order only.

**oneDNN** (`onednn`). PyTorch's CPU build multiplies fp32 `nn.Linear` with MKL. MKL picks its
fastest kernels only on Intel CPUs; on this project's AMD EPYC machines with AVX-512 it runs at about
a quarter of the core's peak, while oneDNN (also in every PyTorch CPU build,
`torch.ops.mkldnn._linear_pointwise`) reaches it: 57 vs 212 GFLOP/s on one core for a SmolLM2 MLP
projection of a prefill chunk (3824 × 576 → 1536), 2× for the 24-row decode step (1.4e-4 vs 5.8e-5
absolute against fp64 on that projection).

**Packed MKL** (`packed`). A decode step multiplies a few rows (`PACK_MIN_ROWS` to `PACK_MAX_ROWS`:
each prompt's expert, base and negative rows) by every weight matrix, and MKL's GEMM repacks the whole weight
matrix into its blocked layout on every call. On the Intel Xeon (AMX) of this project's later
benchmarks a 24-row SmolLM2-135M step spends 124 ms in its linear layers (the LM head included),
81 ms with each weight packed once (`torch.ops.mkl._mkl_reorder_linear_weight`, the packing
torch.compile's CPU freezing uses); 4 rows (B=1, padded): 59 → 45 ms. A pack serves one row count:
from `PACK_STEP` rows on, rows are padded with zeros up to a multiple of it, so a batch that loses a
few rows keeps its pack. Each layer keeps one pack (about its weight's size again), remade when the
row bucket or the weight changes (a PEFT merge, a new adapter); `drop_packs(model)` frees them. The
decoder packs only while memory is not what limits the run (see `Decoder.insert`).

`install(model)` makes every large `nn.Linear` a `FastLinear` (same weights), which uses these kernels
only inside `enabled(...)` on the calling thread (a `RowBatch` forward), for fp32 CPU inputs outside
autocast, and `nn.Linear`'s own forward otherwise: another thread using the same model (plain
`generate()`, a second engine) keeps PyTorch's kernels. `faster_than_default()` and
`packed_faster_than_default()` time each on one projection of the model's shape and say whether it
pays on this machine.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time

import torch

__all__ = [
    "MIN_ROWS",
    "PACK_MAX_ROWS",
    "FastLinear",
    "available",
    "drop_packs",
    "enabled",
    "faster_than_default",
    "install",
    "packed_available",
    "packed_faster_than_default",
]

MIN_ROWS = 8  # below this many rows (decode steps of 1-4 rows) MKL's GEMV path is as fast or faster
MIN_FEATURES = 128  # LoRA's rank-r projections and other small layers keep nn.Linear
PACK_MIN_ROWS = 4  # below this MKL takes its GEMV-like path, which packing does not speed up
# Above this many rows the packs' memory (the weights' size again) is not spent: at B=32 and K=10
# the engine decodes 36-60 rows, where packing gains 23 % of the linear layers' time, and packing up
# to 64 rows measured 2.33x plain's peak RSS against 1.57x without (docs/benchmarks.md, session 13).
PACK_MAX_ROWS = 32
PACK_STEP = 8  # from 8 rows on, rows are padded up to a multiple of this: one pack per bucket


class _Switches(threading.local):
    """Which kernels `enabled(...)` turned on for the calling thread (both off on every other)."""

    onednn = False
    packed = False


_local = _Switches()
_pack_lock = threading.Lock()


def available() -> bool:
    """Whether this PyTorch build has oneDNN's linear op."""
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def packed_available() -> bool:
    """Whether this PyTorch build has MKL's packed fp32 linear ops."""
    return (
        bool(torch.backends.mkl.is_available())
        and hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight")
        and hasattr(torch.ops.mkl, "_mkl_linear")
    )


def _pack(weight: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.ops.mkl._mkl_reorder_linear_weight(weight.detach(), rows)


def _packed(
    x: torch.Tensor, pack: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """`x @ weight.T + bias` with `weight` packed for exactly `len(x)` rows (2-D `x`)."""
    return torch.ops.mkl._mkl_linear(x, pack, weight, bias, x.shape[0])


def _rows(x: torch.Tensor, weight: torch.Tensor) -> int:
    """Rows of `x` when a fast kernel may take it (fp32 on CPU, outside autocast), else 0."""
    if (
        x.dtype != torch.float32
        or weight.dtype != torch.float32
        or x.device.type != "cpu"
        or x.dim() < 2
        or torch.is_autocast_enabled("cpu")
    ):
        return 0
    return x.numel() // x.shape[-1]


class FastLinear(torch.nn.Linear):
    """An `nn.Linear` whose forward uses the kernels `enabled(...)` turns on for the calling thread
    (see the module docstring); `install` turns a model's large `nn.Linear` layers into this class in
    place (same weights, same state dict, still an `nn.Linear`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (_local.packed or _local.onednn):  # every caller outside an engine forward
            return torch.nn.functional.linear(x, self.weight, self.bias)
        rows = _rows(x, self.weight)
        if rows and _local.packed and PACK_MIN_ROWS <= rows <= PACK_MAX_ROWS:
            return self._packed_forward(x, rows)
        if rows >= MIN_ROWS and _local.onednn:
            return _onednn(x, self.weight, self.bias)
        return torch.nn.functional.linear(x, self.weight, self.bias)

    def _packed_forward(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        bucket = rows if rows < PACK_STEP else -(-rows // PACK_STEP) * PACK_STEP
        weight = self.weight
        key = (bucket, weight.data_ptr(), weight._version)
        held = self.__dict__.get("_steer_pack")
        if held is None or held[0] != key:
            with _pack_lock:  # packing reads the whole weight: one thread at a time
                held = (key, _pack(weight, bucket))
            self.__dict__["_steer_pack"] = held
        flat = x.reshape(rows, x.shape[-1])
        if rows < bucket:
            flat = torch.cat([flat, flat.new_zeros((bucket - rows, flat.shape[1]))])
        out = _packed(flat, held[1], weight, self.bias)
        return out[:rows].reshape(*x.shape[:-1], out.shape[-1])


def install(model: torch.nn.Module, min_features: int = MIN_FEATURES) -> int:
    """Make `model`'s `nn.Linear` layers with at least `min_features` inputs and outputs
    `FastLinear` (idempotent); returns how many layers are. Outside `enabled(...)` they run
    exactly as before."""
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and min(module.in_features, module.out_features) >= min_features:
            module.__class__ = FastLinear
        count += type(module) is FastLinear
    return count


def drop_packs(model: torch.nn.Module) -> int:
    """Free the packed weights `model`'s layers hold; returns how many were held."""
    held = 0
    for module in model.modules():
        held += module.__dict__.pop("_steer_pack", None) is not None
    return held


@contextlib.contextmanager
def enabled(onednn: bool, packed: bool = False):
    """On this thread, for the enclosed forward: oneDNN in installed layers (when `onednn`), and
    pre-packed MKL weights for forwards of `PACK_MIN_ROWS`..`PACK_MAX_ROWS` rows (when `packed`)."""
    outer = _local.onednn, _local.packed
    _local.onednn, _local.packed = onednn, packed
    try:
        yield
    finally:
        _local.onednn, _local.packed = outer


@functools.cache
def faster_than_default(in_features: int, out_features: int, threads: int, rows: int = 64) -> bool:
    """Whether oneDNN beats `nn.functional.linear` by at least 15 % on a `(rows, in) → out` fp32
    projection with this many torch threads (a few ms of timing, cached), with results within fp32
    rounding of each other."""
    if not available():
        return False
    return _pays(lambda x, w: _onednn(x, w, None), in_features, out_features, rows)


@functools.cache
def packed_faster_than_default(in_features: int, out_features: int, threads: int, rows: int = 24) -> bool:
    """Whether MKL with a pre-packed weight beats `nn.functional.linear` by at least 15 % on a
    `(rows, in) → out` fp32 projection (a decode step's row count) with this many torch threads,
    with results within fp32 rounding of each other (a few ms of timing, cached)."""
    if not packed_available():
        return False
    packs: dict[int, torch.Tensor] = {}

    def run(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if id(w) not in packs:
            packs[id(w)] = _pack(w, x.shape[0])
        return _packed(x, packs[id(w)], w, None)

    return _pays(run, in_features, out_features, rows)


def _pays(kernel, in_features: int, out_features: int, rows: int) -> bool:
    """Whether `kernel(x, w)` matches `nn.functional.linear` within fp32 rounding and is at least
    15 % faster on a random `(rows, in) → out` projection."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, in_features, generator=gen)
    w = torch.randn(out_features, in_features, generator=gen) / in_features**0.5
    with torch.inference_mode():
        try:
            fast = kernel(x, w)
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

        default = best(lambda: torch.nn.functional.linear(x, w))
        fast_time = best(lambda: kernel(x, w))
    return fast_time * 1.15 < default
