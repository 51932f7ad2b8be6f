"""`steer generate`: synthetic examples with STEER into JSONL or Parquet, resumable, with a dataset card."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ...core.sources import DEFAULT_MODEL
from ..card import card_path, write_card
from ..dedup import DEDUP_MODES, DEFAULT_THRESHOLD, Deduper
from ..outputs import check_output, check_record, config_record, pool_summary, read_meta, rows_path
from ..pipeline import DEFAULT_CHUNK_SIZE, MAX_DRAWS_PER_ROW
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
from ._setup import build_engine, load_schema, pool_for, read_prompts, resolve_prompt, wrap_instruction

__all__ = ["HELP", "EPILOG", "add_parser", "run"]

HELP = "Generate synthetic examples with STEER into JSONL or Parquet (resumable)."
EPILOG = f"""examples:
  steer generate --pool real.jsonl --n 500 --out synth.jsonl --stop '?' --close-with '?'
  steer generate --expert my-lora --gamma 0.4 --eta 0.8 --alpha 0.1 --n 100 --out synth.parquet
  steer generate --prompts topics.txt --expert {DEFAULT_MODEL} --out q.jsonl   # one row per prompt
  steer generate --pool real.jsonl --n 500 --out synth.jsonl --dedup minhash --dedup-threshold 0.8
  steer generate --config run.yaml          # run.yaml:  expert: my-lora
                                            #            pool: real.jsonl
                                            #            n: 500
                                            #            out: synth.jsonl
                                            #            gamma: 0.2
                                            #            eta: 0.6
                                            #            stop: ["?"]
  steer generate --prompted-expert real.jsonl --expert {DEFAULT_MODEL} --pool real.jsonl --n 50 --out p.jsonl
  steer generate --schema examples/schemas/hypothesis.json --n 100 --out records.jsonl --max-new-tokens 120
