"""Faster fp32 linear layers for the engine's forwards on CPU: oneDNN where MKL is slow, and MKL
with pre-packed weights for decode steps. Both compute in fp32; results differ from PyTorch's
default by summation order only.

**oneDNN** (`onednn`). PyTorch's CPU build multiplies fp32 `nn.Linear` with MKL. MKL picks its
fastest kernels only on Intel CPUs; on this project's AMD EPYC machines with AVX-512 it runs at about
a quarter of the core's peak, while oneDNN (also in every PyTorch CPU build,
`torch.ops.mkldnn._linear_pointwise`) reaches it: 57 vs 212 GFLOP/s on one core for a SmolLM2 MLP
projection of a prefill chunk (3824 × 576 → 1536), 2× for the 24-row decode step (1.4e-4 vs 5.8e-5
absolute against fp64 on that projection).

**Packed weights** (`packed`: "onednn" or "mkl"). A decode step multiplies a few rows (each prompt's
expert, base and negative rows) by every weight matrix, and both libraries reorder the whole weight
matrix into their blocked layout on every call; at a decode step's few rows that costs more than the
multiply. Packing each weight once removes it. All 211 projections of SmolLM2-135M (the LM head
included), fp32, 2 threads, ms per decode step:

| rows | CPU | default (MKL) | oneDNN | MKL packed | oneDNN packed |
|---|---|---:|---:|---:|---:|
| 4 | AMD EPYC, AVX-512 | 61 | 33 | 63 | 22 |
| 24 | AMD EPYC, AVX-512 | 80 | 62 | 90 | 43 |
| 4 | Intel Xeon, AMX | 59 | – | 45 | – |
| 24 | Intel Xeon, AMX | 124 | – | 81 | – |

A oneDNN pack (`torch.ops.mkldnn._reorder_linear_weight`) serves every row count; an MKL pack
(`torch.ops.mkl._mkl_reorder_linear_weight`, the packing torch.compile's CPU freezing uses) serves one:
from `PACK_STEP` rows on, rows are padded with zeros up to a multiple of it, so a batch that loses a
few rows keeps its pack, and below `MKL_PACK_MIN_ROWS` MKL's GEMV path is as fast. Each layer keeps
one pack (about its weight's size again), remade when the row bucket or the weight changes (keyed
by the weight's storage and version; PEFT's merges write `weight.data` in place, which bumps neither,
so the decoder drops the packs when `lora.merges_changed` says so); `drop_packs(model)` frees them. The decoder packs only in forwards of up to
`PACK_MAX_ROWS` rows and while memory is not what limits the run (see `Decoder.insert`).

`install(model)` makes every large `nn.Linear` a `FastLinear` (same weights), which uses these kernels
only inside `enabled(...)` on the calling thread (a `RowBatch` forward), for fp32 CPU inputs outside
autocast, and `nn.Linear`'s own forward otherwise: another thread using the same model (plain
`generate()`, a second engine) keeps PyTorch's kernels. `faster_than_default()` and
`best_packing()` time them on one projection of the model's shape and say which pays on this machine.
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
    "PACKINGS",
    "available",
    "best_packing",
    "drop_packs",
    "enabled",
    "faster_than_default",
    "install",
    "packing_available",
]

MIN_ROWS = 8  # below this many rows (decode steps of 1-4 rows) MKL's GEMV path is as fast or faster
MIN_FEATURES = 128  # LoRA's rank-r projections and other small layers keep nn.Linear
MKL_PACK_MIN_ROWS = 4  # below this MKL takes its GEMV-like path, which packing does not speed up
# Above this many rows the packs' memory (the weights' size again) is not spent: at B=32 and K=10
# the engine decodes 36-60 rows, where packing gains 23 % of the linear layers' time, and packing up
# to 64 rows measured 2.33x plain's peak RSS against 1.57x without (docs/benchmarks.md, session 13).
PACK_MAX_ROWS = 32
PACK_STEP = 8  # MKL packs: from 8 rows on, rows are padded up to a multiple of this (one pack per bucket)
PACKINGS = ("onednn", "mkl")  # the packed-weight kernels, in the order `best_packing` prefers on a tie


class _Switches(threading.local):
    """Which kernels `enabled(...)` turned on for the calling thread (both off on every other)."""

    onednn = False
    packed: str | None = None


_local = _Switches()
_pack_lock = threading.Lock()


def available() -> bool:
    """Whether this PyTorch build has oneDNN's linear op."""
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def packing_available(kind: str) -> bool:
    """Whether this PyTorch build has the packed fp32 linear ops of `kind` ("onednn" or "mkl")."""
    if kind == "onednn":
        return available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    if kind == "mkl":
        return (
            bool(torch.backends.mkl.is_available())
            and hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight")
            and hasattr(torch.ops.mkl, "_mkl_linear")
        )
    raise ValueError(f"unknown packing {kind!r}: expected one of {PACKINGS}")


