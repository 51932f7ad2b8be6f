"""`steer augment`: grow a data file with STEER rows from a prompt template over its columns.

The `datasets` integration does the work (`datasets_steer.SteerAugmenter` in one `Dataset.map`,
checkpointed per finished row, so an interrupted run resumes); this command reads the input
(JSONL, CSV, Parquet, or a folder written by `save_to_disk`), checks the template against its
columns and the output path before any model loads, and writes the augmented file with its
settings record (`<out>.meta.json`) and a dataset card.

Layering: nothing in `steer_plugins` imports a framework at import time. This command is the one
allowed exception (`LAZY_FRAMEWORK_IMPORTS` in `tests/test_layering.py`): it imports `datasets` and
`datasets_steer` inside a function, when it runs, so `import steer_plugins` and every other command
stay framework-free.
"""

from __future__ import annotations

import argparse
import json
import string
from pathlib import Path
from typing import Any

from ..card import card_path, write_card
from ..data_io import TABLE_SUFFIXES, read_table, write_table
from ..dedup import DEDUP_MODES, Deduper
from ..outputs import check_record, config_record, pool_summary, probe_writable, write_meta
from ._common import (
    CLIError,
    add_config_flags,
    add_subcommand,
    log,
    make_config,
    read_examples,
    set_threads,
    split_settings,
)
from ._setup import build_engine

__all__ = ["HELP", "EPILOG", "DEFAULT_PER_ROW", "add_parser", "run"]

HELP = "Augment a JSONL/CSV/Parquet file (or saved dataset) with STEER rows from a prompt template."
EPILOG = """examples:
  steer augment topics.csv --template "Write a question about {topic}:" --out augmented.jsonl --n 2
  steer augment real.jsonl --template "Write a question like: {text}" --out aug.parquet --no-originals
  steer augment saved_ds/ --split train --template "Summarise: {text}" --out aug.jsonl --eta 0
Each input row is kept (unless --no-originals) and followed by --n synthetic rows whose --output-column
holds generated text (columns synthetic, steer_config, steer_negatives, steer_seed are added). The
negative pool is seeded from --pool, else from the --real-column of the input. Interrupted? Run the
same command again: finished rows come from the checkpoint folder.
"""
DEFAULT_PER_ROW = 2
"""Default synthetic rows per input row."""


def add_parser(subs: Any) -> argparse.ArgumentParser:
    """Register `steer augment` on the subparsers `subs`."""
    a = add_subcommand(subs, "augment", HELP, EPILOG)
    a.add_argument("data", help="input: .jsonl, .csv (header row), .parquet, or a save_to_disk folder")
    a.add_argument("--template", required=True, help="str.format prompt over the input's columns (required)")
    a.add_argument("--out", required=True, help=f"output file, one of {', '.join(TABLE_SUFFIXES)} (required)")
    a.add_argument("--n", type=int, default=DEFAULT_PER_ROW, help="synthetic rows per input row")
    a.add_argument("--real-column", default="text", help="column of real texts seeding the negative pool")
    a.add_argument("--output-column", default="text", help="column that receives the generated text")
    a.add_argument("--no-originals", action="store_true", help="write only the synthetic rows")
    a.add_argument("--split", default="train", help="split of a saved DatasetDict folder")
    a.add_argument("--chat", action="store_true", help="send each filled template through the chat template")
    a.add_argument("--batch-size", type=int, default=8, help="input rows per Dataset.map batch")
    a.add_argument(
        "--checkpoint-dir", help="where finished rows are checkpointed (default: <out>.checkpoints/)"
    )
    a.add_argument("--overwrite", action="store_true", help="replace an --out written with other settings")
    a.add_argument(
        "--dedup",
        choices=DEDUP_MODES,
        help="drop synthetic rows that duplicate an earlier row of the output (exact or minhash) before "
        "writing; inside the run they already were negatives (default: off)",
    )
    a.add_argument("--license", default="other", help="license named in the dataset card")
    a.add_argument("--no-card", action="store_true", help="do not write the dataset card README.md")
    a.add_argument("--quiet", action="store_true", help="no progress bar")
    g = a.add_argument_group("model")
    g.add_argument("--expert", help="expert model (default: the shipped adapter)")
    g.add_argument("--base", help="base model (default: the adapter's base with the adapter switched off)")
    g.add_argument(
        "--pool", metavar="FILE", help="real examples seeding the negative pool (default: --real-column)"
    )
    g.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    g.add_argument("--device", help="torch device, e.g. cuda (default cpu)")
    add_config_flags(a)
    a.set_defaults(func=run)
    return a


def _frameworks() -> tuple[Any, Any]:
    """(`datasets`, `datasets_steer`), imported when the command runs (see the module docstring)."""
    try:
        import datasets
        import datasets_steer
    except ImportError as e:
        raise ImportError(
            f"`steer augment` needs the datasets extra ({e}): pip install 'steer-plugins[datasets]'"
        ) from e
    return datasets, datasets_steer


def _template_columns(template: str) -> list[str]:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise CLIError(f"--template is not a valid str.format template ({e}): {template!r}") from None
    if any(f == "" or f.isdigit() for f in fields):
        raise CLIError(
            f"--template must name input columns in braces, e.g. 'Write about {{topic}}:', got {template!r}"
        )
    return sorted({f.split(".")[0].split("[")[0] for f in fields})


