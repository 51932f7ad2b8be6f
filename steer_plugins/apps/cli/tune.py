"""`steer tune`: find the most diverse γ, η, α that keeps fidelity within a budget, on your real examples."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ..tune import (
    DEFAULT_ALPHAS,
    DEFAULT_ETAS,
    DEFAULT_GAMMAS,
    DEFAULT_MAX_MINUTES,
    DEFAULT_WHOLE_WORDS,
    RECIPE_NAME,
    SEARCHED_FIELDS,
    Budget,
)
from ._common import (
    DEFAULT_EXPERT,
    CLIError,
    add_config_flags,
    add_subcommand,
    log,
    make_config,
    read_examples,
    set_threads,
    split_settings,
)
from ._setup import build_engine, resolve_prompt

__all__ = ["HELP", "EPILOG", "add_parser", "run"]

HELP = "Tune γ, η, α on your real examples: the most diverse setting within a fidelity budget."
EPILOG = f"""examples:
  steer tune real.jsonl --out tuned/ --max-new-tokens 48 --stop '?' --close-with '?'
  steer tune real.jsonl --expert my-lora --out tuned/ --n 64 --invented-slack 1.0 \\
      --fidelity-metrics mauve,cosine_centroid
  steer generate --config tuned/{RECIPE_NAME} --n 500 --out synth.jsonl
