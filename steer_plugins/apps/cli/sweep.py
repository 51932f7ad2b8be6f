"""`steer sweep`: a γ × η grid: generate, evaluate, heat maps and a diversity–fidelity Pareto plot."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..eval.metrics import METRICS
from ..sweep import DEFAULT_DIVERSITY_METRIC, DEFAULT_FIDELITY_METRIC
from ._common import (
    add_config_flags,
    add_model_flags,
    add_subcommand,
    count_word,
    make_config,
    read_examples,
    set_threads,
    split_settings,
)
from ._setup import build_engine, pool_for, resolve_prompt

__all__ = ["HELP", "EPILOG", "DEFAULT_GRID", "DEFAULT_N", "add_parser", "run"]

HELP = "γ × η grid: generate, evaluate, heat maps and a diversity–fidelity Pareto plot."
EPILOG = """example:
  steer sweep --reference heldout.jsonl --pool train.jsonl --gammas 0,0.4,0.8 --etas 0,0.4,0.8 \\
      --n 32 --max-new-tokens 40 --stop '?' --out sweep/
Writes sweep/g<γ>_e<η>.jsonl per cell (resumable), sweep/sweep.json, sweep/heatmap_<metric>.png,
sweep/pareto.png (diversity vs fidelity; the Pareto front is joined) and sweep/report.html (one
self-contained page: table, plots, samples with invented words highlighted).
"""
DEFAULT_GRID = "0,0.4,0.8"
"""Default `--gammas` and `--etas`."""
DEFAULT_N = 32
"""Default samples per cell."""


def add_parser(subs: Any) -> argparse.ArgumentParser:
    """Register `steer sweep` on the subparsers `subs`."""
    s = add_subcommand(subs, "sweep", HELP, EPILOG)
    s.add_argument("--reference", required=True, help="held-out real examples to score against")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--gammas", default=DEFAULT_GRID)
    s.add_argument("--etas", default=DEFAULT_GRID)
    s.add_argument("--n", type=int, default=DEFAULT_N, help="samples per cell")
    s.add_argument("--metrics", help=f"comma-separated subset (default all {count_word(len(METRICS))})")
    s.add_argument("--diversity-metric", default=DEFAULT_DIVERSITY_METRIC)
    s.add_argument("--fidelity-metric", default=DEFAULT_FIDELITY_METRIC)
    s.add_argument("--close-with", help="re-append this stop string, e.g. '?'")
    s.add_argument("--quiet", action="store_true")
    add_model_flags(s)
    add_config_flags(s)
    s.set_defaults(func=run)
    return s


def run(args: argparse.Namespace) -> int:
    """Run the grid into `--out`; prints the metrics table, the Pareto front and the plot paths."""
    from ..eval import format_table
    from ..sweep import parse_grid, run_sweep

    settings, fields = split_settings(args, {})
    seed = fields.pop("seed", None)
    seed = 0 if seed is None else seed
    gammas = parse_grid(args.gammas, name="--gammas")
    etas = parse_grid(args.etas, name="--etas")
    reference = read_examples(args.reference, "reference")
    metrics = [m.strip() for m in args.metrics.split(",")] if args.metrics else None
    config = make_config(fields)
    set_threads(settings.get("threads"))
    engine = build_engine({**settings, "chunk_size": args.n}, config, pool=pool_for(settings))
    try:
        prompt = resolve_prompt(engine, settings)
        t0 = time.perf_counter()
        result = run_sweep(
            engine,
            prompt,
            reference,
            args.out,
            gammas=gammas,
            etas=etas,
            n=args.n,
            metrics=metrics,
            diversity_metric=args.diversity_metric,
            fidelity_metric=args.fidelity_metric,
            close_with=settings.get("close_with"),
            progress=not args.quiet,
            seed=seed,
        )
    finally:
        engine.close()
    print(format_table(result["results"]))
    front = ", ".join(result["pareto_front"])
    print(f"Pareto front ({args.diversity_metric} vs {args.fidelity_metric}): {front}")
    print("plots:", *result["plots"], sep="\n  ")
    print(f"report: {result['report']}")
    print(f"{time.perf_counter() - t0:.0f} s; results in {Path(args.out) / 'sweep.json'}")
    return 0
