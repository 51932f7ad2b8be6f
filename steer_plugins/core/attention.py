"""Attention inside one RowBatch forward, registered with transformers' attention interface as
"steer_rows" (LoRA routing inside the same forward is in `lora.py`).

A RowBatch forward runs inside `row_attention(model, cache)`, which hands its `RowKVCache` to the
attention function through a thread-local (models and wrappers need not pass extra keywords on; the
cache itself travels as the model's usual cache argument). For each segment of rows (see `kv_cache.py`) the
function attends over that segment's own columns only, so a 40-token prompt row never attends over
a 550-token negative row's padding, and grouped-query attention never copies KV heads: a one-token
query (a decode step) is packed as `(rows, kv heads, group, dim)` against the unrepeated keys: in
fp32 in two batched products (on the 2-core AMD EPYC 0.25 vs 0.30 ms for 8 rows x 560 keys through
SDPA's CPU kernel, 0.07 vs 0.12 ms for 16 rows x 50: `benchmarks/bench_kernels.py`), in a reduced
dtype through SDPA, which keeps its softmax in fp32. Longer queries use SDPA with `enable_gqa`. Masks are built once per forward (`RowKVCache.begin`), not per layer.

`row_attention(model)` switches the model's attention implementation to "steer_rows" for the
duration of one forward (under a lock). A forward of the same model on another thread meanwhile
still gets its own implementation: there the function and the mask function delegate to the
implementation the model had. A model that does not hand the cache to its layers is detected at the
first layer (`RowAttentionUnsupported`) and RowBatch falls back to transformers' attention.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
import threading

import torch
from torch.nn.functional import scaled_dot_product_attention as sdpa

from .kv_cache import Packed, RowKVCache, Segment

__all__ = [
    "NAME",
    "RowAttentionUnsupported",
    "attend",
    "row_attention",
    "supports_row_attention",
]

NAME = "steer_rows"
# Model types whose attention modules call the attention interface with plain (query, key, value)
# semantics; others keep transformers' own attention and a dynamic cache (always correct).
SUPPORTED_TYPES = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "gpt2", "phi3", "smollm3", "granite", "gemma", "olmo2"}
)
# keywords some attention modules pass that change the math; this implementation refuses them
_UNSUPPORTED_KWARGS = ("sliding_window", "softcap", "s_aux", "position_bias")

_lock = threading.RLock()
_local = threading.local()
_original: dict[str, str | None] = {"name": None}


class RowAttentionUnsupported(RuntimeError):
    """The model's layers did not write into the RowKVCache before attending (it does not pass its
    cache argument on); the caller uses transformers' attention and a dynamic cache instead."""


def _delegate_attention(module, *args, **kwargs):
    name = _original["name"] or "sdpa"
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if name == "eager":
        return sys.modules[type(module).__module__].eager_attention_forward(module, *args, **kwargs)
    return ALL_ATTENTION_FUNCTIONS[name](module, *args, **kwargs)