A dev split of the real examples (--dev-fraction) scores every setting; the rest seed the negative pool.
The anchor is plain sampling from the expert (gamma = eta = 0). A setting meets the budget when each
--fidelity-metrics value is no worse than the anchor's 95% bootstrap interval allows and its invented-word
rate is at most the anchor's + --invented-slack points. The grid (--gammas x --etas x --alphas) is tried,
then --rounds of refinement around the best, within --max-minutes (the product default's setting first). Writes tuned/{RECIPE_NAME} (the winner, a config file for
steer generate), tuned/tune.json (every setting, its scores, why it passed or failed), tuned/report.html,
tuned/settings/*.jsonl and tuned/results.jsonl. Interrupted? Rerun: finished settings are skipped.
"""


def _floats(spec: str, flag: str, *, allow_none: bool = False) -> list[Any]:
    out: list[Any] = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if allow_none and item.lower() in ("none", "off"):
            out.append(None)
            continue
        try:
            out.append(float(item))
        except ValueError:
            raise CLIError(f"{flag}: {item!r} is not a number (use e.g. 0,0.4)") from None
    if not out:
        raise CLIError(f"{flag} is empty")
    return out


def add_parser(subs: Any) -> argparse.ArgumentParser:
    """Register `steer tune` on the subparsers `subs`."""
    t = add_subcommand(subs, "tune", HELP, EPILOG)
    t.add_argument("real", help="your real examples (JSONL or plain text)")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument(
        "--expert", help=f"expert model (default: the shipped adapter {Path(DEFAULT_EXPERT).name})"
    )
    t.add_argument("--base", help="base model (default: the adapter's base with the adapter off)")
    t.add_argument("--prompt", help="exact prompt string (default: the adapter's recorded training prompt)")
    t.add_argument("--instruction", help="an instruction; wrapped in the tokenizer's chat template")
    t.add_argument("--n", type=int, default=48, help="rows generated per setting (default %(default)s)")
    t.add_argument("--dev-fraction", type=float, default=0.25, help="share held out for scoring")
    t.add_argument("--gammas", default=",".join(f"{g:g}" for g in DEFAULT_GAMMAS))
    t.add_argument("--etas", default=",".join(f"{e:g}" for e in DEFAULT_ETAS))
    t.add_argument("--alphas", default=",".join("none" if a is None else f"{a:g}" for a in DEFAULT_ALPHAS))
    t.add_argument("--rounds", type=int, default=1, help="refinement rounds after the grid")
    t.add_argument(
        "--max-minutes",
        type=float,
        default=DEFAULT_MAX_MINUTES,
        help="time budget: a setting starts only if it is expected to finish within it (the anchor and "
        "the first grid setting always run; 0 = no limit; default %(default)s)",
    )
    t.add_argument("--fidelity-metrics", default=",".join(Budget().within), help="'none' for no such check")
    t.add_argument("--invented-slack", type=float, default=0.5, help="points above the anchor's rate")
    t.add_argument("--diversity-metric", default=Budget().diversity)
    t.add_argument("--resamples", type=int, default=200, help="bootstrap resamples for the anchor")
    t.add_argument("--close-with", help="re-append this stop string, e.g. '?'")
    t.add_argument("--threads", type=int, help="torch CPU threads")
    t.add_argument("--device", help="torch device, e.g. cuda (default cpu)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(t)
    t.set_defaults(func=run)
    return t


def _budget(args: argparse.Namespace) -> Budget:
    from ..eval.metrics import REGISTRY

    within = (
        ()
        if args.fidelity_metrics.strip().lower() == "none"
        else tuple(m.strip() for m in args.fidelity_metrics.split(",") if m.strip())
    )
    unknown = [m for m in (*within, args.diversity_metric) if m not in REGISTRY]
    if unknown:
        raise CLIError(f"unknown metric(s) {unknown}; choose from {', '.join(REGISTRY)}")
    if args.invented_slack < 0:
        raise CLIError(f"--invented-slack must be >= 0 points, got {args.invented_slack}")
    return Budget(within=within, invented_slack=args.invented_slack / 100.0, diversity=args.diversity_metric)


def _recipe_settings(args: argparse.Namespace, fields: dict[str, Any], prompt: str) -> dict[str, Any]:
    """The run keys and config fields the winner's recipe carries (absolute paths)."""

    def absolute(spec: str) -> str:
        """`spec` as an absolute path when it names an existing file or folder (a model name as is)."""
        return str(Path(spec).resolve()) if Path(spec).exists() else spec

    settings: dict[str, Any] = {
        "expert": absolute(args.expert or DEFAULT_EXPERT),
        "pool": absolute(args.real),
        "prompt": prompt,
    }
    if args.base:
        settings["base"] = absolute(args.base)
    if args.close_with:
        settings["close_with"] = args.close_with
    config = {k: v for k, v in fields.items() if k not in SEARCHED_FIELDS}
    return {**settings, "config": config}


def run(args: argparse.Namespace) -> int:
    """Run the search into `--out`; prints the table of settings and the winner's recipe path."""
    from ..eval.table import format_table
    from ..tune import initial_grid, run_tune

    settings, fields = split_settings(args, {})
    real = read_examples(args.real, "real examples")
    budget = _budget(args)
    grid = initial_grid(
        _floats(args.gammas, "--gammas"),
        _floats(args.etas, "--etas"),
        _floats(args.alphas, "--alphas", allow_none=True),
        # --whole-words / --no-whole-words fixes the grid's mode; neither tries the default modes
        DEFAULT_WHOLE_WORDS if fields.get("whole_words") is None else (fields["whole_words"],),
    )
    if args.n < 2 or args.rounds < 0 or args.resamples < 2 or args.max_minutes < 0:
        raise CLIError("--n and --resamples must be >= 2, --rounds and --max-minutes >= 0")
    set_threads(settings.get("threads"))
    engine = build_engine(settings, make_config(fields), pool=None)
    bar = None
    if not args.quiet:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=1 + len(grid) + 4 * args.rounds, unit="setting", desc="steer tune", dynamic_ncols=True
        )
    try:
        prompt = resolve_prompt(engine, settings)
        t0 = time.perf_counter()

        def step(name: str, record: dict[str, Any]) -> None:
            """Advance the progress bar by one scored setting."""
            value = record["scores"].get(budget.diversity, float("nan"))
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"{name}: {budget.diversity} {value:.3f}")

        result = run_tune(
            engine, prompt, real, args.out, n=args.n, dev_fraction=args.dev_fraction, budget=budget,
            grid=grid, rounds=args.rounds, seed=fields.get("seed") or 0, resamples=args.resamples,
            close_with=args.close_with, settings=_recipe_settings(args, fields, prompt), on_setting=step,
            max_seconds=args.max_minutes * 60 or None,
        )  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
        engine.close()
    rows = {k: {m: v for m, v in r.items() if m != "misses"} for k, r in result["results"].items()}
    print(format_table(rows))
    for name, row in result["results"].items():
        print(f"  {name}: {'meets the budget' if not row['misses'] else '; '.join(row['misses'])}")
    if result["skipped"]:
        print(
            f"  not tried within --max-minutes {args.max_minutes:g}: {', '.join(result['skipped'])} "
            "(rerun with a larger --max-minutes to add them; finished settings are reused)"
        )
    print(f"winner: {result['winner']} {json.dumps(result['winner_setting'])}")
    print(f"recipe: {result['recipe']}  (steer generate --config {result['recipe']} --n N --out FILE)")
    print(f"report: {Path(args.out) / 'report.html'}; {time.perf_counter() - t0:.0f} s")
    log(f"{len(result['tried'])} settings in {Path(args.out) / 'tune.json'}")
    return 0
