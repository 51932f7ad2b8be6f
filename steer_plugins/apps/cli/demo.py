"""`steer demo`: STEER vs plain sampling from the shipped expert, side by side, with metrics (offline)."""

from __future__ import annotations

import argparse
import textwrap
import time
from pathlib import Path
from typing import Any

from ...core.sources import DEFAULT_MODEL
from ._common import DEFAULT_EXPERT, DEFAULT_SEED_SET, add_subcommand, log, set_threads
from ._setup import quiet_loading

__all__ = ["HELP", "EPILOG", "DEMO_N", "DEMO_MAX_NEW_TOKENS", "DEMO_THREADS", "add_parser", "run"]

HELP = "Offline demo: STEER vs plain sampling from the shipped expert, side by side."
EPILOG = """example:
  steer demo                 # 8 STEER vs 8 plain hypotheses from the shipped expert, with metrics
  steer demo --n 16 --threads 1
"""
DEMO_N = 8
DEMO_MAX_NEW_TOKENS = 48
DEMO_THREADS = 1
_WIDTH = 58
"""Characters per column of the side-by-side listing."""


def add_parser(subs: Any) -> argparse.ArgumentParser:
    """Register `steer demo` on the subparsers `subs`."""
    d = add_subcommand(subs, "demo", HELP, EPILOG)
    d.add_argument("--n", type=int, default=DEMO_N, help=f"hypotheses per method (default {DEMO_N})")
    d.add_argument(
        "--max-new-tokens",
        type=int,
        default=DEMO_MAX_NEW_TOKENS,
        help=f"tokens per hypothesis at most (default {DEMO_MAX_NEW_TOKENS})",
    )
    d.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of both methods' sampling and negative draws; the same seed gives the same texts (default 0)",
    )
    d.add_argument(
        "--threads",
        type=int,
        default=DEMO_THREADS,
        help=f"torch CPU threads (default {DEMO_THREADS}: fastest when the cores are shared; "
        "try 2+ on an idle machine)",
    )
    d.add_argument("--no-embeddings", action="store_true", help="skip the MiniLM cosine metrics")
    d.set_defaults(func=run)
    return d


def _closed(results: list[Any]) -> list[str]:
    """Texts with the stop string `?` put back on those that ended on it."""
    return [r.text.strip() + ("?" if r.finish_reason == "stop" else "") for r in results]


def _describe(config: Any) -> str:
    """`γ=0.2, η=0.6, α=0.1, whole words`: the steering fields of `config` that are on."""
    parts = [f"γ={config.gamma:g}", f"η={config.eta:g}"]
    if config.alpha is not None:
        parts.append(f"α={config.alpha:g}")
    if config.whole_words:
        parts.append("whole words")
        if config.spelling_min_p is not None:
            parts.append(f"spelling min-p {config.spelling_min_p:g}")
    if config.known_words:
        parts.append("known words")
    return ", ".join(parts)


def _print_side_by_side(a: list[str], b: list[str], label: str) -> None:
    print(f"\n{f'STEER ({label})':<{_WIDTH}} | plain expert sampling (γ=η=0)")
    print("-" * _WIDTH + "-+-" + "-" * _WIDTH)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        left = textwrap.wrap(f"{i + 1}. {x}", _WIDTH) or [""]
        right = textwrap.wrap(f"{i + 1}. {y}", _WIDTH) or [""]
        for k in range(max(len(left), len(right))):
            lx = left[k] if k < len(left) else ""
            print(f"{lx:<{_WIDTH}} | {right[k] if k < len(right) else ''}")


def _scores(a: list[str], b: list[str], seeds: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Text metrics, plus the MiniLM cosines to the seed set unless `--no-embeddings` (or not installed)."""
    from ..eval import TEXT_METRICS, evaluate

    sets = {"steer": a, "expert (plain)": b}
    metrics = list(TEXT_METRICS) + ([] if args.no_embeddings else ["cosine_pairwise", "cosine_centroid"])
    try:
        return evaluate(sets, seeds, metrics=metrics, seed=args.seed, reference_name="seed set (real)")
    except ImportError as e:  # embeddings need the [eval] extra
        log(f"{e}; showing text metrics only")
        return evaluate(sets, seeds, metrics=list(TEXT_METRICS), seed=args.seed)


def run(args: argparse.Namespace) -> int:
    """Generate `--n` hypotheses each way, print them side by side, then their metrics and timings."""
    from ...core.config import SteerConfig
    from ...core.engine import SteerEngine
    from ..data_io import read_texts
    from ..eval import format_table
    from ..recipe import read_recipe_prompt

    t0 = time.perf_counter()
    set_threads(args.threads)
    seeds = read_texts(DEFAULT_SEED_SET)
    config = SteerConfig(max_new_tokens=args.max_new_tokens, stop=["?"])
    log(f"loading the shipped expert ({Path(DEFAULT_EXPERT).name} over {DEFAULT_MODEL})")
    with quiet_loading():  # no GGUF conversion bars or FutureWarnings: one log line says what loads
        engine = SteerEngine(DEFAULT_EXPERT, config=config, pool=seeds, max_batch_size=args.n)
    prompt = read_recipe_prompt(DEFAULT_EXPERT)
    log(f"loaded in {time.perf_counter() - t0:.0f} s; prompt: {prompt!r}")
    try:
        t1 = time.perf_counter()
        label = _describe(config)
        log(
            f"STEER with the default settings ({label}, K={config.num_negatives}, top-k 10): {args.n} hypotheses"
        )
        steer = engine.generate([prompt] * args.n, progress=True, seed=args.seed)
        t2 = time.perf_counter()
        log(f"plain sampling from the expert (gamma=0, eta=0, top-k 10): {args.n} hypotheses")
        plain = engine.generate(
            [prompt] * args.n, progress=True, seed=args.seed, gamma=0.0, eta=0.0, add_to_pool=False
        )
        t3 = time.perf_counter()
    finally:
        engine.close()
    a, b = _closed(steer), _closed(plain)
    _print_side_by_side(a, b, label)
    with quiet_loading():  # the scoring embedding model loads here: no weight-loading bar either
        results = _scores(a, b, seeds, args)
    print()
    print(format_table(results))
    n = next(iter(results.values()))["sample_size"]
    print(
        f"\nsample size {n} (tiny: the demo shows the mechanics, see the README for a study). "
        f"Cosines are against the shipped seed set. Timing: load {t1 - t0:.0f} s, STEER {t2 - t1:.0f} s "
        f"({sum(r.completion_tokens for r in steer)} tokens), plain {t3 - t2:.0f} s, "
        f"total {time.perf_counter() - t0:.0f} s."
    )
    return 0