With --schema every row is one record: the schema's fields at the top level, plus `_text` (the JSON as
generated), `_finish_reason`, `_tokens`, `_seed` (and `_prompt`, `_model`). Draws cut by the length limit
are not written: they are counted (`cut`) and drawn again. --pool then holds records (see docs/cli.md).
Interrupted? Run the same command again: rows already in --out are kept and skipped. The settings are
recorded in <out>.meta.json; a rerun with other settings is refused (naming the fields) unless you
pass --overwrite or another --out. A dataset card (README.md, Hugging Face format) is written next to
the data. Keys allowed in a config file: the run flags above (underscored: prompted_expert, chunk_size,
dedup_threshold, ...) and every decoding flag (SteerConfig field); anything else is an error.
"""


def add_parser(subs: Any) -> argparse.ArgumentParser:
    """Register `steer generate` on the subparsers `subs`."""
    g = add_subcommand(subs, "generate", HELP, EPILOG)
    g.add_argument(
        "--config", help="YAML or JSON file of run keys and SteerConfig fields (flags override it)"
    )
    g.add_argument(
        "--n",
        type=int,
        help="rows wanted in --out, existing rows count (default with --prompts: one per prompt)",
    )
    g.add_argument("--out", help="output file, .jsonl or .parquet (required)")
    g.add_argument("--overwrite", action="store_true", help="delete the rows already in --out and start over")
    g.add_argument(
        "--chunk-size",
        type=int,
        help=f"rows decoded together and appended at once (default {DEFAULT_CHUNK_SIZE})",
    )
    g.add_argument(
        "--close-with", help="re-append this stop string to texts that ended on it, e.g. '?' (default: none)"
    )
    g.add_argument(
        "--prompts",
        metavar="FILE",
        help="one prompt per row (JSONL `prompt` or `text` field, or plain text lines); row i uses prompt "
        "i mod the count; each is chat-wrapped like --instruction unless --raw-prompts (default: one prompt)",
    )
    g.add_argument(
        "--raw-prompts", action="store_true", help="use the --prompts rows as exact prompt strings"
    )
    g.add_argument(
        "--dedup",
        choices=DEDUP_MODES,
        help="drop duplicate outputs and draw again: exact (after case/whitespace normalisation) or minhash "
        f"(near-duplicates, needs datasketch); at most {MAX_DRAWS_PER_ROW} draws per row (default: off)",
    )
    g.add_argument(
        "--dedup-threshold",
        type=float,
        help=f"minhash: Jaccard similarity of character 5-grams at which two outputs are duplicates "
        f"(default {DEFAULT_THRESHOLD})",
    )
    g.add_argument(
        "--license", default="other", help="license named in the dataset card (an SPDX-style Hub id)"
    )
    g.add_argument("--no-card", action="store_true", help="do not write the dataset card README.md")
    g.add_argument(
        "--schema",
        metavar="FILE",
        help="JSON schema of one record (an object): every row is a record that validates against it",
    )
    g.add_argument("--record-model", action="store_true", help="add a `model` field to each row")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_flags(g)
    add_config_flags(g)
    g.set_defaults(func=run)
    return g


def _checked_settings(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """(run settings, SteerConfig fields) from the config file and the flags, checked."""
    settings, fields = split_settings(args, load_config_file(args.config))
    if settings.get("prompted_expert"):
        # zero-training expert: the plain base model, its in-context examples double as the pool
        settings.setdefault("expert", DEFAULT_MODEL)
        settings.setdefault("pool", settings["prompted_expert"])
    if not settings.get("out"):
        raise CLIError("no output file: pass --out FILE.jsonl (or `out:` in the config file)")
    if settings.get("prompts"):
        clash = [k for k in ("prompt", "instruction", "prompted_expert") if settings.get(k)]
        if clash:
            raise CLIError(
                f"--prompts gives every prompt; drop {', '.join('--' + k.replace('_', '-') for k in clash)}"
            )
    elif not settings.get("n"):
        raise CLIError(f"`n` must be a positive integer, got {settings.get('n')!r}: pass --n 100")
    if settings.get("dedup_threshold") is not None and settings.get("dedup") != "minhash":
        raise CLIError("--dedup-threshold applies to --dedup minhash only")
    if settings.get("schema") is not None:
        if settings.get("close_with"):
            raise CLIError("--close-with does not apply to --schema: the grammar closes every record")
        if fields.get("stop"):
            raise CLIError(
                "--stop would cut records mid-way; with --schema the grammar ends each row: drop --stop"
            )
    return settings, fields


def _precheck(
    settings: dict[str, Any], config: Any, dedup: Deduper | None, pool: list[str] | None, schema: Any
) -> None:
    """Refuse, before loading any model, to add rows to a file made with other settings."""
    out = Path(settings["out"])
    from ..data_io import count_jsonl_rows

    rows = count_jsonl_rows(rows_path(out))
    known = {"config": config_record(config), "seed": config.seed, "close_with": settings.get("close_with")}
    known["dedup"] = None if dedup is None else dedup.settings()
    known["schema"] = schema
    if pool is not None:
        from ...core.negatives import NegativePool

        known["pool"] = pool_summary(NegativePool(pool).texts)  # as the engine's pool keeps them
    if settings.get("prompt"):
        known["prompt"] = settings["prompt"]
    check_record(out, rows, known)


def _prompts(engine: Any, settings: dict[str, Any], prompt_rows: list[str] | None, raw: bool) -> list[str]:
    """The prompt list: the --prompts rows (chat-wrapped unless `raw`), else the one resolved prompt."""
    if prompt_rows is None:
        return [resolve_prompt(engine, settings)]
    return prompt_rows if raw else [wrap_instruction(engine, p) for p in prompt_rows]


def _write_card(
    args: argparse.Namespace, settings: dict[str, Any], engine: Any, config: Any, stats: Any
) -> None:
    out = Path(stats.path)
    meta = read_meta(out) or {}
    recorded = meta.get("settings", {})
    counts = meta.get("counts", {})
    run_keys = {
        k: settings.get(k)
        for k in ("prompt", "prompts", "instruction", "pool", "close_with")
        if settings.get(k)
    }
    if settings.get("schema") is not None:
        run_keys["schema"] = recorded.get("schema_file") or "inline in the config file"
    path = write_card(
        card_path(out),
        data_files=out,
        num_rows=stats.total,
        license=args.license,
        settings={**run_keys, "prompt used": recorded.get("prompt"), **recorded.get("config", {})},
        seed=config.seed,
        models={"expert and base": {"name": engine.name, "fingerprint": recorded.get("fingerprint")}},
        counts={
            "rows": stats.total,
            "generated by the last run": stats.generated,
            "draws": counts.get("draws"),
            **({"draws cut by the length limit (redrawn)": counts.get("cut")} if counts.get("cut") else {}),
        },
        dedup={**recorded["dedup"], "duplicates dropped": counts.get("duplicates")}
        if recorded.get("dedup")
        else None,
        command="steer generate " + " ".join(args.argv),
    )
    log(f"dataset card: {path}")


def _report(stats: Any, out: Path, n: int, dedup: Deduper | None, schema: Any, config: Any) -> None:
    """The run's notes on stderr: resumed rows, dropped duplicates and cut records, a short run."""
    if stats.skipped:
        log(f"resumed: {stats.skipped} rows were already in {out}")
    if dedup is not None:
        log(f"dedup ({dedup.mode}): {stats.duplicates} duplicates dropped of {stats.draws} drawn this run")
    if schema is not None and (stats.cut or stats.unparsed):
        log(
            f"schema: {stats.cut} draws cut by the length limit (max_new_tokens={config.max_new_tokens})"
            + (f" and {stats.unparsed} stopped early" if stats.unparsed else "")
            + f" of {stats.draws} drawn this run were not written (drawn again); raise --max-new-tokens "
            "or shorten the record (maxLength, maxItems) to waste fewer draws"
        )
    if not stats.complete:
        why = "the outputs keep repeating" if stats.duplicates >= stats.cut else "records keep getting cut"
        log(
            f"warning: only {stats.total} of {n} rows after {stats.draws} draws: {why}; raise temperature, "
            "gamma or eta (or --max-new-tokens), lower --n, or rerun to try more draws"
        )


