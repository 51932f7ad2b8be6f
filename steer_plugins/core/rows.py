"""Rows of one model's forward pass: left padding, attention mask, position ids and one KV cache.

Every branch of every prompt (expert on the prompt, base on the prompt, expert on a negative
context) is one row. A `RowBatch` holds the rows that share a model (for a LoRA expert, expert and
base rows share one batch and PEFT routes each row to its adapter or to `"__base__"`), runs one
forward per step for all of them, drops rows whose prompt has finished, and merges in the rows of
prompts that join while it decodes (continuous batching).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Sequence

import torch

__all__ = ["RowBatch", "UnmergeableCache", "forward_keywords"]


def forward_keywords(model: torch.nn.Module) -> tuple[str, bool]:
    """(name of the cache keyword, whether `logits_to_keep` is accepted) for `model.forward`.

    transformers 5.24 calls the cache `cache`; older releases call it `past_key_values`.
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(inner.forward).parameters
    cache_kw = "cache" if "cache" in params else "past_key_values"
    return cache_kw, "logits_to_keep" in params


def _select_cache(cache, keep: torch.Tensor) -> None:
    if hasattr(cache, "batch_select_indices"):
        cache.batch_select_indices(keep)
        return
    for attr in ("key_cache", "value_cache"):  # transformers 4.x DynamicCache
        tensors = getattr(cache, attr)
        for i, t in enumerate(tensors):
            tensors[i] = t.index_select(0, keep)


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


def _layer_tensors(cache) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """(keys, values) per layer of a plain dynamic cache, or None for any other kind."""
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


