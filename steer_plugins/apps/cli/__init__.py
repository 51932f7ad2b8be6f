"""`steer`: the command line of steer-plugins (demo, generate, finetune, evaluate, sweep, tune).

This package is the dispatcher: each subcommand's parser and run function live in its own module
(`demo`, `generate`, `finetune`, `evaluate`, `sweep`, `tune`), what they share in `_common` and `_setup`.
Every command prints a worked example with `--help`. Errors in the user's input (missing file,
malformed JSONL line, unknown config key, empty reference) print one line naming the problem and
exit with status 2; `main(argv)` returns the status instead of exiting, so tests call it in-process.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import augment, demo, evaluate, finetune, generate, sweep, tune
from ._common import RUN_KEYS, add_version_flag, config_flag_specs, run_command

__all__ = ["main", "build_parser", "config_flag_specs", "RUN_KEYS", "COMMANDS"]

COMMANDS = (demo, generate, augment, finetune, evaluate, sweep, tune)
"""The subcommand modules, in help order; each has `add_parser(subparsers)` and `run(args)`."""

DESCRIPTION = "STEER decoding (arXiv 2308.07645): diverse, faithful synthetic data from an expert model."
EPILOG = """examples:
  steer demo
  steer generate --pool real.jsonl --n 200 --out synth.jsonl --stop '?' --close-with '?'
  steer evaluate --reference real.jsonl synth.jsonl plain.jsonl --json scores.json
  steer finetune real.jsonl --out my-lora --instruction "Write a research hypothesis in astronomy, phrased as a question."
  steer sweep --reference heldout.jsonl --pool real.jsonl --gammas 0,0.4,0.8 --etas 0,0.4,0.8 --n 32 --out sweep/
  steer tune real.jsonl --out tuned/ --stop '?' --close-with '?' && steer generate --config tuned/steer_tuned.json --n 500 --out s.jsonl
"""


def build_parser() -> argparse.ArgumentParser:
    """The `steer` argument parser (subcommands demo, generate, finetune, evaluate, sweep, tune)."""
    parser = argparse.ArgumentParser(
        prog="steer",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_version_flag(parser)
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `steer` with `argv` (default `sys.argv[1:]`); returns the exit status."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help or a usage error
        return int(e.code or 0)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    args.argv = argv[1:]
    return run_command(args)
