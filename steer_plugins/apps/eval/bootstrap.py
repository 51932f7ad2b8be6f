"""95 % intervals for every metric: a seeded half-sample bootstrap.

Why not the textbook bootstrap (draw n texts *with* replacement)? Most metrics here measure how
different the texts of a set are from each other (n-gram ratios, self-BLEU, Vendi, MAUVE's
clusters): a resample with repeated texts is less diverse than any real sample of the same size, so
its intervals would sit below the estimate they are meant to bracket. Each resample instead draws
`⌊n/2⌋` distinct texts of the set and, independently, `⌊n/2⌋` of the reference (half-sampling,
McCarthy 1969): for a mean, the variance of a half-sample drawn without replacement from n values is
σ²/n, the variance of the full-size estimate. Metrics that depend on the sample size have a
different *level* at n/2, so only the spread is used: with `v_b` the B resample values,

    interval = estimate + [q_2.5(v_b − mean v), q_97.5(v_b − mean v)]

Resample b of every set uses the same reference half-sample (seeded by `seed` and b), so intervals
of different sets share the reference's noise, and the study can average replicate b over seeds.

Example:
    >>> from steer_plugins.apps.eval.bootstrap import evaluate_with_ci
    >>> real = [f"is star {i} a binary?" for i in range(20)]
    >>> out = evaluate_with_ci({"s": [f"does star {i} pulse?" for i in range(20)]}, real,
    ...                        metrics=["distinct_2"], resamples=50)
    >>> lo, hi = out["s"]["ci"]["distinct_2"]
    >>> lo <= out["s"]["distinct_2"] <= hi
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .metrics import Metric, MetricInput, SampleOptions, compute, prepare

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "DEFAULT_RESAMPLES",
    "DEFAULT_CONFIDENCE",
    "MIN_PERCENTILE_RESAMPLES",
    "COSTLY_METRICS",
    "DEFAULT_COSTLY_RESAMPLES",
    "costly",
    "replicates",
    "interval",
    "evaluate_with_ci",
]

DEFAULT_RESAMPLES = 200
"""Resamples B per interval (`steer evaluate --resamples`)."""
DEFAULT_CONFIDENCE = 0.95
COSTLY_METRICS = ("self_bleu", "mauve", "adversarial_auroc")
"""Metrics that take about a second per call on 2 CPU cores: bootstrapped with fewer resamples."""
DEFAULT_COSTLY_RESAMPLES = 30
"""Resamples for `COSTLY_METRICS` (`steer evaluate --resamples-costly`); their interval is the normal one."""
MIN_PERCENTILE_RESAMPLES = 100
"""Below this many finite replicates, `interval` is the normal one (mean ± z·sd)."""


def costly(resamples: int = DEFAULT_COSTLY_RESAMPLES) -> dict[str, int]:
    """`fewer=` for `replicates`: `resamples` for each of `COSTLY_METRICS`."""
    return {m: resamples for m in COSTLY_METRICS}


def _half(size: int, rng: np.random.Generator) -> np.ndarray:
    """`⌊size/2⌋` (at least 2, at most `size`) distinct indices, sorted."""
    k = min(size, max(2, size // 2))
    return np.sort(rng.choice(size, k, replace=False))


def _resampled(given: MetricInput, idx: np.ndarray, ref_idx: np.ndarray | None) -> MetricInput:
    """`given` restricted to the texts `idx` and the reference embeddings `ref_idx`."""
    texts = [given.texts[i] for i in idx]
    reasons = None if given.finish_reasons is None else [given.finish_reasons[i] for i in idx]
    emb = None if given.embeddings is None else given.embeddings[idx]
    real = None if given.real_embeddings is None or ref_idx is None else given.real_embeddings[ref_idx]
    return replace(given, texts=texts, embeddings=emb, real_embeddings=real, finish_reasons=reasons)


def replicates(
    chosen: Sequence[Metric],
    given: MetricInput,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    fewer: Mapping[str, int] | None = None,
) -> dict[str, np.ndarray]:
    """The B half-sample values of every chosen metric for one prepared set (see the module doc).

    Args:
        chosen: the metrics (from `prepare`).
        given: one set's `MetricInput` (from `prepare`); the reference's own row too.
        resamples: B, at least 2.
        seed: seeds the half-samples; replicate b draws the same reference half-sample for every
            set given the same `seed`.
        fewer: metric → a smaller B for costly metrics (MAUVE, AUROC take about a second each);
            such a metric is computed on the first B' of the B half-samples.

    Returns:
        metric name → array of B values (NaN where a resample's value is undefined).
    """
    if resamples < 2:
        raise ValueError(f"`resamples` must be >= 2, got {resamples}")
    metrics = [m for m in chosen if not (given.own and m.uses_reference)]
    n_ref = 0 if given.real_embeddings is None else len(given.real_embeddings)
    limit = {m.name: min(resamples, max(2, (fewer or {}).get(m.name, resamples))) for m in metrics}
    values = {m.name: np.full(limit[m.name], np.nan) for m in metrics}
    set_rng = np.random.default_rng([seed, 1])
    for b in range(resamples):
        idx = _half(len(given.texts), set_rng)
        ref_idx = _half(n_ref, np.random.default_rng([seed, 2, b])) if n_ref else None
        sub = _resampled(given, idx, ref_idx)
        for m in metrics:
            if b < limit[m.name]:
                values[m.name][b] = m.compute(sub)
    return values


def interval(
    estimate: float, values: Sequence[float] | np.ndarray, *, confidence: float = DEFAULT_CONFIDENCE
) -> tuple[float, float]:
    """`estimate` plus the central `confidence` quantiles of the replicates' deviations from their mean.

    With fewer than `MIN_PERCENTILE_RESAMPLES` finite replicates the tails are too thin for
    quantiles, and the normal interval `estimate ± z·sd(replicates)` is used instead. Returns
    (NaN, NaN) when the estimate is NaN or fewer than half the replicates are finite.
    """
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    if not math.isfinite(estimate) or len(finite) < max(2, len(v) / 2):
        return float("nan"), float("nan")
    tail = (1.0 - confidence) / 2.0
    dev = finite - finite.mean()
    if len(finite) < MIN_PERCENTILE_RESAMPLES:
        from statistics import NormalDist

        half = NormalDist().inv_cdf(1.0 - tail) * float(dev.std(ddof=1))
        return float(estimate - half), float(estimate + half)
    lo, hi = np.quantile(dev, [tail, 1.0 - tail])
    return float(estimate + lo), float(estimate + hi)


def _clipped(metric: str, bounds: tuple[float, float]) -> list[float]:
    """An interval clipped to the metric's range: [1, ∞) for Vendi, [0, 1] for every other metric."""
    lo, hi = bounds
    floor, ceiling = (1.0, math.inf) if metric == "vendi" else (0.0, 1.0)
    return [min(max(lo, floor), ceiling), min(max(hi, floor), ceiling)]


def evaluate_with_ci(
    synthetic: Mapping[str, Sequence[str]],
    reference: Sequence[str],
    metrics: Sequence[str] | None = None,
    seed: int = 0,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    fewer: Mapping[str, int] | None = None,
    **options: Unpack[SampleOptions],
) -> dict[str, dict[str, Any]]:
    """`evaluate`, plus a `confidence` interval for every metric of every set.

    Takes `steer_plugins.apps.eval.evaluate`'s arguments (the keyword ones, `SampleOptions`,
    pass on to `prepare`), and:

    Args:
        resamples: B half-samples per set (seeded by `seed`; same seed, same intervals).
        confidence: the interval's coverage, in (0, 1).
        fewer: metric → fewer resamples for costly metrics (see `replicates`).

    Returns:
        name → `{"sample_size": n, <metric>: value, ..., "ci": {<metric>: [lo, hi]},
        "ci_resamples": B}`.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"`confidence` must be in (0, 1), got {confidence!r}")
    chosen, inputs = prepare(synthetic, reference, metrics, seed, **options)
    results: dict[str, dict[str, Any]] = {}
    for name, given in inputs.items():
        row: dict[str, Any] = compute(chosen, given)
        reps = replicates(chosen, given, resamples=resamples, seed=seed, fewer=fewer)
        row["ci"] = {m: _clipped(m, interval(row[m], v, confidence=confidence)) for m, v in reps.items()}
        row["ci_resamples"] = resamples
        results[name] = row
    return results
