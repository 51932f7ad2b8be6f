"""Rows of one model's forward pass: position ids, adapter routing and one KV cache.

Every branch of every prompt (expert on the prompt, base on the prompt, expert on a negative
context) is one row. A `RowBatch` holds the rows that share a model (for a LoRA expert, expert and
base rows share one batch and PEFT routes each row to its adapter or to `"__base__"`), runs one
forward per step for all of them, drops rows whose prompt has finished, and merges in the rows of
prompts that join while it decodes (continuous batching).

For the architectures `attention.supports_row_attention` knows, rows live in a `RowKVCache`
(length segments, preallocated buffers written in place) and attend with the "steer_rows"
attention function, which never works over another row's padding. Other models run with
transformers' own attention over one left-padded `DynamicCache` (always correct, slower).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import warnings
from collections.abc import Sequence

import torch

from . import kernels, lora
from .attention import RowAttentionUnsupported, row_attention, supports_row_attention
from .kv_cache import RowKVCache, Segment, pad_left, select_dynamic

__all__ = ["RowBatch", "UnmergeableCache", "forward_keywords"]

ROW_SCALED_LORA = True  # route expert/base rows of a LoRA expert by per-row LoRA scaling (see below)
MAX_ROOM = 256  # columns reserved up front for `new_tokens`; longer outputs grow the cache as they go
# tokens per prefill forward with row attention: caps activation memory, and keeps a chunk's
# activations cache-sized: B=8's first token (8 x 520 negative tokens) took 5.26 s in chunks of 2048
# against 5.87 s in chunks of 4096 (median of 5, 2-core AMD EPYC; 1024: 5.31 s)
PREFILL_CHUNK_TOKENS = 2048
# with row attention, prefill contexts of different lengths back to back in one input row (no padding
# FLOPs; exact: each attends to itself only) when the model takes positions as `logits_to_keep`
PACKED_PREFILL = True


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX). Without it, PyTorch's bf16
    matmul is emulated: 5.5x slower than fp32 on this project's AVX2 machine (benchmarks.md)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def forward_keywords(model: torch.nn.Module) -> tuple[str, bool]:
    """(name of the cache keyword, whether `logits_to_keep` is accepted) for `model.forward`.

    transformers 5.24 calls the cache `cache`; older releases call it `past_key_values`.
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(inner.forward).parameters
    cache_kw = "cache" if "cache" in params else "past_key_values"
    return cache_kw, "logits_to_keep" in params