def run(args: argparse.Namespace) -> int:
    """Generate `--n` rows into `--out`; prints the run's stats as one JSON line."""
    from ..pipeline import HYPOTHESIS_INSTRUCTION, generate_to_file

    settings, fields = _checked_settings(args)
    config = make_config(fields)
    schema, schema_file = load_schema(settings)  # compiled without a model: errors come first
    out = check_output(settings["out"], overwrite=args.overwrite)  # before any model loads
    dedup = Deduper(settings["dedup"], settings.get("dedup_threshold")) if settings.get("dedup") else None
    prompt_rows = read_prompts(settings["prompts"]) if settings.get("prompts") else None
    n = settings.get("n") or len(prompt_rows or ())
    set_threads(settings.get("threads"))
    pool = pool_for(settings, schema)
    if not args.overwrite:
        _precheck({**settings, "out": out}, config, dedup, pool, schema)
    if config.eta > 0 and not pool:
        hint = " (with --schema: --pool of records, or `examples` in the schema)" if schema else ""
        log(f"warning: eta > 0 but no --pool of real examples{hint}: negative prompting is off")
    engine = build_engine(settings, config, pool=pool)
    try:
        prompts = _prompts(engine, settings, prompt_rows, args.raw_prompts)
        # prompted expert: the expert branch sees the examples, the base branch the plain instruction
        base_prompt = (
            wrap_instruction(engine, settings.get("instruction") or HYPOTHESIS_INSTRUCTION)
            if settings.get("prompted_expert")
            else None
        )
        log(f"prompt: {prompts[0]!r}" + (f" (and {len(prompts) - 1} more)" if len(prompts) > 1 else ""))
        what = f"records of {schema_file or 'the inline schema'}" if schema is not None else "rows"
        log(f"writing {n} {what} to {out} (gamma={config.gamma}, eta={config.eta})")
        stats = generate_to_file(
            engine,
            prompts,
            n,
            out,
            chunk_size=settings.get("chunk_size") or DEFAULT_CHUNK_SIZE,
            close_with=settings.get("close_with"),
            progress=not args.quiet,
            extra_fields={"model": engine.name} if args.record_model else None,
            base_prompt=base_prompt,
            dedup=dedup,
            overwrite=args.overwrite,
            schema=schema,
            schema_file=schema_file,
        )
        if not args.no_card:
            _write_card(args, settings, engine, config, stats)
    finally:
        engine.close()
    _report(stats, out, n, dedup, schema, config)
    print(json.dumps(stats.to_dict()))
    return 0
