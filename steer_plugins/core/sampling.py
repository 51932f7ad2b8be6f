"""Samplers composed once from pure log-prob filters (mlx-lm style).

Each filter maps `(rows, vocab)` log-probs to log-probs with dropped tokens at −inf and checks its
own range; `make_sampler` chains only the filters that are switched on and returns one callable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["Sampler", "apply_top_k", "apply_top_p", "apply_min_p", "make_filter", "make_sampler"]

Sampler = Callable[[torch.Tensor, Sequence[torch.Generator | None]], torch.Tensor]
LogprobFilter = Callable[[torch.Tensor], torch.Tensor]

_NEG_INF = float("-inf")


def apply_top_k(logprobs: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the `k` highest-scoring tokens of each row."""
    if k <= 0:
        raise ValueError(f"`top_k` must be > 0, got {k}")
    if k >= logprobs.shape[-1]:
        return logprobs
    kth = logprobs.topk(k, dim=-1).values[..., -1:]
    return logprobs.masked_fill(logprobs < kth, _NEG_INF)


def apply_top_p(logprobs: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of best tokens whose probability mass reaches `p` (at least one)."""
    if not 0 < p <= 1:
        raise ValueError(f"`top_p` must be in (0, 1], got {p}")
    if p == 1:
        return logprobs
    sorted_lp, order = logprobs.sort(dim=-1, descending=True)
    probs = sorted_lp.softmax(-1)
    mass_before = probs.cumsum(-1) - probs
    drop_sorted = mass_before >= p
    drop_sorted[..., 0] = False  # the best token always stays (p below float32's range keeps one)
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logprobs.masked_fill(drop, _NEG_INF)


def apply_min_p(logprobs: torch.Tensor, min_p: float) -> torch.Tensor:
    """Drop tokens whose probability is below `min_p` times the row's best."""
    if not 0 <= min_p < 1:
        raise ValueError(f"`min_p` must be in [0, 1), got {min_p}")
    if min_p == 0:
        return logprobs
    lp = logprobs.log_softmax(-1)
    threshold = lp.max(-1, keepdim=True).values + torch.log(torch.tensor(min_p))
    return logprobs.masked_fill(lp < threshold, _NEG_INF)


def make_filter(
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
) -> LogprobFilter:
    """Temperature then top-k, top-p, min-p, composed once; returns log-probs ready to sample."""
    steps: list[LogprobFilter] = []
    if temperature not in (0, 1):
        # relative to the row's best first, so a tiny temperature gives -inf, never inf - inf = nan
        steps.append(lambda lp: (lp - lp.amax(-1, keepdim=True)) / temperature)
    if top_k is not None:
        steps.append(lambda lp: apply_top_k(lp, top_k))
    if top_p is not None and top_p < 1:
        steps.append(lambda lp: apply_top_p(lp, top_p))
    if min_p:
        steps.append(lambda lp: apply_min_p(lp, min_p))

    def run(lp: torch.Tensor) -> torch.Tensor:
        for step in steps:
            lp = step(lp)
        return lp

    return run


def make_sampler(
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
) -> Sampler:
    """One callable `(logprobs (rows, vocab), generators per row) -> token ids (rows,)`.

    `temperature == 0` returns the greedy sampler straight away. Each row samples with its own
    `torch.Generator`, so a row's draw does not depend on which other rows share the batch.
    """
    if temperature == 0:
        return lambda lp, gens: lp.argmax(-1)
    filt = make_filter(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    top_k_only = top_k is not None and (top_p is None or top_p >= 1) and not min_p
    scale = make_filter(temperature=temperature)  # the temperature step alone, for the top-k path

    def sample(lp: torch.Tensor, gens: Sequence[torch.Generator | None]) -> torch.Tensor:
        if top_k_only and top_k < lp.shape[-1] // 2:
            return _sample_top_k(scale(lp.float()), top_k, gens)
        filtered = filt(lp.float())
        kept = (filtered > _NEG_INF).sum(-1).tolist()
        out = torch.empty(filtered.shape[0], dtype=torch.long, device=filtered.device)
        for i, g in enumerate(gens):
            out[i] = _draw(filtered[i], kept[i], g)
        return out

    return sample


def _sample_top_k(lp: torch.Tensor, k: int, gens: Sequence[torch.Generator | None]) -> torch.Tensor:
    """Top-k sampling from one `topk` of the batch: the same draws as filtering the vocabulary and
    then drawing over the kept tokens (`_draw`), without the vocabulary-wide compare and fill (on CPU
    a bool mask over 8 × 49 152 costs about as much as the `topk` itself). A row whose k-th best
    ties the next one keeps every tied token, as the filter does: it takes the general path.
    `lp` is already temperature-scaled."""
    values, ids = lp.topk(k + 1, dim=-1)
    tied = ((values[:, k] == values[:, k - 1]) & (values[:, k] > _NEG_INF)).tolist()
    kept = (values[:, :k] > _NEG_INF).sum(-1).tolist()
    out = torch.empty(lp.shape[0], dtype=torch.long, device=lp.device)
    for i, g in enumerate(gens):
        if tied[i]:
            out[i] = _draw(apply_top_k(lp[i : i + 1], k)[0], int((lp[i] >= values[i, k]).sum()), g)
            continue
        n = max(kept[i], 1)
        out[i] = ids[i, torch.multinomial(values[i, :n].softmax(-1), 1, generator=g)[0]]
    return out


def _draw(row: torch.Tensor, kept: int, generator: torch.Generator | None) -> torch.Tensor:
    """One token from one row of filtered log-probs, drawn over the `kept` tokens the filters left
    (best first), or over the whole vocabulary when they left most of it. Same distribution as a draw
    over the vocabulary at a fraction of the cost: `torch.multinomial` draws one exponential variate
    per entry it is given (49 k per row and step for SmolLM2, 6 % of a STEER decode step at top-k 10
    before this). Each row on its own, so a row's draw never depends on the rows beside it."""
    if kept > row.shape[-1] // 2:
        return torch.multinomial(row.softmax(-1), 1, generator=generator)[0]
    values, ids = row.topk(max(kept, 1))
    return ids[torch.multinomial(values.softmax(-1), 1, generator=generator)[0]]
