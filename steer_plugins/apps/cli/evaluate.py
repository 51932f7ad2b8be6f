"""`steer evaluate`: score synthetic files against real examples (diversity and fidelity)."""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path
from typing import Any

from ..eval.metrics import EMBEDDING_METRICS, METRICS
from ._common import CLIError, add_subcommand, count_word, read_examples

__all__ = ["HELP", "EPILOG", "add_parser", "run"]

HELP = "Score synthetic files against real examples (diversity and fidelity)."
_METRIC_LINES = textwrap.fill(
    f"Metrics: {', '.join(METRICS)} (the last {count_word(len(EMBEDDING_METRICS))} load the MiniLM "
    "embedding model).",
    width=105,
)
EPILOG = f"""examples:
  steer evaluate --reference real.jsonl steer.jsonl plain.jsonl
  steer evaluate --reference real.txt synth.jsonl --metrics normalised_3grams,diversity --json scores.json
Inputs: JSONL with a `text` field, or plain text with one example per line. Every set (and the reference)
is subsampled (seeded) to the smallest size, printed as `sample size used`.
{_METRIC_LINES}
"""


def add_parser(subs: Any) -> argparse.ArgumentParser:
    """Register `steer evaluate` on the subparsers `subs`."""
    e = add_subcommand(subs, "evaluate", HELP, EPILOG)
    e.add_argument("--reference", required=True, help="the real examples (JSONL or plain text)")
    e.add_argument("synthetic", nargs="+", help="one or more synthetic files")
    e.add_argument("--metrics", help="comma-separated subset, e.g. normalised_3grams,diversity (default all)")
    e.add_argument("--json", help="write {file: {metric: value}} here")
    e.add_argument("--sample-size", type=int, help="cap on the common sample size")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--show-reference", action="store_true", help="also score the reference's own diversity")
    e.set_defaults(func=run)
    return e


def run(args: argparse.Namespace) -> int:
    """Print the metrics table of every synthetic file (and write it as JSON with `--json`)."""
    from ..eval import evaluate, format_table

    reference = read_examples(args.reference, "reference")
    synthetic = {}
    for path in args.synthetic:
        if path in synthetic:
            raise CLIError(f"synthetic file `{path}` given twice")
        synthetic[path] = read_examples(path, "synthetic")
    results = evaluate(
        synthetic,
        reference,
        metrics=args.metrics,
        seed=args.seed,
        sample_size=args.sample_size,
        reference_name=f"{args.reference} (real)" if args.show_reference else None,
    )
    n = next(iter(results.values()))["sample_size"]
    print(format_table(results))
    print(
        f"sample size used: {n} examples per set (seeded subsample, seed={args.seed}; reference has {len(reference)})"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0
