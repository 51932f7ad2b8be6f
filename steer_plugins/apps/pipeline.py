"""Resumable synthetic-data generation to a file: the loop behind `steer generate`, `sweep` and `demo`.

`generate_to_file` writes rows as it goes (JSONL, appended in chunks with `append_jsonl`), so an
interrupted run loses at most the chunk in flight; running it again counts the rows already there,
puts their texts into the negative pool as synthetic examples (as if the run had never stopped)
and generates only the rest. Parquet output is written once at the end (from a JSONL side file
that carries the resume state).

The settings that decide the rows (model name with its weight hash, the engine fingerprint, every
`SteerConfig` field, seed, prompt, pool, dedup) are recorded in `<out>.meta.json` before the first
row. A run on a file whose rows were made with other settings stops with a `SettingsMismatchError`
naming each differing field, instead of appending rows of another kind; `overwrite=True` starts the
file over. The output is locked while a run writes it, so two runs (under any spelling of the path)
never interleave.

With a `Deduper` (`dedup=`), a row whose text duplicates an earlier row (of this run or of the file)
is dropped and drawn again, and only kept rows join the negative pool.

With a JSON schema (`schema=`), every draw is decoded under it and a row is the record: its fields
at the top level, metadata under `_` keys (`record_row`). A draw that is not a complete record (cut
by the length limit or a stop string) is counted (`cut`, `unparsed`) and drawn again, never written;
the pool keeps the JSON text of kept records, so negatives are records in the same form.

Example (tiny in-code model):
    >>> from steer_plugins import SteerEngine
    >>> from steer_plugins.testing import TINY_CORPUS, tiny_model, tiny_tokenizer
    >>> tok = tiny_tokenizer()
    >>> engine = SteerEngine(tiny_model("llama", tok), tokenizer=tok, pool=list(TINY_CORPUS))
    >>> stats = generate_to_file(engine, "Write a question:", 4, "/tmp/out.jsonl", max_new_tokens=8,
    ...                          num_negatives=2, seed=0, overwrite=True)
    >>> stats.total
    4
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .data_io import DataFormatError, append_jsonl, locked, read_jsonl
from .dedup import Deduper
from .outputs import (
    META_FORMAT,
    OUTPUT_SUFFIXES,
    RECORD_META_KEYS,
    SettingsMismatchError,
    check_output,
    check_record,
    check_record_schema,
    diff_settings,
    meta_path,
    read_meta,
    record_row,
    rows_path,
    settings_record,
    write_meta,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "HYPOTHESIS_INSTRUCTION",
    "MAX_DRAWS_PER_ROW",
    "META_FORMAT",
    "RECORD_META_KEYS",
    "OUTPUT_SUFFIXES",
    "GenerationStats",
    "SettingsMismatchError",
    "check_output",
    "diff_settings",
    "generate_to_file",
    "meta_path",
    "postprocess",
    "read_meta",
    "record_row",
    "repair_jsonl_tail",
    "check_record_schema",
    "settings_record",
]

DEFAULT_CHUNK_SIZE = 16
"""Rows decoded together and appended to the output file at once."""
HYPOTHESIS_INSTRUCTION = "Write a research hypothesis in astronomy, phrased as a question."
"""The instruction the shipped `hypotheses-lora` adapter was trained to answer."""
MAX_DRAWS_PER_ROW = 4
"""With dedup or a schema: draws allowed per wanted row before a run stops short (the model keeps
repeating, or keeps running out of tokens mid-record)."""


@dataclass
class GenerationStats:
    """What one `generate_to_file` call did.

    `duplicates` and `draws` count this call's dropped duplicates and generated texts (kept or not);
    with a schema, `cut` counts draws cut by the length limit and `unparsed` draws that stopped
    without a complete record (a stop string), both dropped and drawn again; `complete` is False
    when the draw budget ran out short of `n` rows (see `MAX_DRAWS_PER_ROW`).
    """

    path: str
    total: int
    skipped: int
    generated: int
    completion_tokens: int
    seconds: float
    duplicates: int = 0
    draws: int = 0
    complete: bool = True
    cut: int = 0
    unparsed: int = 0

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second of this call (0 when no time passed)."""
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The fields plus `tokens_per_s` (rounded), as printed by `steer generate`."""
        return {**asdict(self), "tokens_per_s": round(self.tokens_per_s, 2)}


def postprocess(text: str, finish_reason: str, close_with: str | None) -> str:
    """Strip whitespace; re-append the stop string that ended the text (e.g. `?`) if asked."""
    text = text.strip()
    if close_with and text and finish_reason == "stop" and not text.endswith(close_with):
        text += close_with
    return text


def repair_jsonl_tail(path: str | os.PathLike[str]) -> int:
    """Drop a trailing partial line (a crash mid-write) so resuming does not count it; returns bytes cut."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return 0
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return 0
    cut = len(data) - (data.rfind(b"\n") + 1)
    with path.open("r+b") as f:
        f.truncate(len(data) - cut)
    return cut