def _pad_left(t: torch.Tensor, n: int) -> torch.Tensor:
    """Zero-pad a `(batch, heads, seq, dim)` tensor on the left of the sequence axis."""
    return t if n == 0 else torch.nn.functional.pad(t, (0, 0, n, 0))


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
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        pad_id: int,
        adapter_names: Sequence[str] | None = None,
        disable_adapter: bool = False,
        min_rows: int = 1,
    ) -> None:
        self.model = model
        self.min_rows = min_rows
        self.num_real = 0
        self.pad_id = pad_id
        self.adapter_names = list(adapter_names) if adapter_names is not None else None
        self.disable_adapter = disable_adapter
        self.device = next(model.parameters()).device
        self._cache_kw, self._keep_kw = forward_keywords(model)
        self.cache = None
        self.attention_mask: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None  # (rows,) position id of each row's last token

    def __len__(self) -> int:
        return self.num_real

    def _padding(self, n: int) -> int:
        return self.min_rows - n if 1 < n < self.min_rows else 0

    def _forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        kwargs = {
            "input_ids": input_ids,
            "attention_mask": self.attention_mask,
            "position_ids": position_ids,
            self._cache_kw: self.cache,
            "use_cache": True,
        }
        if self._keep_kw:
            kwargs["logits_to_keep"] = 1
        names = set(self.adapter_names or ())
        if len(names) > 1:
            kwargs["adapter_names"] = self.adapter_names
        base_only = self.disable_adapter or names == {"__base__"}
        ctx = self.model.disable_adapter() if base_only else contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            out = self.model(**kwargs)
        self.cache = getattr(out, "cache", None) or out.past_key_values
        return out.logits[:, -1, :].float().log_softmax(-1)

    def prefill(self, contexts: Sequence[Sequence[int]]) -> torch.Tensor:
        """Run every row's whole context; returns `(rows, vocab)` next-token log-probs.

        The rows end up left-padded to the longest context. Rows of very different lengths (short
        prompts beside long negative contexts) are prefilled in length buckets, each padded only to
        its own longest row, and their caches are then merged, so padding costs no compute.
        """
        if self.adapter_names is not None and len(self.adapter_names) != len(contexts):
            raise ValueError(f"{len(self.adapter_names)} adapter names for {len(contexts)} rows")
        self.num_real = len(contexts)
        extra = self._padding(len(contexts))
        contexts = [list(c) for c in contexts] + [list(contexts[-1])] * extra
        if self.adapter_names is not None:
            self.adapter_names += [self.adapter_names[-1]] * extra
        ids, mask = self._left_pad(contexts, max(len(c) for c in contexts))
        self.attention_mask = mask
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        self.positions = position_ids[:, -1]
        buckets = _length_buckets([len(c) for c in contexts])
        if len(buckets) == 1:
            self.cache = None
            return self._forward(ids, position_ids)[: self.num_real]
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
        width = self.attention_mask.shape[1]
        full_mask, all_names = self.attention_mask, self.adapter_names
        layers: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
        logprobs, order = [], []
        for rows in buckets:
            sub = [contexts[i] for i in rows]
            ids, mask = self._left_pad(sub, max(len(c) for c in sub))
            self.attention_mask, self.cache = mask, None
            if all_names is not None:
                self.adapter_names = [all_names[i] for i in rows]
            logprobs.append(self._forward(ids, (mask.cumsum(-1) - 1).clamp(min=0)))
            kv = _layer_tensors(self.cache)
            if kv is None:  # an unfamiliar cache type: fall back to one padded forward
                self.attention_mask, self.adapter_names, self.cache = full_mask, all_names, None
                ids, _ = self._left_pad(contexts, width)
                return self._forward(ids, (full_mask.cumsum(-1) - 1).clamp(min=0))
            pad = width - ids.shape[1]
            layers.append([(_pad_left(k, pad), _pad_left(v, pad)) for k, v in kv])
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
        self.cache, self.attention_mask, self.adapter_names = merged, full_mask, all_names
        return torch.cat(logprobs).index_select(0, inverse)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row; returns `(rows, vocab)` next-token log-probs."""
        assert self.attention_mask is not None and self.positions is not None, "prefill first"
        rows = self.attention_mask.shape[0]
        if rows > len(tokens):
            tokens = torch.cat([tokens, tokens[-1:].expand(rows - len(tokens))])
        self.attention_mask = torch.cat([self.attention_mask, self.attention_mask.new_ones((rows, 1))], dim=1)
        self.positions = self.positions + 1
        out = self._forward(tokens.to(self.device).view(-1, 1), self.positions.view(-1, 1))
        return out[: self.num_real]

    def compatible(self, other: RowBatch) -> bool:
        """Whether `other` runs the same forward as this batch (same model, same adapter routing)."""
        return (
            other.model is self.model
            and other.disable_adapter == self.disable_adapter
            and (other.adapter_names is None) == (self.adapter_names is None)
            and other.pad_id == self.pad_id
        )

    def merge(self, other: RowBatch) -> None:
        """Append `other`'s real rows after this batch's real rows (continuous batching).

        Both batches must have run their last forward (prefill or step), so each cache holds exactly
        its attention mask's width. The narrower side is left-padded (masked out) to the wider width,
        then min-rows padding is re-applied. `other` must not be used afterwards.

        Raises:
            ValueError: the batches run different forwards (see `compatible`).
            UnmergeableCache: a cache that is not a plain dynamic cache; nothing was changed.
        """
        if not self.compatible(other):
            raise ValueError("cannot merge RowBatches of different models or adapter routing")
        assert self.attention_mask is not None and other.attention_mask is not None, "prefill first"
        mine, theirs = _layer_tensors(self.cache), _layer_tensors(other.cache)
        if mine is None or theirs is None or len(mine) != len(theirs):
            raise UnmergeableCache("only plain dynamic caches can be merged")
        a, b = self.num_real, other.num_real
        wa, wb = self.attention_mask.shape[1], other.attention_mask.shape[1]
        for kv, w in ((mine, wa), (theirs, wb)):
            if any(k is None or v is None or k.shape[-2] != w or v.shape[-2] != w for k, v in kv):
                raise UnmergeableCache("cache width differs from the attention mask's")
        width = max(wa, wb)
        n = a + b
        extra = self._padding(n)
        rows = torch.arange(n)
        if extra:
            rows = torch.cat([rows, rows[-1:].expand(extra)])
        rows = rows.to(self.device)

        def join(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return torch.cat([_pad_left(x[:a], width - wa), _pad_left(y[:b], width - wb)]).index_select(
                0, rows
            )

        from transformers import DynamicCache

        merged = DynamicCache()
        for layer_idx, ((ka, va), (kb, vb)) in enumerate(zip(mine, theirs, strict=True)):
            merged.update(join(ka, kb), join(va, vb), layer_idx)
        pad = torch.nn.functional.pad
        self.attention_mask = torch.cat(
            [pad(self.attention_mask[:a], (width - wa, 0)), pad(other.attention_mask[:b], (width - wb, 0))]
        ).index_select(0, rows)
        self.positions = torch.cat([self.positions[:a], other.positions[:b]]).index_select(0, rows)
        if self.adapter_names is not None:
            names = self.adapter_names[:a] + other.adapter_names[:b]
            self.adapter_names = [names[i] for i in rows.tolist()]
        self.cache, self.num_real = merged, n
        other.cache = other.attention_mask = other.positions = None

    def select(self, keep: torch.Tensor) -> None:
        """Keep only rows `keep` (a 1-D long tensor of row indices, in order); frees the rest."""
        assert self.attention_mask is not None and self.positions is not None
        self.num_real = len(keep)
        extra = self._padding(len(keep))
        if extra:
            keep = torch.cat([keep, keep[-1:].expand(extra)])
        keep = keep.to(self.device)
        self.attention_mask = self.attention_mask.index_select(0, keep)
        self.positions = self.positions.index_select(0, keep)
        if self.adapter_names is not None:
            self.adapter_names = [self.adapter_names[i] for i in keep.tolist()]
        if self.cache is not None and len(keep):
            _select_cache(self.cache, keep)
