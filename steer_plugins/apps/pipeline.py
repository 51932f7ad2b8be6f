"""Resumable synthetic-data generation to a file: the loop behind `steer generate`, `sweep` and `demo`.

`generate_to_file` writes rows as it goes (JSONL, appended in chunks with `append_jsonl`), so an
interrupted run loses at most the chunk in flight; running it again counts the rows already there,
puts their texts into the negative pool as synthetic examples (as if the run had never stopped)
and generates only the rest. Parquet output is written once at the end (from a JSONL side file
that carries the resume state).

Example (tiny in-code model):
    >>> from steer_plugins import SteerEngine
    >>> from steer_plugins.testing import TINY_CORPUS, tiny_model, tiny_tokenizer
    >>> tok = tiny_tokenizer()
    >>> engine = SteerEngine(tiny_model("llama", tok), tokenizer=tok, pool=list(TINY_CORPUS))
    >>> stats = generate_to_file(engine, "Write a question:", 4, "/tmp/out.jsonl", max_new_tokens=8,
    ...                          num_negatives=2, seed=0)
    >>> stats.total
    4
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .data_io import DataFormatError, append_jsonl, read_jsonl

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "HYPOTHESIS_INSTRUCTION",
    "GenerationStats",
    "generate_to_file",
    "postprocess",
    "repair_jsonl_tail",
]

DEFAULT_CHUNK_SIZE = 16
"""Rows decoded together and appended to the output file at once."""
HYPOTHESIS_INSTRUCTION = "Write a research hypothesis in astronomy, phrased as a question."
"""The instruction the shipped `hypotheses-lora` adapter was trained to answer."""


@dataclass
class GenerationStats:
    """What one `generate_to_file` call did."""

    path: str
    total: int
    skipped: int
    generated: int
    completion_tokens: int
    seconds: float

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


def _existing_rows(path: Path) -> list[dict[str, Any]]:
    repair_jsonl_tail(path)
    return read_jsonl(path) if path.exists() else []


def _jsonl_path(out: Path) -> Path:
    """The JSONL file rows are appended to: `out` itself, or `<out>.partial.jsonl` for Parquet."""
    suffix = out.suffix.lower()
    if suffix not in (".jsonl", ".parquet"):
        raise ValueError(f"output `{out}` must end in .jsonl or .parquet, got {suffix or 'no suffix'!r}")
    if suffix == ".jsonl":
        return out
    jsonl = out.with_name(out.name + ".partial.jsonl")
    if out.exists() and not jsonl.exists():
        raise ValueError(f"`{out}` already exists and has no resume file `{jsonl}`: pass a new --out path")
    return jsonl


def _resume(jsonl: Path, engine: Any, pool: Any) -> int:
    """Count the rows already in `jsonl`; their texts join the negative pool (`pool`, else the engine's).

    The paper's loop: earlier outputs are negatives for later ones, as if the run had never stopped.
    """
    existing = _existing_rows(jsonl)
    bad = [i + 1 for i, row in enumerate(existing) if not isinstance(row.get("text"), str)]
    if bad:
        raise DataFormatError(
            f"{jsonl}, line {bad[0]}: existing row has no string `text`; not a steer output"
        )
    if existing:
        (engine.pool if pool is None else pool).add([row["text"] for row in existing])
    return len(existing)


def _row(result: Any, close_with: str | None, extra_fields: Mapping[str, Any] | None) -> dict[str, Any]:
    """One output row from one `SteerResult`."""
    row = {"text": postprocess(result.text, result.finish_reason, close_with)}
    row.update(
        {"finish_reason": result.finish_reason, "tokens": result.completion_tokens, "seed": result.seed}
    )
    row.update(extra_fields or {})
    return row


def generate_to_file(
    engine: Any,
    prompt: str,
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
    **overrides: Any,
) -> GenerationStats:
    """Generate `n` rows from `prompt` into `out` (`.jsonl` or `.parquet`), resuming if rows exist.

    Args:
        engine: a `SteerEngine` (its pool seeds the negatives; outputs join it as they are made).
        prompt: the instruction prompt, the same for every row.
        n: rows wanted in the file in total (rows already there count).
        out: output path; `.parquet` is written at the end from `<out>.partial.jsonl`.
        chunk_size: rows decoded per `engine.generate` call and appended together.
        close_with: re-append this stop string to texts that ended on it (see `postprocess`).
        progress: show the engine's tqdm bar (prompts, tokens/s) per chunk.
        extra_fields: constant fields added to every row (e.g. the method name).
        on_chunk: called after each chunk is written, with the running stats.
        pool: a `NegativePool` to draw negatives from (and grow) instead of `engine.pool`.
        base_prompt: the base branch's own prompt (a prompted expert: `prompt` carries the examples).
        **overrides: `SteerConfig` fields for every call. With a seed (`seed=s` here or in the
            engine's config) row i gets seed s + i, so a resumed run draws the seeds it would have.

    Returns:
        `GenerationStats` (rows skipped because they existed, generated, tokens, seconds).

    Raises:
        ValueError: `n` < 1 or an unsupported output suffix.
        DataFormatError: the existing output has a malformed line (named by its number).
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` must be a positive integer, got {n!r}")
    if chunk_size < 1:
        raise ValueError(f"`chunk_size` must be >= 1, got {chunk_size}")
    out = Path(out)
    jsonl = _jsonl_path(out)
    skipped = min(_resume(jsonl, engine, pool), n)
    if pool is not None:
        overrides["pool"] = pool
    done, tokens, started = skipped, 0, time.perf_counter()
    base_seed = overrides.pop("seed", None)
    if base_seed is None:
        base_seed = getattr(getattr(engine, "config", None), "seed", None)
    stats = GenerationStats(str(out), done, skipped, 0, 0, 0.0)
    while done < n:
        size = min(chunk_size, n - done)
        seeded = {} if base_seed is None else {"seed": base_seed + done}
        if base_prompt is not None:
            seeded["base_prompts"] = [base_prompt] * size
        results = engine.generate([prompt] * size, progress=progress, **seeded, **overrides)
        append_jsonl(jsonl, [_row(r, close_with, extra_fields) for r in results])
        done += size
        tokens += sum(r.completion_tokens for r in results)
        stats = GenerationStats(
            str(out), done, skipped, done - skipped, tokens, time.perf_counter() - started
        )
        if on_chunk is not None:
            on_chunk(stats)
    if jsonl != out:
        _write_parquet(jsonl, out)
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