def _start_over(out: Path, jsonl: Path) -> None:
    """`overwrite`: empty the rows file (keeping its inode, which holds the lock), drop the rest."""
    jsonl.open("w").close()
    for stale in (meta_path(out), out if out != jsonl else None):
        if stale is not None and stale.exists():
            stale.unlink()


def _texts_of(rows: list[dict[str, Any]], jsonl: Path, key: str) -> list[str]:
    """The generated text of each existing row (`text`, or `_text` for record rows)."""
    bad = [i + 1 for i, row in enumerate(rows) if not isinstance(row.get(key), str)]
    if bad:
        raise DataFormatError(
            f"{jsonl}, line {bad[0]}: existing row has no string `{key}`; not a steer output of this kind"
        )
    return [row[key] for row in rows]


def _row(
    result: Any, close_with: str | None, extra_fields: Mapping[str, Any] | None, prompt: str | None
) -> dict[str, Any]:
    """One output row from one `SteerResult` (`prompt` recorded when a run has several)."""
    row = {"text": postprocess(result.text, result.finish_reason, close_with)}
    row.update(
        {"finish_reason": result.finish_reason, "tokens": result.completion_tokens, "seed": result.seed}
    )
    if prompt is not None:
        row["prompt"] = prompt
    row.update(extra_fields or {})
    return row


@dataclass
class _Chunk:
    """What one chunk of draws gave: rows kept, drafts dropped (by reason), completion tokens."""

    kept: int = 0
    duplicates: int = 0
    cut: int = 0
    unparsed: int = 0
    tokens: int = 0

    @property
    def drawn(self) -> int:
        return self.kept + self.duplicates + self.cut + self.unparsed


@dataclass
class _Run:
    """One `generate_to_file` call's decoding: chunks of draws become kept rows in the file."""

    engine: Any
    prompts: list[str]
    jsonl: Path
    call: dict[str, Any]  # engine.generate keywords: SteerConfig fields, `pool`, `add_to_pool`
    target: Any  # the pool kept outputs join
    seed: int | None = None
    close_with: str | None = None
    extra: Mapping[str, Any] | None = None
    base_prompt: str | None = None
    dedup: Deduper | None = None
    grow: bool | None = None
    schema: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.schema is not None:
            self.call["constraint"] = self.schema
        # Kept rows join the pool in `chunk`, after their chunk and in row order, as the text the
        # file holds; `_resume` adds a file's rows the same way, so a resumed run draws the negatives
        # an uninterrupted one would (the engine's own add_to_pool adds rows as they finish, raw).
        self.call["add_to_pool"] = False

    @property
    def joins(self) -> bool:
        """Kept rows join the pool: `grow` when set, else the engine's rule (the pool holds real examples)."""
        return self.target.num_real > 0 if self.grow is None else bool(self.grow)

    @property
    def filters(self) -> bool:
        """Some draws may be dropped (dedup, or a schema's incomplete records): they are redrawn."""
        return self.dedup is not None or self.schema is not None

    @property
    def text_key(self) -> str:
        return "_text" if self.schema is not None else "text"

    def _make_row(self, result: Any, prompt: str, got: _Chunk) -> dict[str, Any] | None:
        prompt_field = prompt if len(self.prompts) > 1 else None
        if self.schema is None:
            row = _row(result, self.close_with, self.extra, prompt_field)
        else:
            row = record_row(result, self.extra, prompt_field)
            if row is None:
                if result.finish_reason == "length":
                    got.cut += 1
                else:
                    got.unparsed += 1
                return None
        if self.dedup is not None and self.dedup.seen(row[self.text_key]):
            got.duplicates += 1
            return None
        return row

    def chunk(self, first_draw: int, size: int) -> _Chunk:
        """Draw `size` texts from draw index `first_draw` on and append the kept rows."""
        prompts = [self.prompts[d % len(self.prompts)] for d in range(first_draw, first_draw + size)]
        kw = dict(self.call)
        if self.seed is not None:
            kw["seed"] = self.seed + first_draw  # draw d always gets seed + d, resumed or not
        if self.base_prompt is not None:
            kw["base_prompts"] = [self.base_prompt] * size
        results = self.engine.generate(prompts, progress=False, **kw)
        got = _Chunk(tokens=sum(r.completion_tokens for r in results))
        rows = [row for p, r in zip(prompts, results, strict=True) if (row := self._make_row(r, p, got))]
        got.kept = len(rows)
        if self.joins:
            self.target.add([row[self.text_key] for row in rows])
        append_jsonl(self.jsonl, rows)
        return got