def steer_rows_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature; the RowBatch's cache comes from `row_attention`."""
    kv: RowKVCache | None = getattr(_local, "kv", None)
    if kv is None:  # not a RowBatch forward (another thread using the same model)
        return _delegate_attention(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    bad = [k for k in _UNSUPPORTED_KWARGS if kwargs.get(k) is not None]
    if bad:
        raise NotImplementedError(f"steer_rows attention does not support {bad}")
    if kv.last_layer != module.layer_idx:
        raise RowAttentionUnsupported("the model did not pass its cache to its attention layers")
    return attend(kv, module.layer_idx, query, scaling), None


def _steer_rows_mask(*args, **kwargs):
    if getattr(_local, "kv", None) is not None:
        return None  # steer_rows builds its own masks per segment
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    return ALL_MASK_ATTENTION_FUNCTIONS[_original["name"] or "sdpa"](*args, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, steer_rows_attention)
    AttentionMaskInterface.register(NAME, _steer_rows_mask)


_register()


def attend(cache: RowKVCache, layer: int, query: torch.Tensor, scaling: float | None) -> torch.Tensor:
    """Attention of `query` `(rows, heads, q, dim)` over each active segment's keys of `layer`;
    returns `(rows, q, heads, dim)`. Input rows in no segment (min-rows padding) get zeros."""
    if cache.packed is not None:
        return _attend_packed(cache.packed, layer, query, scaling)
    rows, heads, q, dim = query.shape
    segs = cache.active
    if len(segs) == 1 and isinstance(segs[0].sel, slice) and segs[0].sel == slice(0, rows):
        return _segment(segs[0], layer, query, scaling).transpose(1, 2).contiguous()
    out = query.new_zeros((rows, q, heads, dim))
    for seg in segs:
        if isinstance(seg.sel, slice):
            out[seg.sel] = _segment(seg, layer, query[seg.sel], scaling).transpose(1, 2)
        else:
            o = _segment(seg, layer, query.index_select(0, seg.sel), scaling)
            out.index_copy_(0, seg.sel, o.transpose(1, 2))
    return out


def _attend_packed(pack: Packed, layer: int, query: torch.Tensor, scaling: float | None) -> torch.Tensor:
    """Causal attention of each context of a packed prefill chunk over its own keys only."""
    _, heads, _, dim = query.shape
    seg, w = pack.segment, pack.width
    out = query.new_empty((1, query.shape[2], heads, dim))
    for i, (off, n) in enumerate(zip(pack.offsets, pack.lengths, strict=True)):
        r = pack.dst + i
        keys = seg.keys[layer][r : r + 1, :, w - n : w]
        values = seg.values[layer][r : r + 1, :, w - n : w]
        q = query[:, :, off : off + n]
        o = sdpa(
            q.to(keys.dtype),
            keys,
            values,
            is_causal=n > 1,
            scale=scaling,
            enable_gqa=heads != keys.shape[1],
        )
        out[:, off : off + n] = o.transpose(1, 2).to(query.dtype)
    return out


def _segment(seg: Segment, layer: int, query: torch.Tensor, scaling: float | None) -> torch.Tensor:
    n, heads, q, dim = query.shape
    rows = slice(seg.dst, seg.dst + n)
    keys = seg.keys[layer][rows, :, seg.lo : seg.end + q]
    values = seg.values[layer][rows, :, seg.lo : seg.end + q]
    if keys.dtype != query.dtype:  # a segment stored in another dtype (`kv_dtype`), or autocast
        return _segment(seg, layer, query.to(keys.dtype), scaling).to(query.dtype)
    kv_heads = keys.shape[1]
    if q == 1:  # a decode step: the query group packed against the unrepeated keys (no KV copies)
        grouped = query.reshape(n, kv_heads, heads // kv_heads, dim)
        if keys.dtype != torch.float32:  # bf16/fp16: SDPA keeps its softmax in fp32
            return sdpa(grouped, keys, values, attn_mask=seg.mask, scale=scaling).reshape(n, heads, 1, dim)
        scores = torch.matmul(grouped, keys.transpose(-1, -2)).mul_(dim**-0.5 if scaling is None else scaling)
        if seg.hidden is not None:
            scores.masked_fill_(seg.hidden, float("-inf"))
        return torch.matmul(torch.softmax(scores, dim=-1), values).reshape(n, heads, 1, dim)
    return sdpa(
        query,
        keys,
        values,
        attn_mask=seg.mask,
        is_causal=seg.causal,
        scale=scaling,
        enable_gqa=heads != kv_heads,
    )


def _config(model: torch.nn.Module):
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(inner, "config", None)


def supports_row_attention(model: torch.nn.Module) -> bool:
    """Whether RowBatch can run `model` with steer_rows attention and a RowKVCache."""
    cfg = _config(model)
    if cfg is None or getattr(cfg, "model_type", None) not in SUPPORTED_TYPES:
        return False
    if getattr(cfg, "_attn_implementation", None) not in ("sdpa", "eager", NAME):
        return False
    if getattr(cfg, "sliding_window", None) is not None and getattr(cfg, "use_sliding_window", True):
        return False
    if any(t != "full_attention" for t in getattr(cfg, "layer_types", None) or ()):
        return False
    if getattr(cfg, "add_cross_attention", False) or getattr(cfg, "attn_logit_softcapping", None):
        return False
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(inner.forward).parameters.values()
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


@contextlib.contextmanager
def row_attention(model: torch.nn.Module, kv: RowKVCache):
    """Run the enclosed forward of `model` with steer_rows attention over `kv` (one such forward at
    a time)."""
    cfg = _config(model)
    with _lock:
        previous = cfg._attn_implementation
        if previous != NAME:
            _original["name"] = previous
        outer = getattr(_local, "kv", None)
        _local.kv = kv
        cfg._attn_implementation = NAME
        try:
            yield
        finally:
            cfg._attn_implementation = previous
            _local.kv = outer
