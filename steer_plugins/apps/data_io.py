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

import contextlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "DataFormatError",
    "FileInUseError",
    "TABLE_SUFFIXES",
    "looks_like_jsonl",
    "append_jsonl",
    "count_jsonl_rows",
    "locked",
    "read_jsonl",
    "read_lines",
    "read_table",
    "read_texts",
    "write_json_atomic",
    "write_table",
]

JSONL_SUFFIXES: tuple[str, ...] = (".jsonl", ".ndjson")
TABLE_SUFFIXES: tuple[str, ...] = (".jsonl", ".csv", ".parquet")
"""File types `read_table` and `write_table` handle (JSONL, CSV with a header row, Parquet)."""
DEFAULT_TEXT_FIELD = "text"


class DataFormatError(ValueError):
    """A data file could not be parsed; the message names the file and the 1-based line number."""


class FileInUseError(OSError):
    """Another process holds the lock on a file this one wants to write (see `locked`)."""


def read_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its newline) of every line of a UTF-8 text file.

    Raises:
        DataFormatError: a line is not UTF-8; the message names the file, the line and the byte.
    """
    path = Path(path)
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataFormatError(
                    f"{path}, line {lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                    "save the file as UTF-8"
                ) from None
            yield lineno, line.rstrip("\r\n")


def looks_like_jsonl(path: Path) -> bool:
    """True for a `.jsonl` file, or a file whose first non-empty line is a JSON object."""
    if path.suffix.lower() in JSONL_SUFFIXES:
        return True
    for _, line in read_lines(path):
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
    if not looks_like_jsonl(path):
        return [line for _, line in read_lines(path) if line.strip()]
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
    for lineno, line in read_lines(path):
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
    return sum(1 for _, line in read_lines(path) if line.strip())


@contextlib.contextmanager
def locked(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) for the `with` block.

    Two spellings of one file (`f/x.jsonl`, `f/../f/x.jsonl`, a symlink) are one inode, so they
    share the lock. POSIX only; elsewhere nothing is locked.

    Raises:
        FileInUseError: another process holds the lock.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path = Path(path)
    with path.open("ab") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FileInUseError(
                f"`{path}` is being written by another process (another `steer generate` on the same "
                "file?): wait for it to finish, or write to another file"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write `data` as indented JSON to `path` through a temporary file and a rename (never half-written)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _check_table_suffix(path: Path) -> str:
    suffix = ".jsonl" if path.suffix.lower() in JSONL_SUFFIXES else path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise DataFormatError(
            f"`{path}`: unsupported file type {path.suffix or '(no suffix)'!r}; use one of {list(TABLE_SUFFIXES)}"
        )
    return suffix


def read_table(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a JSONL, CSV (header row; every value a string) or Parquet file, as dicts.

    Raises:
        FileNotFoundError: the file does not exist.
        DataFormatError: an unsupported suffix, or content that does not parse (file and line named).
    """
    path = Path(path)
    _check_exists(path)
    suffix = _check_table_suffix(path)
    if suffix == ".jsonl":
        return read_jsonl(path)
    if suffix == ".csv":
        return _read_csv(path)
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - pyarrow is in [dev], [datasets] and [ray]
        raise ImportError(f"reading `{path}` needs pyarrow: pip install pyarrow") from e
    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow.ArrowInvalid and friends: not a Parquet file
        raise DataFormatError(f"`{path}` is not a readable Parquet file ({type(e).__name__}: {e})") from None


def _read_csv(path: Path) -> list[dict[str, Any]]:
    import csv

    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        try:
            rows = [dict(r) for r in reader]
        except UnicodeDecodeError as e:
            raise DataFormatError(
                f"{path}, line {reader.line_num + 1}: not UTF-8 text ({e.reason}); save the file as UTF-8"
            ) from None
        except csv.Error as e:
            raise DataFormatError(f"{path}, line {reader.line_num}: malformed CSV ({e})") from None
    if reader.fieldnames is None:
        raise DataFormatError(f"`{path}` is empty: a CSV file needs a header row naming its columns")
    bad = next((i for i, r in enumerate(rows) if None in r), None)
    if bad is not None:
        raise DataFormatError(f"{path}, line {bad + 2}: more values than the header has columns")
    return rows


def write_table(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]]) -> int:
    """Write `rows` to a JSONL, CSV or Parquet file (by suffix) through a temporary file and a rename.

    CSV cells that are not strings or numbers are written as JSON. Returns the number of rows.

    Raises:
        DataFormatError: an unsupported suffix.
    """
    path = Path(path)
    suffix = _check_table_suffix(path)
    tmp = path.with_name(path.name + ".tmp")
    if suffix == ".jsonl":
        with tmp.open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in rows)
    elif suffix == ".csv":
        _write_csv(tmp, rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist([dict(r) for r in rows]), tmp)
    os.replace(tmp, path)
    return len(rows)


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    import csv

    columns = list(dict.fromkeys(k for r in rows for k in r))

    def cell(v: Any) -> Any:
        """A CSV cell: scalars as they are, anything else as JSON."""
        return v if v is None or isinstance(v, (str, int, float, bool)) else json.dumps(v, ensure_ascii=False)

    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: cell(r.get(k)) for k in columns} for r in rows)