def _bar(progress: bool, n: int, done: int) -> Any:
    """One bar over the whole run (rows, ETA), or None."""
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=n, initial=done, unit="row", desc="steer generate", dynamic_ncols=True)


def _check_args(n: Any, chunk_size: Any, prompt: Any) -> list[str]:
    """The prompts as a list, after checking `n`, `chunk_size` and `prompt`."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` must be a positive integer, got {n!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"`chunk_size` must be an integer >= 1, got {chunk_size!r}")
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"`prompt` must be a string or a non-empty list of strings, got {prompt!r}")
    return prompts


def generate_to_file(
    engine: Any,
    prompt: str | Sequence[str],
    n: int,
    out: str | os.PathLike[str],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    close_with: str | None = None,
    progress: bool = False,
    extra_fields: Mapping[str, Any] | None = None,
    on_chunk: Callable[[GenerationStats], None] | None = None,
    pool: Any = None,
    base_prompt: str | None = None,
    dedup: Deduper | None = None,
    overwrite: bool = False,
    schema: Mapping[str, Any] | None = None,
    schema_file: str | None = None,
    **overrides: Any,
) -> GenerationStats:
    """Generate `n` rows from `prompt` into `out` (`.jsonl` or `.parquet`), resuming if rows exist.

    Args:
        engine: a `SteerEngine` (its pool seeds the negatives; kept rows join it after each chunk).
        prompt: the instruction prompt, the same for every row; or a list of prompts, draw i from
            prompt i mod len (each row then records its `prompt`).
        n: rows wanted in the file in total (rows already there count).
        out: output path; `.parquet` is written at the end from `<out>.partial.jsonl`.
        chunk_size: rows decoded per `engine.generate` call and appended together.
        close_with: re-append this stop string to texts that ended on it (see `postprocess`).
        progress: show one bar over the whole run (rows, ETA, tokens/s).
        extra_fields: constant fields added to every row (e.g. the method name).
        on_chunk: called after each chunk is written, with the running stats.
        pool: a `NegativePool` to draw negatives from (and grow) instead of `engine.pool`.
        base_prompt: the base branch's own prompt (a prompted expert: `prompt` carries the examples).
        dedup: drop rows whose text duplicates an earlier row (`Deduper`); they are drawn again (at
            most `MAX_DRAWS_PER_ROW` draws per wanted row) and never join the pool.
        overwrite: delete the rows already in `out` and start over.
        schema: a JSON schema of one object (`check_record_schema`): rows are records (`record_row`);
            incomplete draws are counted and drawn again. `schema_file`: its path, for the record.
        **overrides: `SteerConfig` fields for every call. With a seed (`seed=s` here or in the
            engine's config) draw i gets seed s + i, so a resumed run draws the seeds it would have.

    Returns:
        `GenerationStats` (rows skipped because they existed, generated, duplicates, tokens, seconds).

    Raises:
        ValueError: `n` < 1, `chunk_size` < 1, an unsupported output suffix, a schema that is not
            one object's (`check_record_schema`) or that cannot be enforced (`GrammarError`), or
            `close_with` with a schema.
        SettingsMismatchError: `out` holds rows made with other settings (the fields are named).
        DataFormatError: the existing output has a malformed line (named by its number).
        FileInUseError: another process is writing `out`.
    """
    prompts = _check_args(n, chunk_size, prompt)
    schema = None if schema is None else check_record_schema(schema, close_with)
    out = check_output(out, overwrite=overwrite)
    jsonl = rows_path(out)
    seed = overrides.pop("seed", None)
    seed = getattr(getattr(engine, "config", None), "seed", None) if seed is None else seed
    grow = overrides.pop("add_to_pool", None)
    target = engine.pool if pool is None else pool
    record = settings_record(engine, prompts, seed=seed, config_overrides=overrides, pool=target)
    record.update(
        base_prompt=base_prompt, close_with=close_with, dedup=None if dedup is None else dedup.settings()
    )
    record.update(schema=schema, **({} if schema_file is None else {"schema_file": str(schema_file)}))
    call = {**overrides, **({"pool": pool} if pool is not None else {})}
    run = _Run(
        engine, prompts, jsonl, call, target, seed, close_with, extra_fields, base_prompt, dedup, grow, schema
    )
    with locked(jsonl):
        existing, counts = _resume(run, out, record, overwrite)
        bar = _bar(progress, n, min(existing, n))
        stats = _loop(run, out, record, n, existing, counts, chunk_size, bar, on_chunk)
    if jsonl != out:
        _write_parquet(jsonl, out)
    return stats


def _resume(run: _Run, out: Path, record: Mapping[str, Any], overwrite: bool) -> tuple[int, dict[str, Any]]:
    """(rows already in the file, their recorded counts), once their settings match `record`; their
    texts join the pool (the paper's loop: earlier outputs are negatives for later ones) and dedup."""
    if overwrite:
        _start_over(out, run.jsonl)
    repair_jsonl_tail(run.jsonl)  # a partial last line (a crash mid-write) is dropped first
    rows = read_jsonl(run.jsonl) if run.jsonl.exists() else []
    counts = check_record(out, len(rows), record)
    existing = _texts_of(rows, run.jsonl, run.text_key)
    if existing:
        if run.joins:
            run.target.add(existing)
        if run.dedup is not None:
            run.dedup.add(existing)
    write_meta(out, record, {**counts, "rows": len(existing)})
    return len(existing), counts


def _loop(
    run: _Run,
    out: Path,
    record: Mapping[str, Any],
    n: int,
    existing: int,
    counts: Mapping[str, Any],
    chunk_size: int,
    bar: Any,
    on_chunk: Callable[[GenerationStats], None] | None,
) -> GenerationStats:
    """Draw chunks until `n` rows are in the file (or the draw budget of dedup/a schema is spent)."""
    skipped = done = min(existing, n)
    first = draws = max(existing, int(counts.get("draws") or 0))
    kinds = ("duplicates", "cut", "unparsed") if run.schema is not None else ("duplicates",)
    before = {k: int(counts.get(k) or 0) for k in kinds}  # dropped draws, by reason, in the meta
    limit = draws + MAX_DRAWS_PER_ROW * (n - done) if run.filters else None
    total = _Chunk()
    started = time.perf_counter()
    stats = GenerationStats(str(out), done, skipped, 0, 0, 0.0)
    try:
        while done < n and (limit is None or draws < limit):
            size = min(chunk_size, n - done, (limit - draws) if limit is not None else chunk_size)
            got = run.chunk(draws, size)
            done, draws = done + got.kept, draws + got.drawn
            for key in ("kept", "duplicates", "cut", "unparsed", "tokens"):
                setattr(total, key, getattr(total, key) + getattr(got, key))
            dropped = {k: before[k] + getattr(total, k) for k in before}
            write_meta(out, record, {"rows": max(existing, done), "draws": draws, **dropped})
            seconds = time.perf_counter() - started
            stats = GenerationStats(
                str(out), done, skipped, done - skipped, total.tokens, seconds, total.duplicates,
                draws - first, done >= n, total.cut, total.unparsed,
            )  # fmt: skip
            if bar is not None:
                bar.update(got.kept)
                notes = {"dups": total.duplicates} if run.dedup else {}
                notes.update({"cut": total.cut} if run.schema is not None else {})
                bar.set_postfix(tok_s=f"{stats.tokens_per_s:.1f}", **notes)
            if on_chunk is not None:
                on_chunk(stats)
    finally:
        if bar is not None:
            bar.close()
    return stats


def _write_parquet(jsonl: Path, out: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - pyarrow is in [dev] and [ray]
        raise ImportError(
            f"writing `{out}` needs pyarrow: pip install pyarrow (or write .jsonl). Rows are kept in `{jsonl}`"
        ) from e
    pq.write_table(pa.Table.from_pylist(read_jsonl(jsonl)), out)
