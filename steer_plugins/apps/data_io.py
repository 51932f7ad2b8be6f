"""Reading example texts (JSONL or plain text) and appending generated rows to JSONL.

Two input formats are accepted everywhere a file of examples is expected:

- **JSONL** (`.jsonl` / `.ndjson`, or any file whose first non-blank line is a JSON object): one
  object per line with a string `text` field; blank lines are skipped.
- **Plain text** (anything else): one example per line; blank lines are skipped, trailing newlines
  are stripped.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "out.jsonl"
    >>> append_jsonl(path, [{"text": "Is the Hubble tension real?"}])
    1
    >>> read_texts(path)
    ['Is the Hubble tension real?']
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["DataFormatError", "read_texts", "read_jsonl", "append_jsonl", "count_jsonl_rows"]

JSONL_SUFFIXES: tuple[str, ...] = (".jsonl", ".ndjson")
DEFAULT_TEXT_FIELD = "text"


class DataFormatError(ValueError):
    """A data file could not be parsed; the message names the file and the 1-based line number."""


def _looks_like_jsonl(path: Path) -> bool:
    if path.suffix.lower() in JSONL_SUFFIXES:
        return True
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                return line.lstrip().startswith("{")
    return False


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"data file not found: `{path}` (pass a JSONL file or a plain text file)")
    if path.is_dir():
        raise IsADirectoryError(f"expected a data file, got the directory `{path}`")


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read every JSON object of a JSONL file, skipping blank lines.

    Raises:
        FileNotFoundError: the file does not exist.
        DataFormatError: a line is not valid JSON or not an object; the message names the file and
            its 1-based line number.
    """
    path = Path(path)
    _check_exists(path)
    hint = 'each line must be one JSON object such as {"text": "..."}'
    rows: list[dict[str, Any]] = []
    for lineno, row in _json_lines(path, hint):
        if not isinstance(row, dict):
            raise DataFormatError(
                f"{path}, line {lineno}: expected a JSON object, got {type(row).__name__}; {hint}"
            )
        rows.append(row)
    return rows


def read_texts(path: str | os.PathLike[str], *, field: str = DEFAULT_TEXT_FIELD) -> list[str]:
    """Read example texts from a JSONL file (`field` of each object) or a plain text file.

    Args:
        path: a `.jsonl` file (or any file starting with a JSON object), else plain text with one
            example per line.
        field: the JSONL field holding the text (default `"text"`).

    Returns:
        The texts, in file order, blank lines skipped.

    Raises:
        FileNotFoundError: the file does not exist.
        DataFormatError: a malformed JSONL line, or one missing `field` / with a non-string value;
            the message names the file and the 1-based line number.
    """
    path = Path(path)
    _check_exists(path)
    if not _looks_like_jsonl(path):
        with path.open(encoding="utf-8") as f:
            return [line.rstrip("\r\n") for line in f if line.strip()]
    texts: list[str] = []
    for lineno, row in _json_lines(path, f"each line must be one JSON object with a string `{field}` field"):
        value = row.get(field) if isinstance(row, dict) else None
        if not isinstance(value, str):
            got = f"keys {sorted(row)}" if isinstance(row, dict) else type(row).__name__
            raise DataFormatError(
                f"{path}, line {lineno}: expected an object with a string `{field}` field, got {got}"
            )
        texts.append(value)
    return texts


def _json_lines(path: Path, hint: str) -> Iterator[tuple[int, Any]]:
    """(1-based line number, parsed value) of every non-blank line; malformed JSON names the line."""
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(
                    f"{path}, line {lineno}: malformed JSON ({e.msg} at column {e.colno}); {hint}"
                ) from None


def append_jsonl(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]]) -> int:
    """Append `rows` to a JSONL file (created with its parent folders if missing), flushing to disk.

    Used for resumable outputs: each call appends whole lines and fsyncs, so an interrupted run
    leaves every completed row readable. A partial last line left by a crash is completed with a
    newline first so the next row starts on its own line (the partial line stays malformed and is
    reported by `read_jsonl` with its line number).

    Returns:
        The number of rows written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    needs_newline = False
    if path.exists() and path.stat().st_size > 0:
        with path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            needs_newline = f.read(1) != b"\n"
    n = 0
    with path.open("a", encoding="utf-8") as f:
        if needs_newline:
            f.write("\n")
        for row in rows:
            f.write(json.dumps(dict(row), ensure_ascii=False) + "\n")
            n += 1
        f.flush()
        os.fsync(f.fileno())
    return n


def count_jsonl_rows(path: str | os.PathLike[str]) -> int:
    """Number of non-blank lines in a JSONL file (0 if it does not exist); for resuming outputs."""
    path = Path(path)
    if not path.exists():
        return 0
    with path.open(encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())
