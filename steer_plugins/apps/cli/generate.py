"""`steer generate`: synthetic examples with STEER into JSONL or Parquet, resumable."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ...core.sources import DEFAULT_MODEL
from ..pipeline import DEFAULT_CHUNK_SIZE
from ._common import (
    CLIError,
    add_config_flags,
    add_model_flags,
    add_subcommand,
    load_config_file,
    log,
    make_config,
    set_threads,
    split_settings,
)
from ._setup import build_engine, pool_for, resolve_prompt, wrap_instruction

__all__ = ["HELP", "EPILOG", "add_parser", "run"]

HELP = "Generate synthetic examples with STEER into JSONL or Parquet (resumable)."
EPILOG = f"""examples:
  steer generate --pool real.jsonl --n 500 --out synth.jsonl --stop '?' --close-with '?'
  steer generate --expert my-lora --gamma 0.4 --eta 0.8 --alpha 0.1 --n 100 --out synth.parquet
  steer generate --config run.yaml          # run.yaml:  expert: my-lora
                                            #            pool: real.jsonl
                                            #            n: 500
                                            #            out: synth.jsonl
                                            #            gamma: 0.2
                                            #            eta: 0.6
                                            #            stop: ["?"]
  steer generate --prompted-expert real.jsonl --expert {DEFAULT_MODEL} --pool real.jsonl --n 50 --out p.jsonl
Interrupted? Run the same command again: rows already in --out are kept and skipped.
Keys allowed in a config file: the run flags above (underscored: prompted_expert, chunk_size, ...) and every
decoding flag (SteerConfig field); anything else is an error.
"""


def add_parser(subs: Any) -> argparse.ArgumentParser:
    """Register `steer generate` on the subparsers `subs`."""
    g = add_subcommand(subs, "generate", HELP, EPILOG)
    g.add_argument(
        "--config", help="YAML or JSON file of run keys and SteerConfig fields (flags override it)"
    )
    g.add_argument("--n", type=int, help="rows wanted in --out (existing rows count)")
    g.add_argument("--out", help="output file, .jsonl or .parquet")
    g.add_argument(
        "--chunk-size",
        type=int,
        help=f"rows decoded together and appended at once (default {DEFAULT_CHUNK_SIZE})",
    )
    g.add_argument("--close-with", help="re-append this stop string to texts that ended on it, e.g. '?'")
    g.add_argument("--record-model", action="store_true", help="add a `model` field to each row")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_flags(g)
    add_config_flags(g)
    g.set_defaults(func=run)
    return g


def _checked_settings(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any], int]:
    """(run settings, SteerConfig fields, n) from the config file and the flags."""
    settings, fields = split_settings(args, load_config_file(args.config))
    if settings.get("prompted_expert"):
        # zero-training expert: the plain base model, its in-context examples double as the pool
        settings.setdefault("expert", DEFAULT_MODEL)
        settings.setdefault("pool", settings["prompted_expert"])
    if not settings.get("out"):
        raise CLIError("no output file: pass --out FILE.jsonl (or `out:` in the config file)")
    n = int(settings.get("n") or 0)
    if n < 1:
        raise CLIError(f"`n` must be a positive integer, got {settings.get('n')!r}: pass --n 100")
    return settings, fields, n


def run(args: argparse.Namespace) -> int:
    """Generate `--n` rows into `--out`; prints the run's stats as one JSON line."""
    from ..pipeline import HYPOTHESIS_INSTRUCTION, generate_to_file

    settings, fields, n = _checked_settings(args)
    config = make_config(fields)
    set_threads(settings.get("threads"))
    pool = pool_for(settings)
    if config.eta > 0 and not pool:
        log("warning: eta > 0 but no --pool of real examples: negative prompting is off")
    engine = build_engine(settings, config, pool=pool)
    try:
        prompt = resolve_prompt(engine, settings)
        # prompted expert: the expert branch sees the examples, the base branch the plain instruction
        base_prompt = (
            wrap_instruction(engine, settings.get("instruction") or HYPOTHESIS_INSTRUCTION)
            if settings.get("prompted_expert")
            else None
        )
        log(f"prompt: {prompt!r}")
        log(f"writing {n} rows to {settings['out']} (gamma={config.gamma}, eta={config.eta})")

        def report(s: Any) -> None:
            log(f"{s.total}/{n} rows, {s.completion_tokens} tokens, {s.tokens_per_s:.1f} tok/s")

        stats = generate_to_file(
            engine,
            prompt,
            n,
            settings["out"],
            chunk_size=int(settings.get("chunk_size") or DEFAULT_CHUNK_SIZE),
            close_with=settings.get("close_with"),
            progress=not args.quiet,
            on_chunk=report,
            extra_fields={"model": engine.name} if args.record_model else None,
            base_prompt=base_prompt,
        )
    finally:
        engine.close()
    if stats.skipped:
        log(f"resumed: {stats.skipped} rows were already in {settings['out']}")
    print(json.dumps(stats.to_dict()))
    return 0
