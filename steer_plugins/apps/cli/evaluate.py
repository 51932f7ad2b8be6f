"""`steer evaluate`: score synthetic files against real examples (diversity and fidelity)."""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path
from typing import Any

from ..eval.bootstrap import DEFAULT_COSTLY_RESAMPLES, DEFAULT_RESAMPLES
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
  steer evaluate --reference real.jsonl steer.jsonl plain.jsonl --ci --html report.html
Inputs: JSONL with a `text` field, or plain text with one example per line. Every set (and the reference)
is subsampled (seeded) to the smallest size, printed as `sample size used`; every set and the reference need
at least 2 examples. completion_rate reads each JSONL row's `finish_reason` ("stop" vs "length"). --ci adds a
95% interval to every metric (half-sample bootstrap, --resamples B, seeded by --seed; self-BLEU, MAUVE and
AUROC take about a second per resample and get --resamples-costly).
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
    e.add_argument("--ci", action="store_true", help="95%% bootstrap intervals for every metric (seeded)")
    e.add_argument(
        "--resamples",
        type=int,
        default=DEFAULT_RESAMPLES,
        help="bootstrap resamples B for --ci (default %(default)s)",
    )
    e.add_argument(
        "--resamples-costly",
        type=int,
        default=DEFAULT_COSTLY_RESAMPLES,
        help="resamples for self-BLEU, MAUVE and AUROC (about 1 s each; normal interval) (default %(default)s)",
    )
    e.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report here")
    e.set_defaults(func=run)
    return e


def run(args: argparse.Namespace) -> int:
    """Print the metrics table of every synthetic file (JSON with `--json`, a page with `--html`)."""
    from ..eval import evaluate, evaluate_with_ci, format_table, read_finish_reasons
    from ..eval.bootstrap import costly

    reference = read_examples(args.reference, "reference")
    synthetic, reasons = {}, {}
    for path in args.synthetic:
        if path in synthetic:
            raise CLIError(f"synthetic file `{path}` given twice")
        synthetic[path] = read_examples(path, "synthetic")
        found = read_finish_reasons(path)
        if found is not None:
            reasons[path] = found
    if args.ci and args.resamples < 2:
        raise CLIError(f"--resamples must be >= 2, got {args.resamples}")
    kwargs = {
        "metrics": args.metrics,
        "seed": args.seed,
        "sample_size": args.sample_size,
        "reference_name": f"{args.reference} (real)" if args.show_reference else None,
        "finish_reasons": reasons,
    }
    if args.ci:
        fewer = costly(max(2, args.resamples_costly))
        results = evaluate_with_ci(synthetic, reference, resamples=args.resamples, fewer=fewer, **kwargs)
    else:
        results = evaluate(synthetic, reference, **kwargs)
    n = next(iter(results.values()))["sample_size"]
    print(format_table(results))
    ci = (
        f"; 95% intervals from {args.resamples} half-sample resamples ({args.resamples_costly} for self-BLEU, MAUVE, AUROC)"
        if args.ci
        else ""
    )
    print(
        f"sample size used: {n} examples per set (seeded subsample, seed={args.seed}; "
        f"reference has {len(reference)}){ci}"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    if args.html:
        from ..report import write_report

        write_report(
            args.html,
            title="steer evaluate",
            results=results,
            samples=synthetic,
            reference=reference,
            notes=[f"reference: {args.reference} ({len(reference)} examples); seed {args.seed}{ci}"],
        )
        print(f"wrote {args.html}")
    return 0
