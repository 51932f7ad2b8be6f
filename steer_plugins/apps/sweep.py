"""The γ × η trade-off: generate a grid, evaluate every cell, draw heat maps and a Pareto plot.

`run_sweep` generates one resumable JSONL per (γ, η) cell (`g0.4_e0.8.jsonl`), scores all cells
against the real reference at one common sample size, and writes `sweep.json` plus PNGs:
`heatmap_<metric>.png` for each metric, `pareto.png` (diversity vs fidelity, the
non-dominated cells joined) and `report.html` (`steer_plugins.apps.report`: the table, the plots and
samples of every cell with invented words highlighted, in one self-contained page). Plots use matplotlib's Agg backend (no display needed).

Example:
    >>> parse_grid("0,0.4,0.8")
    [0.0, 0.4, 0.8]
    >>> pareto_front([("a", 0.9, 0.1), ("b", 0.5, 0.5), ("c", 0.4, 0.4)])
    ['a', 'b']
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .eval.lexicon import read_finish_reasons
from .eval.metrics import METRICS, evaluate, higher_is_better
from .pipeline import generate_to_file
from .report import write_report

__all__ = [
    "DEFAULT_DIVERSITY_METRIC",
    "DEFAULT_FIDELITY_METRIC",
    "parse_grid",
    "cell_name",
    "pareto_front",
    "plot_heatmaps",
    "plot_pareto",
    "run_sweep",
]

DEFAULT_DIVERSITY_METRIC = "normalised_3grams"
DEFAULT_FIDELITY_METRIC = "cosine_centroid"


def parse_grid(spec: str | Sequence[float], *, name: str = "grid") -> list[float]:
    """`"0,0.4,0.8"` → `[0.0, 0.4, 0.8]`; each value must be a finite number >= 0."""
    items = [s.strip() for s in spec.split(",") if s.strip()] if isinstance(spec, str) else list(spec)
    if not items:
        raise ValueError(f"`{name}` is empty: give comma-separated values such as 0,0.4,0.8")
    values = []
    for item in items:
        try:
            v = float(item)
        except (TypeError, ValueError):
            raise ValueError(f"`{name}` value {item!r} is not a number: use e.g. 0,0.4,0.8") from None
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"`{name}` value {v!r} must be a finite number >= 0")
        values.append(v)
    return values


def cell_name(gamma: float, eta: float) -> str:
    """File stem of one grid cell: `g0.4_e0.8`."""
    return f"g{gamma:g}_e{eta:g}"


def pareto_front(points: Sequence[tuple[str, float, float]]) -> list[str]:
    """Labels of the non-dominated points, both coordinates higher-is-better, sorted by x descending."""
    ok = [p for p in points if math.isfinite(p[1]) and math.isfinite(p[2])]
    front = [
        p for p in ok if not any(q[1] >= p[1] and q[2] >= p[2] and (q[1] > p[1] or q[2] > p[2]) for q in ok)
    ]
    return [p[0] for p in sorted(front, key=lambda p: -p[1])]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_heatmaps(
    grid: Mapping[tuple[float, float], Mapping[str, float]],
    gammas: Sequence[float],
    etas: Sequence[float],
    out_dir: str | os.PathLike[str],
    metrics: Sequence[str],
    *,
    title_prefix: str = "",
) -> list[Path]:
    """One `heatmap_<metric>.png` per metric: rows γ, columns η, each cell annotated with its value."""
    import numpy as np

    plt = _plt()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for metric in metrics:
        values = np.array(
            [[float(grid.get((g, e), {}).get(metric, float("nan"))) for e in etas] for g in gammas]
        )
        fig, ax = plt.subplots(figsize=(1.2 * len(etas) + 2.2, 1.0 * len(gammas) + 1.6))
        cmap = "viridis" if higher_is_better(metric) else "viridis_r"
        im = ax.imshow(values, cmap=cmap, origin="lower", aspect="auto")
        ax.set_xticks(range(len(etas)), [f"{e:g}" for e in etas])
        ax.set_yticks(range(len(gammas)), [f"{g:g}" for g in gammas])
        ax.set_xlabel("η (negative prompting)")
        ax.set_ylabel("γ (expert guidance)")
        ax.set_title(f"{title_prefix}{metric}")
        lo, hi = np.nanmin(values), np.nanmax(values)
        for i in range(len(gammas)):
            for j in range(len(etas)):
                if math.isfinite(values[i, j]):
                    frac = (values[i, j] - lo) / (hi - lo) if hi > lo else 0.5
                    light = frac > 0.6 if higher_is_better(metric) else frac < 0.4
                    color = "black" if light else "white"
                    ax.text(j, i, f"{values[i, j]:.3f}", ha="center", va="center", color=color, fontsize=8)
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        path = out_dir / f"heatmap_{metric}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_pareto(
    points: Sequence[tuple[str, float, float]],
    out_path: str | os.PathLike[str],
    *,
    x_label: str = DEFAULT_DIVERSITY_METRIC,
    y_label: str = DEFAULT_FIDELITY_METRIC,
    title: str = "diversity vs fidelity",
) -> Path:
    """Scatter `(label, x, y)` points (both higher-is-better) and join the Pareto front."""
    plt = _plt()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    front = set(pareto_front(points))
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for label, x, y in points:
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        ax.scatter([x], [y], color="C3" if label in front else "C0", zorder=3)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    line = sorted((p for p in points if p[0] in front), key=lambda p: p[1])
    if len(line) > 1:
        ax.plot([p[1] for p in line], [p[2] for p in line], color="C3", lw=1, label="Pareto front")
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel(f"{x_label} (diversity, higher is better)")
    ax.set_ylabel(f"{y_label} (fidelity, higher is better)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def _oriented(metric: str, scores: Mapping[str, float]) -> float:
    """`scores[metric]`, negated when lower is better, so the Pareto front can maximise both axes."""
    value = scores[metric]
    return value if higher_is_better(metric) else -value


def _generate_cells(
    engine: Any,
    prompt: str,
    n: int,
    out_dir: Path,
    cells: Sequence[tuple[float, float]],
    *,
    seed: int,
    **kwargs: Any,
) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Generate (or resume) `<out_dir>/<cell>.jsonl` for each (γ, η); returns (texts, stats) by cell name.

    Every cell's negative pool starts as the engine's pool did when the sweep began.
    """
    from ..core.negatives import NegativePool
    from .data_io import read_texts

    start_pool = engine.pool.texts
    num_real = engine.pool.num_real
    texts: dict[str, list[str]] = {}
    gen_stats: dict[str, Any] = {}
    for g, e in cells:
        name = cell_name(g, e)
        pool = NegativePool(start_pool[:num_real], seed=seed)
        pool.add(start_pool[num_real:])
        path = out_dir / f"{name}.jsonl"
        stats = generate_to_file(engine, prompt, n, path, pool=pool, gamma=g, eta=e, seed=seed, **kwargs)
        gen_stats[name] = stats.to_dict()
        texts[name] = read_texts(path)
    return texts, gen_stats