def _length_buckets(lengths: Sequence[int], ratio: float = 0.6) -> list[list[int]]:
    """Group row indices by length: sorted longest first, a new bucket starts when a row is shorter
    than `ratio` times its bucket's longest row."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    buckets: list[list[int]] = []
    for i in order:
        if buckets and lengths[i] >= ratio * lengths[buckets[-1][0]]:
            buckets[-1].append(i)
        else:
            buckets.append([i])
    return buckets


class _PackingUnsupported(RuntimeError):
    """The model returned logits for other positions than the `logits_to_keep` it was given."""


def _prefill_chunks(lengths: Sequence[int], width: int, packed: bool) -> list[slice]:
    """Consecutive rows per prefill forward, at most `PREFILL_CHUNK_TOKENS` tokens each (at least one
    row): counted padded to `width`, or as their own lengths when `packed`."""
    chunks, start, used = [], 0, 0
    for i, n in enumerate(lengths):
        n = n if packed else width
        if i > start and used + n > PREFILL_CHUNK_TOKENS:
            chunks.append(slice(start, i))
            start, used = i, 0
        used += n
    if len(lengths):
        chunks.append(slice(start, len(lengths)))
    return chunks


def _layer_tensors(cache) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """(keys, values) per layer of a RowKVCache or a plain dynamic cache, or None for any other kind."""
    if isinstance(cache, RowKVCache):
        return cache.layer_tensors()
    layers = getattr(cache, "layers", None)
    if layers is not None:
        if any(type(layer).__name__ != "DynamicLayer" for layer in layers):
            return None
        return [(layer.keys, layer.values) for layer in layers]
    if hasattr(cache, "key_cache"):  # transformers 4.x
        return list(zip(cache.key_cache, cache.value_cache, strict=True))
    return None


class UnmergeableCache(RuntimeError):
    """`RowBatch.merge` cannot join these caches (not plain dynamic caches, or inconsistent widths);
    the caller keeps the batches apart, which is always correct, only slower."""


class RowBatch:
    """Rows decoded together through one model, each with its own context and KV cache row.

    Args:
        model: a causal LM (or a `PeftModel`).
        pad_id: any valid token id; padded positions are masked out, so its value never matters.
        adapter_names: one PEFT adapter name per row (`"__base__"` = adapter off) for mixed-adapter
            batches, or None to run every row through the model as it is.
        disable_adapter: run this batch with the PEFT adapter switched off (the base as separate passes).
        min_rows: run 2..min_rows-1 rows as `min_rows` (copies of the last row, results discarded).
            On this CPU (MKL, AVX-512) a forward with 2-3 rows is slower than one with 4, because small
            GEMMs take a slow kernel; 1 row takes the fast GEMV path and is never padded. Measured in
            benchmarks/bench_speed.py; 1 disables padding (the default on CUDA).
        prefill_dtype: prefill rows under autocast to this dtype (e.g. `torch.bfloat16`); opt-in and
            not exact: the KV cache keeps the model's dtype and decode steps stay in it. Used only
            with row attention.
        kv_dtype: store the KV cache of `reduced_rows` in this dtype (e.g. `torch.bfloat16`: half the
            memory of fp32); opt-in and not exact: attention over those rows runs in that dtype. Used
            only with row attention.
        reduced_rows: which rows `prefill_dtype` and `kv_dtype` apply to (the decoder passes the negative-context
            rows); None = all rows.
        new_tokens: how many tokens the rows will add at most (`max_new_tokens`): with row attention
            the cache is allocated once with that much room (up to `MAX_ROOM` columns, so a large
            `max_new_tokens` that is rarely reached does not reserve memory for it) and does not grow
            within it. None: grow as needed.
        row_attention: force (True) or refuse (False) the RowKVCache + steer_rows attention path;
            None picks it when `supports_row_attention(model)`.
        fast_linear: run the layers `kernels.install` converted with oneDNN in this batch's
            forwards (fp32; see `kernels.py`).
        packed_linear: run them with weights packed for this kernel ("onednn" or "mkl") in this
            batch's decode steps of up to 32 rows (fp32; see `kernels.py`); None: unpacked.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        pad_id: int,
        adapter_names: Sequence[str] | None = None,
        disable_adapter: bool = False,
        min_rows: int = 1,
        prefill_dtype: torch.dtype | None = None,
        reduced_rows: Sequence[bool] | None = None,
        kv_dtype: torch.dtype | None = None,
        new_tokens: int | None = None,
        row_attention: bool | None = None,
        fast_linear: bool = False,
        packed_linear: str | None = None,
    ) -> None:
        self.new_tokens = new_tokens
        self.fast_linear = fast_linear
        self.packed_linear = packed_linear
        self.model = model
        self.min_rows = min_rows
        self.num_real = 0
        self.pad_id = pad_id
        self.adapter_names = list(adapter_names) if adapter_names is not None else None
        self.disable_adapter = disable_adapter
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.rows_mode = supports_row_attention(model) if row_attention is None else row_attention
        self.prefill_dtype = prefill_dtype if self.rows_mode else None
        if self.prefill_dtype == torch.bfloat16 and self.device.type == "cpu" and not cpu_has_native_bf16():
            warnings.warn(
                "bf16 prefill on a CPU without AVX-512 BF16 or AMX is emulated and several times slower "
                "than fp32: leave prefill_dtype unset on this machine",
                RuntimeWarning,
                stacklevel=2,
            )
        self.kv_dtype = kv_dtype if self.rows_mode and kv_dtype != self.dtype else None
        self.reduced_rows = list(reduced_rows) if reduced_rows is not None else None
        self._cache_kw, self._keep_kw = forward_keywords(model)
        self._pack_ok = self._keep_kw  # packed prefill needs `logits_to_keep` (positions)
        self.cache = None
        self._mask: torch.Tensor | None = None  # dynamic path: the mask; row path: a built view
        self.positions: torch.Tensor | None = None  # (rows,) position id of each row's last token

    def __len__(self) -> int:
        return self.num_real

    def _padding(self, n: int) -> int:
        return self.min_rows - n if 1 < n < self.min_rows else 0

    @property
    def attention_mask(self) -> torch.Tensor | None:
        """`(forward rows, width)` left-padded mask of every row's context (min-rows padding included)."""
        if self._mask is None and self.rows_mode and self.positions is not None:
            lengths = (self.positions + 1).tolist()
            lengths += lengths[-1:] * self._padding(len(lengths))
            width = max(lengths, default=0)
            mask = torch.zeros((len(lengths), width), dtype=torch.long)
            for i, n in enumerate(lengths):
                mask[i, width - n :] = 1
            self._mask = mask.to(self.device)
        return self._mask

    def _forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        names: Sequence[str] | None,
        *,
        steer_kv: RowKVCache | None = None,
        dtype: torch.dtype | None = None,
        keep: torch.Tensor | None = None,
        decode: bool = False,
    ) -> torch.Tensor:
        """One forward; returns the last position's `(rows, vocab)` logits in fp32 (with `keep`, the
        logits at those positions of the single input row, `(len(keep), vocab)`: a packed prefill).
        `decode`: a decode step, the only forward that uses `packed_linear` (a prefill chunk's row
        count would make the layers repack for it)."""
        kwargs = {"input_ids": input_ids, "position_ids": position_ids, "use_cache": True}
        if steer_kv is not None:
            kwargs.update({self._cache_kw: steer_kv, "attention_mask": None})
        else:
            kwargs.update({self._cache_kw: self.cache, "attention_mask": self._mask})
        if self._keep_kw:
            kwargs["logits_to_keep"] = 1 if keep is None else keep
        names = list(names or ())
        names += names[-1:] * (input_ids.shape[0] - len(names))
        base_only = self.disable_adapter or set(names) == {"__base__"}
        scaled = self._lora_rows(names) if steer_kv is not None else None
        if scaled is None and len(set(names)) > 1:
            kwargs["adapter_names"] = names
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.inference_mode())
            stack.enter_context(kernels.enabled(self.fast_linear, self.packed_linear if decode else None))
            stack.enter_context(lora.enabled())
            if base_only:
                stack.enter_context(self.model.disable_adapter())
            if steer_kv is not None:
                stack.enter_context(row_attention(self.model, steer_kv))
            if scaled is not None:
                stack.enter_context(lora.row_scaled_lora(*scaled))
            if dtype is not None and dtype != self.dtype:
                stack.enter_context(torch.autocast(self.device.type, dtype=dtype))
            out = self.model(**kwargs)
        if steer_kv is None:
            self.cache = getattr(out, "cache", None) or out.past_key_values
        if keep is not None:
            if out.logits.shape[:2] != (1, len(keep)):
                raise _PackingUnsupported("the model does not take positions as `logits_to_keep`")
            return out.logits[0].float()
        return out.logits[:, -1, :].float()

    def _lora_rows(self, names: list[str]) -> tuple[list, str, torch.Tensor] | None:
        """(LoRA layers, adapter, per-row 0/1) to route a two-name mixed batch by LoRA scaling."""
        kinds = set(names)
        adapter = getattr(self.model, "active_adapter", None)
        if len(kinds) != 2 or kinds != {adapter, "__base__"} or not ROW_SCALED_LORA:
            return None
        layers = lora.lora_layers(self.model, adapter)
        if layers is None:
            return None
        on = torch.tensor([n != "__base__" for n in names], dtype=self.dtype, device=self.device)
        return layers, adapter, on

    def prefill(self, contexts: Sequence[Sequence[int]], *, logprobs: bool = True) -> torch.Tensor:
        """Run every row's whole context; returns `(rows, vocab)` next-token log-probs (raw logits
        with `logprobs=False`).

        Rows of very different lengths (short prompts beside long negative contexts) are prefilled in
        length buckets, each padded only to its own longest row. With row attention each bucket
        becomes a segment of the cache, and identical contexts (same adapter) are run once.
        """
        if self.adapter_names is not None and len(self.adapter_names) != len(contexts):
            raise ValueError(f"{len(self.adapter_names)} adapter names for {len(contexts)} rows")
        self.num_real = len(contexts)
        self._mask = None
        if self.rows_mode:
            try:
                out = self._prefill_rows([list(c) or [self.pad_id] for c in contexts])
            except RowAttentionUnsupported:  # e.g. a wrapper that drops its cache argument
                self.rows_mode, self.prefill_dtype, self.kv_dtype, self.cache = False, None, None, None
        if not self.rows_mode:
            out = self._prefill_dynamic([list(c) for c in contexts])
        return out.log_softmax(-1) if logprobs else out

    def _prefill_rows(self, contexts: list[list[int]]) -> torch.Tensor:
        lengths = [len(c) for c in contexts]
        self.positions = torch.tensor(lengths, device=self.device) - 1
        room = None if self.new_tokens is None else min(self.new_tokens, MAX_ROOM)
        self.cache = RowKVCache(device=self.device, dtype=self.dtype, room=room)
        reduced = self.reduced_rows or [True] * len(contexts)
        if (self.prefill_dtype is None and self.kv_dtype is None) or len(reduced) != len(contexts):
            reduced = [False] * len(contexts)
        outs, order = [], []
        for flag in sorted(set(reduced)):  # exact rows first, then rows in prefill_dtype / kv_dtype
            idx = [i for i, r in enumerate(reduced) if r == flag]
            dtypes = (self.prefill_dtype, self.kv_dtype) if flag else (None, None)
            for bucket in _length_buckets([lengths[i] for i in idx]):
                rows = [idx[j] for j in bucket]
                outs.append(self._prefill_segment(contexts, rows, *dtypes))
                order += rows
        if len(outs) == 1 and order == sorted(order):
            return outs[0]
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        return torch.cat(outs).index_select(0, inverse.to(self.device))

    def _prefill_segment(
        self,
        contexts: list[list[int]],
        rows: list[int],
        dtype: torch.dtype | None,
        kv_dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Prefill rows `rows` (under autocast to `dtype`) into a new segment storing its KV in
        `kv_dtype` (None: the cache's); returns their logits in that order."""
        names = [self.adapter_names[i] for i in rows] if self.adapter_names is not None else None
        keys = [(tuple(contexts[i]), names[j] if names else None) for j, i in enumerate(rows)]
        slot = {k: s for s, k in enumerate(dict.fromkeys(keys))}  # distinct (context, adapter) -> row
        unique = [keys.index(k) for k in slot]  # positions in `rows` of the distinct ones
        inverse = [slot[k] for k in keys]
        sub = [contexts[rows[j]] for j in unique]
        sub_names = [names[j] for j in unique] if names else None
        width = max(len(c) for c in sub)
        seg = Segment(torch.arange(len(sub)), torch.tensor([width - len(c) for c in sub]), 0, dtype=kv_dtype)
        packed = PACKED_PREFILL and self._pack_ok and len({len(c) for c in sub}) > 1
        if packed and sub_names and len(set(sub_names)) > 1:
            packed = False  # one input row runs one adapter (or none)
        parts = []
        for chunk in _prefill_chunks([len(c) for c in sub], width, packed):
            chunk_names = sub_names[chunk] if sub_names else None
            if packed:
                try:
                    parts.append(
                        self._forward_packed(sub[chunk], seg, chunk.start, width, chunk_names, dtype)
                    )
                except _PackingUnsupported:  # padded prefill instead, into a fresh segment
                    self._pack_ok = False
                    return self._prefill_segment(contexts, rows, dtype, kv_dtype)
                continue
            ids, mask = self._left_pad(sub[chunk], width)
            self.cache.begin([seg], width, chunk=chunk)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            parts.append(self._forward(ids, pos, chunk_names, steer_kv=self.cache, dtype=dtype))
            self.cache.finish()
        seg.end = width
        logits = parts[0] if len(parts) == 1 else torch.cat(parts)
        if len(unique) < len(rows):  # copies of the shared rows' cache
            idx = torch.tensor(inverse)
            dev = idx.to(self.device)
            seg.keys = [t.index_select(0, dev) for t in seg.keys]
            seg.values = [t.index_select(0, dev) for t in seg.values]
            seg.starts, logits = seg.starts[idx], logits.index_select(0, dev)
        seg.rows = torch.tensor(rows)
        self.cache.segments.append(seg)
        return logits

    def _forward_packed(
        self,
        contexts: list[list[int]],
        seg: Segment,
        dst: int,
        width: int,
        names: list[str] | None,
        dtype: torch.dtype | None,
    ) -> torch.Tensor:
        """Prefill `contexts` (physical rows `dst, ...` of `seg`) as one input row, back to back with
        no padding; each attends to itself only. Returns their last positions' logits."""
        lengths = [len(c) for c in contexts]
        ids = torch.tensor([t for c in contexts for t in c], dtype=torch.long, device=self.device)[None]
        pos = torch.cat([torch.arange(n) for n in lengths]).to(self.device)[None]
        keep = (torch.tensor(lengths).cumsum(0) - 1).to(self.device)
        self.cache.begin_packed(seg, lengths, dst, width)
        try:
            return self._forward(
                ids, pos, names[:1] if names else None, steer_kv=self.cache, dtype=dtype, keep=keep
            )
        finally:
            self.cache.finish()

    def _prefill_dynamic(self, contexts: list[list[int]]) -> torch.Tensor:
        extra = self._padding(len(contexts))
        contexts = contexts + [contexts[-1]] * extra
        ids, mask = self._left_pad(contexts, max(len(c) for c in contexts))
        self._mask = mask
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        self.positions = position_ids[:, -1]
        buckets = _length_buckets([len(c) for c in contexts])
        if len(buckets) == 1:
            self.cache = None
            return self._forward(ids, position_ids, self.adapter_names)[: self.num_real]
        return self._bucketed_prefill(contexts, buckets)[: self.num_real]

    def _left_pad(self, contexts: Sequence[Sequence[int]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.full((len(contexts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(contexts), width), dtype=torch.long)
        for i, ctx in enumerate(contexts):
            if len(ctx):
                ids[i, width - len(ctx) :] = torch.as_tensor(ctx, dtype=torch.long)
                mask[i, width - len(ctx) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def _bucketed_prefill(self, contexts: list[list[int]], buckets: list[list[int]]) -> torch.Tensor:
        width = self._mask.shape[1]
        full_mask = self._mask
        names = self._all_names(len(contexts))
        layers: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
        logprobs, order = [], []
        for rows in buckets:
            sub = [contexts[i] for i in rows]
            ids, mask = self._left_pad(sub, max(len(c) for c in sub))
            self._mask, self.cache = mask, None
            sub_names = [names[i] for i in rows] if names is not None else None
            logprobs.append(self._forward(ids, (mask.cumsum(-1) - 1).clamp(min=0), sub_names))
            kv = _layer_tensors(self.cache)
            if kv is None:  # an unfamiliar cache type: fall back to one padded forward
                self._mask, self.cache = full_mask, None
                ids, _ = self._left_pad(contexts, width)
                return self._forward(ids, (full_mask.cumsum(-1) - 1).clamp(min=0), names)
            pad = width - ids.shape[1]
            layers.append([(pad_left(k, pad), pad_left(v, pad)) for k, v in kv])
            order += rows
        from transformers import DynamicCache

        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        inverse = inverse.to(self.device)
        merged = DynamicCache()
        for layer_idx in range(len(layers[0])):
            keys = torch.cat([b[layer_idx][0] for b in layers]).index_select(0, inverse)
            values = torch.cat([b[layer_idx][1] for b in layers]).index_select(0, inverse)
            merged.update(keys, values, layer_idx)
        self.cache, self._mask = merged, full_mask
        return torch.cat(logprobs).index_select(0, inverse)

    def _all_names(self, n: int) -> list[str] | None:
        """Adapter names of `n` forward rows: the real rows' names, the last repeated for padding."""
        if self.adapter_names is None:
            return None
        return self.adapter_names + self.adapter_names[-1:] * (n - len(self.adapter_names))

    def step(self, tokens: torch.Tensor, *, logprobs: bool = True) -> torch.Tensor:
        """Append one token per row; returns `(rows, vocab)` next-token log-probs (raw logits with
        `logprobs=False`)."""
        assert self.positions is not None, "prefill first"
        n = self.num_real
        rows = n + self._padding(n) if self.rows_mode else self._mask.shape[0]
        tokens = tokens[:n]
        if rows > len(tokens):
            tokens = torch.cat([tokens, tokens[-1:].expand(rows - len(tokens))])
        self.positions = self.positions + 1
        ids = tokens.to(self.device).view(-1, 1)
        if self.rows_mode:
            self._mask = None
            positions = torch.nn.functional.pad(self.positions, (0, rows - n)).view(-1, 1)
            self.cache.begin(self.cache.segments, 1)
            out = self._forward(ids, positions, self.adapter_names, steer_kv=self.cache, decode=True)
            self.cache.finish()
        else:
            self._mask = torch.cat([self._mask, self._mask.new_ones((rows, 1))], dim=1)
            out = self._forward(ids, self.positions.view(-1, 1), self.adapter_names, decode=True)
        out = out[:n]
        return out.log_softmax(-1) if logprobs else out

    def compatible(self, other: RowBatch) -> bool:
        """Whether `other` runs the same forward as this batch (same model, same adapter routing)."""
        return (
            other.model is self.model
            and other.disable_adapter == self.disable_adapter
            and (other.adapter_names is None) == (self.adapter_names is None)
            and other.pad_id == self.pad_id
            and other.rows_mode == self.rows_mode
        )

    def merge(self, other: RowBatch) -> None:
        """Append `other`'s real rows after this batch's real rows (continuous batching).

        Both batches must have run their last forward (prefill or step). With row attention the
        joining rows' segments are added (segments of similar width are combined); otherwise the
        narrower dynamic cache is left-padded (masked out) to the wider width. `other` must not be
        used afterwards.

        Raises:
            ValueError: the batches run different forwards (see `compatible`).
            UnmergeableCache: a cache that cannot be joined; nothing was changed.
        """
        if not self.compatible(other):
            raise ValueError("cannot merge RowBatches of different models or adapter routing")
        assert self.positions is not None and other.positions is not None, "prefill first"
        mine, theirs = _layer_tensors(self.cache), _layer_tensors(other.cache)
        if mine is None or theirs is None:
            raise UnmergeableCache("only RowKVCaches and plain dynamic caches can be merged")
        a, b = self.num_real, other.num_real
        if self.rows_mode:
            self.cache.extend(other.cache, offset=a)
            self.positions = torch.cat([self.positions[:a], other.positions[:b]])
        else:
            self._merge_dynamic(other, mine, theirs)
        if self.adapter_names is not None:
            self.adapter_names = self.adapter_names[:a] + other.adapter_names[:b]
        self.num_real, self._mask = a + b, self._mask if not self.rows_mode else None
        other.cache = other._mask = other.positions = None

    def _merge_dynamic(self, other: RowBatch, mine, theirs) -> None:
        a, b = self.num_real, other.num_real
        wa, wb = self._mask.shape[1], other._mask.shape[1]
        if len(mine) != len(theirs):
            raise UnmergeableCache("the caches have different numbers of layers")
        for kv, w in ((mine, wa), (theirs, wb)):
            if any(k is None or v is None or k.shape[-2] != w or v.shape[-2] != w for k, v in kv):
                raise UnmergeableCache("cache width differs from the attention mask's")
        width, n = max(wa, wb), a + b
        extra = self._padding(n)
        rows = torch.arange(n)
        if extra:
            rows = torch.cat([rows, rows[-1:].expand(extra)])
        rows = rows.to(self.device)

        def join(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return torch.cat([pad_left(x[:a], width - wa), pad_left(y[:b], width - wb)]).index_select(0, rows)

        from transformers import DynamicCache

        merged = DynamicCache()
        for layer_idx, ((ka, va), (kb, vb)) in enumerate(zip(mine, theirs, strict=True)):
            merged.update(join(ka, kb), join(va, vb), layer_idx)
        pad = torch.nn.functional.pad
        self._mask = torch.cat(
            [pad(self._mask[:a], (width - wa, 0)), pad(other._mask[:b], (width - wb, 0))]
        ).index_select(0, rows)
        self.positions = torch.cat([self.positions[:a], other.positions[:b]]).index_select(0, rows)
        self.cache = merged

    def select(self, keep: torch.Tensor) -> None:
        """Keep only rows `keep` (a 1-D long tensor of distinct row indices, in order); frees the rest.
        With row attention only the rows that move into the freed places are copied."""
        assert self.positions is not None
        if self.adapter_names is not None:
            self.adapter_names = [self.adapter_names[i] for i in keep.tolist()]
        if self.rows_mode:
            self.cache.select(keep, self.num_real)
            self.positions = self.positions.index_select(0, keep.to(self.device))
            self.num_real, self._mask = len(keep), None
            return
        self.num_real = len(keep)
        extra = self._padding(len(keep))
        if extra:
            keep = torch.cat([keep, keep[-1:].expand(extra)])
        keep = keep.to(self.device)
        self._mask = self._mask.index_select(0, keep)
        self.positions = self.positions.index_select(0, keep)
        if self.cache is not None and len(keep):
            select_dynamic(self.cache, keep)
