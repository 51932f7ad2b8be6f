"""The KV cache of a `RowBatch`: rows in length segments, one preallocated buffer per segment and layer.

Rows of very different lengths (40-token prompts beside 550-token negative contexts) sit in different
segments, so attention over a short row never reads a long row's padding (`attention.py` runs one
attention call per segment). Within a segment, rows are left-padded to a common end column; a decode
step writes one column per row in place (no `torch.cat` of the whole cache), and the buffers grow by
`reserve` columns at a time. A row that leaves is overwritten by the segment's last row (only the
moved rows are copied), so a segment's physical row order is its own: `Segment.rows` maps each
physical row to its logical row (its index in the RowBatch, which is also its index in the forward's
input).

The object answers the part of transformers' cache protocol that the models call (`update`,
`get_seq_length`, mask sizes); `begin`/`finish` bracket each forward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["Packed", "RowKVCache", "Segment", "kv_elements_per_token", "pad_left", "select_dynamic"]


class Packed:
    """One packed prefill chunk: rows `dst, dst + 1, ...` of `segment`, their tokens concatenated in
    one input row (`lengths[i]` tokens from `offsets[i]`), to be stored right-aligned to `width`."""

    def __init__(self, segment: Segment, lengths: Sequence[int], dst: int, width: int) -> None:
        self.segment, self.lengths, self.dst, self.width = segment, list(lengths), dst, width
        self.offsets = [sum(self.lengths[:i]) for i in range(len(self.lengths))]


class Segment:
    """Rows sharing one key and one value buffer per layer, `(capacity rows, kv heads, columns, dim)`.

    Physical row p holds logical row `rows[p]`; its tokens fill columns `[starts[p], end)`. `dtype`
    is the buffers' storage dtype (None: the cache's, else the model's).
    """

    def __init__(
        self, rows: torch.Tensor, starts: torch.Tensor, end: int, dtype: torch.dtype | None = None
    ) -> None:
        self.dtype = dtype
        self.rows = rows.to("cpu", torch.long)
        self.starts = starts.to("cpu", torch.long)  # bookkeeping on the CPU; masks go to the device
        self.end = end
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        # set by RowKVCache.begin for one forward
        self.sel: slice | torch.Tensor = slice(0, 0)  # this segment's rows in the forward's input
        self.dst = 0  # first physical row the forward writes (a prefill chunk starts further down)
        self.lo = 0
        self.mask: torch.Tensor | None = None
        self.hidden: torch.Tensor | None = None  # `~mask` for a one-token query (a decode step)
        self.causal = False

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def width(self) -> int:
        """Columns attention reads for this segment (from its earliest start to its end)."""
        return self.end - int(self.starts.min()) if len(self) else 0

    def write(
        self,
        layer: int,
        key: torch.Tensor,
        value: torch.Tensor,
        q: int,
        reserve: int,
        dtype,
        room: int | None,
    ) -> None:
        if layer == len(self.keys):  # first forward of a fresh segment: allocate
            extra = _spare(self.end + q, reserve) if room is None else room
            shape = (len(self), key.shape[1], self.end + q + extra, key.shape[3])
            dtype = self.dtype or dtype or key.dtype
            self.keys.append(key.new_empty(shape, dtype=dtype))
            self.values.append(value.new_empty(shape[:3] + (value.shape[3],), dtype=dtype))
        rows = slice(self.dst, self.dst + key.shape[0])
        self.keys[layer][rows, :, self.end : self.end + q] = key
        self.values[layer][rows, :, self.end : self.end + q] = value

    def write_packed(
        self,
        layer: int,
        key: torch.Tensor,
        value: torch.Tensor,
        pack: Packed,
        reserve: int,
        dtype,
        room: int | None,
    ) -> None:
        """Write a packed prefill chunk: `key`/`value` are `(1, kv heads, sum of lengths, dim)`, row i's
        tokens at `pack.offsets[i]`; each lands right-aligned at columns `[width - length, width)` of
        physical row `pack.dst + i`, and its left padding is zeroed (masked later, but must be finite)."""
        if layer == len(self.keys):
            extra = _spare(pack.width, reserve) if room is None else room
            shape = (len(self), key.shape[1], pack.width + extra, key.shape[3])
            dtype = self.dtype or dtype or key.dtype
            self.keys.append(key.new_empty(shape, dtype=dtype))
            self.values.append(value.new_empty(shape[:3] + (value.shape[3],), dtype=dtype))
        w = pack.width
        for i, (off, n) in enumerate(zip(pack.offsets, pack.lengths, strict=True)):
            r = pack.dst + i
            for buf, src in ((self.keys[layer], key), (self.values[layer], value)):
                buf[r, :, : w - n] = 0
                buf[r, :, w - n : w] = src[0, :, off : off + n]

    @torch.inference_mode()
    def grow(self, q: int, reserve: int) -> None:
        """Move the used columns to the front of new buffers with room for `q + reserve` more."""
        lo, n = int(self.starts.min()), len(self)
        width = self.end - lo
        for bufs in (self.keys, self.values):
            for i, t in enumerate(bufs):
                new = t.new_empty((n, t.shape[1], width + q + _spare(width + q, reserve), t.shape[3]))
                new[:, :, :width] = t[:n, :, lo : self.end]
                bufs[i] = new
        self.starts = self.starts - lo
        self.end = width

    @torch.inference_mode()
    def remove(self, dead: torch.Tensor) -> None:
        """Drop physical rows `dead` (a bool mask); the last rows move into the holes."""
        alive = (~dead).nonzero().flatten()
        n_new = len(alive)
        holes = dead.nonzero().flatten()
        holes = holes[holes < n_new]
        movers = alive[alive >= n_new]
        if len(holes):
            for bufs in (self.keys, self.values):
                for t in bufs:
                    dev = t.device
                    t[holes.to(dev)] = t[movers.to(dev)]
            self.starts[holes] = self.starts[movers]
            self.rows[holes] = self.rows[movers]
        self.rows = self.rows[:n_new].clone()
        self.starts = self.starts[:n_new].clone()


@torch.inference_mode()
def _combine(segments: Sequence[Segment], reserve: int) -> Segment:
    """One segment holding the rows of `segments`, right-aligned to the widest one (a copy)."""
    width = max(s.width for s in segments)
    rows = torch.cat([s.rows for s in segments])
    starts = torch.cat([s.starts - (s.end - width) for s in segments])
    out = Segment(rows, starts, width, dtype=segments[0].dtype)
    for layer in range(len(segments[0].keys)):
        out.keys.append(_stack_right([(s, s.keys[layer]) for s in segments], width, reserve))
        out.values.append(_stack_right([(s, s.values[layer]) for s in segments], width, reserve))
    return out


def _stack_right(parts: list[tuple[Segment, torch.Tensor]], width: int, reserve: int) -> torch.Tensor:
    first = parts[0][1]
    n = sum(len(s) for s, _ in parts)
    new = first.new_empty((n, first.shape[1], width + reserve, first.shape[3]))
    r = 0
    for s, t in parts:
        k, w = len(s), s.width
        new[r : r + k, :, : width - w] = 0  # other rows' padding: masked out, but must be finite
        new[r : r + k, :, width - w : width] = t[:k, :, s.end - w : s.end]
        r += k
    return new


class RowKVCache:
    """Segments of rows with preallocated, growing KV buffers (see the module docstring).

    Args:
        device: where the model runs (index tensors and masks are made there).
        dtype: storage dtype (None: that of the first keys written, i.e. the model's).
        reserve: spare columns allocated after a segment's end (the buffers grow by this much).
        room: columns to allocate after a fresh segment's prefill when the caller knows how many
            tokens its rows will add (`max_new_tokens`, capped by the caller): the buffers do not
            grow within it (no copy, no spare). None: `reserve`'s rule.
    """

    is_compileable = False

    def __init__(
        self,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        reserve: int = 64,
        room: int | None = None,
    ) -> None:
        self.room = room
        self.segments: list[Segment] = []
        self.active: list[Segment] = []
        self.device, self.dtype, self.reserve = torch.device(device), dtype, reserve
        self.q, self._advance = 0, True
        self.packed: Packed | None = None  # set by `begin_packed` for one packed prefill forward
        self.last_layer = -1  # the layer `update` wrote last (attention checks it was its own)

    def __len__(self) -> int:
        return sum(len(s) for s in self.segments)

    # ---- one forward
    @torch.inference_mode()
    def begin(self, active: Sequence[Segment], q: int, chunk: slice | None = None) -> None:
        """Prepare a forward of `q` new tokens per row over the rows of `active`: input row i of the
        forward is logical row i; with `chunk` (a prefill), input row i is physical row
        `chunk.start + i` of the single active segment. Grows full buffers and builds each
        segment's padding mask once for all layers."""
        self.active, self.q, self._advance = list(active), q, chunk is None
        for seg in self.active:
            if seg.keys and seg.end + q > seg.keys[0].shape[2]:
                seg.grow(q, self.reserve)
            if chunk is None:
                seg.sel, seg.dst, starts = _as_index(seg.rows, self.device), 0, seg.starts
            else:
                seg.sel, seg.dst, starts = slice(0, chunk.stop - chunk.start), chunk.start, seg.starts[chunk]
            _set_mask(seg, starts, q, self.device)

    def begin_packed(self, segment: Segment, lengths: Sequence[int], dst: int, width: int) -> None:
        """Prepare a packed prefill forward: one input row holding the contexts of physical rows
        `dst, dst + 1, ...` of `segment` back to back (`lengths` tokens each, no padding); attention
        keeps each context to itself (`attention.attend`)."""
        self.active, self.q, self._advance = [segment], width, False
        self.packed = Packed(segment, lengths, dst, width)

    def finish(self) -> None:
        """After the forward: the segments now end `q` columns later (a prefill chunk leaves that to
        its caller, which sets `end` once every chunk is written)."""
        for seg in self.active:
            seg.end += self.q if self._advance else 0
        self.active, self.q, self.packed = [], 0, None

    # ---- transformers' cache protocol (what the models call)
    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        self.last_layer = layer_idx
        if self.packed is not None:
            self.packed.segment.write_packed(
                layer_idx, key, value, self.packed, self.reserve, self.dtype, self.room
            )
            return key, value
        for seg in self.active:
            if isinstance(seg.sel, slice):
                k, v = key[seg.sel], value[seg.sel]
            else:
                k, v = key.index_select(0, seg.sel), value.index_select(0, seg.sel)
            seg.write(layer_idx, k, v, self.q, self.reserve, self.dtype, self.room)
        return key, value

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return max((s.end for s in self.segments), default=0)

    def get_query_offset(self, layer_idx: int = 0) -> int:
        return self.get_seq_length()

    def get_mask_sizes(self, q_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.get_seq_length() + q_length, 0

    # ---- continuous batching
    @torch.inference_mode()
    def select(self, keep: torch.Tensor, num_rows: int) -> None:
        """Keep logical rows `keep` (distinct), renumbered 0..len(keep)-1 in that order."""
        new_of_old = torch.full((num_rows,), -1, dtype=torch.long)
        new_of_old[keep.cpu()] = torch.arange(len(keep))
        kept: list[Segment] = []
        for seg in self.segments:
            new = new_of_old[seg.rows]
            dead = new < 0
            if bool(dead.any()):
                seg.rows = new
                seg.remove(dead)
            else:
                seg.rows = new
            if len(seg):
                kept.append(seg)
        self.segments = kept

    def extend(self, other: RowKVCache, offset: int, ratio: float = 0.6) -> None:
        """Append `other`'s segments (their logical rows shifted by `offset`), then combine segments of
        similar width (and the same storage dtype) so the number of attention calls per layer stays small."""
        for seg in other.segments:
            seg.rows = seg.rows + offset
        segs = sorted(self.segments + other.segments, key=lambda s: (str(s.dtype), -s.width))
        groups: list[list[Segment]] = []
        for seg in segs:
            same = groups and seg.dtype == groups[-1][0].dtype
            if same and seg.width >= ratio * groups[-1][0].width:
                groups[-1].append(seg)
            else:
                groups.append([seg])
        self.segments = [g[0] if len(g) == 1 else _combine(g, self.reserve) for g in groups]
        other.segments = []

    def layer_tensors(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(keys, values) per layer of the first segment (for inspection)."""
        return list(zip(self.segments[0].keys, self.segments[0].values, strict=True)) if self.segments else []


def _as_index(rows: torch.Tensor, device: torch.device) -> slice | torch.Tensor:
    """`rows` as a slice when it is a contiguous ascending range (no gather needed), else an index."""
    n = len(rows)
    if n and int(rows[-1]) - int(rows[0]) == n - 1 and bool((rows[1:] > rows[:-1]).all()):
        return slice(int(rows[0]), int(rows[0]) + n)
    return rows.to(device)


def _spare(width: int, reserve: int) -> int:
    """Spare columns for a segment `width` wide: an eighth of it, at least 16, at most `reserve`."""
    return max(min(reserve, width // 8), min(reserve, 16))


def _set_mask(seg: Segment, starts: torch.Tensor, q: int, device: torch.device) -> None:
    """The attention mask of rows with these `starts` for `q` new tokens at columns `[end, end + q)`;
    None when every row may see every column (then `causal` says whether the causal pattern is
    still needed)."""
    lo = int(starts.min())
    seg.lo = lo
    hi = seg.end + q
    uniform = bool((starts == lo).all())
    seg.causal = q > 1 and uniform and seg.end == lo
    seg.hidden = None
    if uniform and (q == 1 or seg.causal):
        seg.mask = None
        return
    starts = starts.to(device)
    cols = torch.arange(lo, hi, device=device)
    valid = cols[None, :] >= starts[:, None]  # (n, W): not another row's padding
    if q == 1:
        seg.mask = valid[:, None, None, :]
        seg.hidden = ~seg.mask  # once per forward, not per layer
        return
    qpos = torch.arange(seg.end, hi, device=device)
    causal = cols[None, :] <= qpos[:, None]  # (q, W)
    pad_query = qpos[None, :] < starts[:, None]  # (n, q): a padding position as the query
    # padding queries see everything before them (finite values nobody reads) instead of nothing (NaN)
    seg.mask = (causal[None] & (valid[:, None, :] | pad_query[:, :, None]))[:, None]


# ---- transformers' DynamicCache, for models without row attention
def select_dynamic(cache, keep: torch.Tensor) -> None:
    """Keep rows `keep` of a transformers dynamic cache (the path for models without row attention)."""
    if hasattr(cache, "batch_select_indices"):
        cache.batch_select_indices(keep)
        return
    for attr in ("key_cache", "value_cache"):  # transformers 4.x DynamicCache
        tensors = getattr(cache, attr)
        for i, t in enumerate(tensors):
            tensors[i] = t.index_select(0, keep)


def pad_left(t: torch.Tensor, n: int) -> torch.Tensor:
    """Zero-pad a `(batch, heads, seq, dim)` tensor on the left of the sequence axis."""
    return t if n == 0 else torch.nn.functional.pad(t, (0, 0, n, 0))


def kv_elements_per_token(model: torch.nn.Module) -> int | None:
    """Key and value elements one token keeps in the cache over all of `model`'s layers, from its
    config (layers x KV heads x head size x 2); None when the config does not say."""
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()
    try:
        layers = int(cfg.num_hidden_layers)
        heads = int(cfg.num_attention_heads)
        kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    except (AttributeError, TypeError, ValueError):
        return None
    return layers * kv_heads * head_dim * 2