def _write_sweep_report(
    out_dir: Path,
    result: Mapping[str, Any],
    texts: Mapping[str, Sequence[str]],
    reference: Sequence[str],
    points: Sequence[tuple[str, float, float]],
) -> Path:
    """`report.html`: the table, the Pareto plot, the γ × η heat maps and every cell's samples."""
    front = ", ".join(result["pareto_front"])
    return write_report(
        out_dir / "report.html",
        title=f"steer sweep: γ {result['gammas']} × η {result['etas']}, n={result['n']}",
        results=result["results"],
        samples=texts,
        reference=list(reference),
        notes=[f"Pareto front ({result['diversity_metric']} vs {result['fidelity_metric']}): {front}"],
        pareto=points,
        x_label=result["diversity_metric"],
        y_label=result["fidelity_metric"],
        images={f"γ × η heat map: {Path(p).stem.removeprefix('heatmap_')}": p for p in result["plots"][:-1]},
    )


def run_sweep(
    engine: Any,
    prompt: str,
    reference: Sequence[str],
    out_dir: str | os.PathLike[str],
    *,
    gammas: Sequence[float],
    etas: Sequence[float],
    n: int,
    metrics: Sequence[str] | None = None,
    diversity_metric: str = DEFAULT_DIVERSITY_METRIC,
    fidelity_metric: str = DEFAULT_FIDELITY_METRIC,
    close_with: str | None = None,
    progress: bool = False,
    seed: int = 0,
    **overrides: Any,
) -> dict[str, Any]:
    """Generate, evaluate and plot a γ × η grid; returns (and writes) the `sweep.json` content.

    Each cell starts from the engine's pool as it was when the sweep began (real examples), so
    cells do not see each other's outputs as negatives. Cells already on disk are resumed.
    """
    if not reference:
        raise ValueError("`reference` is empty: pass at least one real example to compare against")
    chosen = list(metrics) if metrics else list(METRICS)
    for m in (diversity_metric, fidelity_metric):
        if m not in chosen:
            raise ValueError(
                f"Pareto metric `{m}` is not among the computed metrics {chosen}: add it to --metrics"
            )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cells = [(g, e) for g in gammas for e in etas]
    texts, gen_stats = _generate_cells(
        engine, prompt, n, out_dir, cells, seed=seed, close_with=close_with, progress=progress, **overrides
    )
    reasons = {name: read_finish_reasons(out_dir / f"{name}.jsonl") for name in texts}
    scores = evaluate(
        texts,
        list(reference),
        metrics=chosen,
        seed=seed,
        finish_reasons={k: v for k, v in reasons.items() if v is not None},
    )
    grid = {(g, e): scores[cell_name(g, e)] for g, e in cells}
    heatmaps = plot_heatmaps(grid, gammas, etas, out_dir, chosen)
    points = [
        (
            f"γ{g:g} η{e:g}",
            _oriented(diversity_metric, grid[(g, e)]),
            _oriented(fidelity_metric, grid[(g, e)]),
        )
        for g, e in cells
    ]
    pareto = plot_pareto(points, out_dir / "pareto.png", x_label=diversity_metric, y_label=fidelity_metric)
    result = {
        "gammas": list(gammas),
        "etas": list(etas),
        "n": n,
        "metrics": chosen,
        "results": scores,
        "generation": gen_stats,
        "pareto_front": pareto_front(points),
        "diversity_metric": diversity_metric,
        "fidelity_metric": fidelity_metric,
        "plots": [str(p) for p in [*heatmaps, pareto]],
        "overrides": overrides,
    }
    result["report"] = str(_write_sweep_report(out_dir, result, texts, reference, points))
    (out_dir / "sweep.json").write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    return result