def _read_input(datasets: Any, path: str, split: str) -> Any:
    """The input as a `datasets.Dataset` (rows of a file, or a `save_to_disk` folder's split)."""
    p = Path(path)
    if p.is_dir():
        ds = datasets.load_from_disk(str(p))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise CLIError(f"`{p}` has splits {sorted(ds)}, not {split!r}: pass --split NAME")
            ds = ds[split]
        return ds
    rows = read_table(p)
    if not rows:
        raise CLIError(f"input `{p}` has no rows")
    return datasets.Dataset.from_list(rows)


def _checked_output(args: argparse.Namespace) -> Path:
    out = Path(args.out)
    if out.suffix.lower() not in TABLE_SUFFIXES:
        raise CLIError(
            f"--out `{out}` must end in one of {list(TABLE_SUFFIXES)}, got {out.suffix or 'no suffix'!r}"
        )
    return probe_writable(out)


def _real_texts(args: argparse.Namespace, ds: Any, eta: float) -> list[str] | None:
    if args.pool:
        return read_examples(args.pool, "pool")
    if args.real_column in ds.column_names:
        return [t for t in ds[args.real_column] if isinstance(t, str) and t.strip()]
    if eta > 0:
        raise CLIError(
            f"no real examples for the negative pool: the input has no column {args.real_column!r} "
            f"(columns: {ds.column_names}); pass --real-column COL, --pool FILE, or --eta 0"
        )
    return None


def _record(args: argparse.Namespace, config: Any, real: list[str] | None) -> dict[str, Any]:
    """What decides the augmented rows, before the model loads (the model is added after)."""
    return {
        "config": config_record(config),
        "seed": config.seed or 0,  # the augmenter's base seed (0 when none is given)
        "template": args.template,
        "n": args.n,
        "real_column": args.real_column,
        "output_column": args.output_column,
        "keep_original": not args.no_originals,
        "chat": args.chat,
        "pool": pool_summary(real or []),
        "dedup": args.dedup,
    }


def _dedup(rows: list[dict[str, Any]], column: str, mode: str) -> tuple[list[dict[str, Any]], int]:
    """Rows without the synthetic ones whose `column` duplicates an earlier row (originals stay)."""
    deduper = Deduper(mode)
    deduper.add(r[column] for r in rows if not r.get("synthetic") and isinstance(r.get(column), str))
    kept = [r for r in rows if not r.get("synthetic") or not deduper.seen(str(r.get(column)))]
    return kept, len(rows) - len(kept)


def _augment(
    args: argparse.Namespace, ds: Any, module: Any, engine: Any, real: list[str] | None, fields: dict
) -> Any:
    """`ds.map(SteerAugmenter(...), batched=True)` on the built engine."""
    out = Path(args.out)
    try:
        aug = module.SteerAugmenter(
            engine=engine,
            prompt=args.template,
            real_column=args.real_column,
            output_column=args.output_column,
            n=args.n,
            keep_original=not args.no_originals,
            real_texts=real,
            checkpoint_dir=args.checkpoint_dir or str(out.with_name(out.name + ".checkpoints")),
            progress=not args.quiet,
            chat=args.chat,
            **fields,
        )
        return ds.map(
            aug, batched=True, batch_size=args.batch_size, keep_in_memory=True, load_from_cache_file=False
        )
    except TypeError as e:  # a non-text column where text is needed: the augmenter names it
        raise CLIError(str(e)) from None


def run(args: argparse.Namespace) -> int:
    """Augment `data` into `--out`; prints counts as one JSON line."""
    settings, fields = split_settings(args, {})
    if args.n < 1 or args.batch_size < 1:
        raise CLIError(f"--n and --batch-size must be positive integers, got {args.n} and {args.batch_size}")
    config = make_config(fields)
    out = _checked_output(args)  # before anything loads
    datasets, module = _frameworks()
    datasets.disable_progress_bars()  # the augmenter's own bar counts rows
    ds = _read_input(datasets, args.data, args.split)
    missing = [c for c in _template_columns(args.template) if c not in ds.column_names]
    if missing:
        raise CLIError(
            f"--template names column(s) {missing} the input lacks; its columns: {ds.column_names}"
        )
    real = _real_texts(args, ds, config.eta)
    record = _record(args, config, real)
    previous = len(read_table(out)) if out.is_file() else 0
    if not args.overwrite:
        check_record(out, previous, record)
    set_threads(settings.get("threads"))
    engine = build_engine({**settings, "chunk_size": min(32, args.batch_size * args.n)}, config, pool=None)
    try:
        record.update(model=engine.name, fingerprint=engine.fingerprint())
        if not args.overwrite:
            check_record(out, previous, record)
        rows = _augment(args, ds, module, engine, real, fields).to_list()
    finally:
        engine.close()
    dropped = 0
    if args.dedup:
        rows, dropped = _dedup(rows, args.output_column, args.dedup)
    write_table(out, rows)
    synthetic = sum(1 for r in rows if r.get("synthetic"))
    counts = {
        "input_rows": len(ds),
        "rows": len(rows),
        "synthetic_rows": synthetic,
        "duplicates_dropped": dropped,
    }
    write_meta(out, record, counts)
    if not args.no_card:
        path = write_card(
            card_path(out),
            data_files=out,
            num_rows=len(rows),
            title="Data augmented with STEER",
            license=args.license,
            settings={k: v for k, v in record.items() if k not in ("config", "model", "fingerprint")}
            | record["config"],
            seed=record["seed"],
            models={"expert and base": {"name": record["model"], "fingerprint": record["fingerprint"]}},
            counts=counts,
            dedup={"mode": args.dedup, "duplicates dropped": dropped} if args.dedup else None,
            command="steer augment " + " ".join(args.argv),
        )
        log(f"dataset card: {path}")
    print(json.dumps({"path": str(out), **counts}))
    return 0