def _pack(weight: torch.Tensor, rows: int, kind: str) -> torch.Tensor:
    if kind == "onednn":
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows)
    return torch.ops.mkl._mkl_reorder_linear_weight(weight.detach(), rows)


def _packed(
    x: torch.Tensor, pack: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, kind: str
) -> torch.Tensor:
    """`x @ weight.T + bias` (2-D `x`) with `weight` packed by `_pack(weight, rows, kind)`: any row
    count for a oneDNN pack, exactly `rows` for an MKL one."""
    if kind == "onednn":
        return _onednn(x, pack, bias)
    return torch.ops.mkl._mkl_linear(x, pack, weight, bias, x.shape[0])


def _bucket(rows: int, kind: str) -> int:
    """The row count a pack of `kind` is made for when a forward has `rows` rows (0: any)."""
    if kind == "onednn":
        return 0
    return rows if rows < PACK_STEP else -(-rows // PACK_STEP) * PACK_STEP


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
        kind = _local.packed
        if rows and kind and (MKL_PACK_MIN_ROWS if kind == "mkl" else 1) <= rows <= PACK_MAX_ROWS:
            return self._packed_forward(x, rows, kind)
        if rows >= MIN_ROWS and _local.onednn:
            return _onednn(x, self.weight, self.bias)
        return torch.nn.functional.linear(x, self.weight, self.bias)

    def _packed_forward(self, x: torch.Tensor, rows: int, kind: str) -> torch.Tensor:
        bucket = _bucket(rows, kind)
        weight = self.weight
        key = (kind, bucket, weight.data_ptr(), weight._version)
        held = self.__dict__.get("_steer_pack")
        if held is None or held[0] != key:
            self.__dict__.pop("_steer_pack", None)  # free the old pack before making the new one
            with _pack_lock:  # packing reads the whole weight: one thread at a time
                held = (key, _pack(weight, bucket or rows, kind))
            self.__dict__["_steer_pack"] = held
        flat = x.reshape(rows, x.shape[-1])
        if rows < bucket:
            flat = torch.cat([flat, flat.new_zeros((bucket - rows, flat.shape[1]))])
        out = _packed(flat, held[1], weight, self.bias, kind)
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
def enabled(onednn: bool, packed: str | None = None):
    """On this thread, for the enclosed forward: oneDNN in installed layers (when `onednn`), and
    weights packed for `packed` ("onednn" or "mkl") in forwards of up to `PACK_MAX_ROWS` rows."""
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
    x, w = _probe(in_features, out_features, rows)
    with torch.inference_mode():
        fast = _exact_time(lambda: _onednn(x, w, None), x, w)
        return fast is not None and fast * PAYS < _best_time(lambda: torch.nn.functional.linear(x, w))


@functools.cache
def best_packing(
    in_features: int, out_features: int, threads: int, onednn: bool, rows: int = 24
) -> str | None:
    """The packed-weight kernel (`PACKINGS`) that is fastest on a `(rows, in) → out` fp32 projection
    (a decode step's row count) with this many torch threads, if it beats by at least 15 % what runs
    unpacked (`nn.functional.linear`, or oneDNN when `onednn`) with results within fp32 rounding of
    it; None when none does (a few ms of timing per kernel, cached)."""
    x, w = _probe(in_features, out_features, rows)
    with torch.inference_mode():
        unpacked = _best_time(lambda: torch.nn.functional.linear(x, w))
        if onednn:
            unpacked = min(unpacked, _best_time(lambda: _onednn(x, w, None)))
        best, best_time = None, unpacked / PAYS
        for kind in filter(packing_available, PACKINGS):
            try:
                pack = _pack(w, rows, kind)
            except RuntimeError:  # a build whose op refuses these inputs
                continue
            spent = _exact_time(lambda: _packed(x, pack, w, None, kind), x, w)  # noqa: B023 (called at once)
            if spent is not None and spent < best_time:
                best, best_time = kind, spent
    return best


PAYS = 1.15  # a kernel is used where it is at least this much faster than the one it replaces


def _probe(in_features: int, out_features: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random `(rows, in)` input and `(out, in)` weight of a projection's shape (seeded)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, in_features, generator=gen)
    return x, torch.randn(out_features, in_features, generator=gen) / in_features**0.5


def _exact_time(fn, x: torch.Tensor, w: torch.Tensor) -> float | None:
    """`_best_time(fn)` when `fn()` runs and matches `x @ w.T` within fp32 rounding, else None."""
    try:
        out = fn()
    except RuntimeError:  # a build whose op refuses these inputs
        return None
    if not torch.allclose(out, torch.nn.functional.linear(x, w), rtol=1e-4, atol=1e-4):
        return None
    return _best_time(fn)


def _best_time(fn) -> float:
    """Best of 7 timings of 3 calls of `fn`."""
    times = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(3):
            fn()
        times.append(time.perf_counter() - start)
    return min(times)
