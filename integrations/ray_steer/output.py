"""Parquet output that a rerun replaces instead of appending to, with its dataset card.

Ray's `write_parquet` names files `<uuid>_<block>.parquet`, a new uuid per run, so writing twice to
one folder used to leave both runs' rows. Here a rerun replaces the folder:

- a local folder is written whole into a hidden sibling (`.<name>.tmp-<id>`), card included, then
  swapped in with two renames, so a reader sees the old folder or the new one, never a mix; a
  folder holding other files than Parquet files and a card is refused before any work starts;
- a URI (`s3://`, `gs://`, `file://`, ...) is written with Ray's `SaveMode.OVERWRITE` (it deletes
  the old files first, then writes: not atomic, but a rerun never duplicates), and the card is
  written through `pyarrow.fs`.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["check_output_path", "write_parquet"]

#: Files an output folder may hold (what this module writes there).
OWN_SUFFIXES = (".parquet", ".README.md")
CardText = Callable[[int], str]


def is_uri(path: str) -> bool:
    return "://" in path


def check_output_path(path: str | os.PathLike) -> None:
    """Refuse a local output path that is a file, or a folder holding files this module did not
    write (they would be deleted by the swap).

    Raises:
        ValueError: naming the path and a few of the foreign files.
    """
    target = os.fspath(path)
    if is_uri(target):
        return
    final = Path(target).expanduser()
    if final.is_file():
        raise ValueError(
            f"`path` {target!r} is a file: `output='parquet'` writes a folder; pick a folder path"
        )
    if final.is_dir():
        foreign = sorted(
            p.name for p in final.iterdir() if not (p.name == "README.md" or p.name.endswith(OWN_SUFFIXES))
        )
        if foreign:
            raise ValueError(
                f"`path` {target!r} holds files a rerun would delete ({foreign[:5]}): a rerun replaces the "
                "whole folder, so pick an empty or new folder for the Parquet output"
            )


def write_parquet(out: Any, path: str | os.PathLike, card_text: CardText | None) -> str:
    """Write the Ray dataset `out` to `path` as Parquet, replacing what an earlier run wrote there;
    `card_text(num_rows)` gives the `README.md` written beside the files (None: no card)."""
    target = os.fspath(path)
    if is_uri(target):
        return _write_uri(out, target, card_text)
    final = Path(target).expanduser()
    token = uuid.uuid4().hex[:8]
    tmp = final.with_name(f".{final.name}.tmp-{token}")
    old = final.with_name(f".{final.name}.old-{token}")
    try:
        out.write_parquet(str(tmp))
        tmp.mkdir(parents=True, exist_ok=True)  # zero rows: Ray writes no file
        if card_text is not None:
            (tmp / "README.md").write_text(card_text(_count_rows(str(tmp), None)), encoding="utf-8")
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return target


def _write_uri(out: Any, target: str, card_text: CardText | None) -> str:
    import pyarrow.fs
    from ray.data import SaveMode

    out.write_parquet(target, mode=SaveMode.OVERWRITE)
    if card_text is not None:
        fs, root = pyarrow.fs.FileSystem.from_uri(target)
        text = card_text(_count_rows(root, fs))
        with fs.open_output_stream(f"{root.rstrip('/')}/README.md") as fh:
            fh.write(text.encode("utf-8"))
    return target


def _count_rows(root: str, fs: Any) -> int:
    """Rows in the Parquet files under `root` (from their footers; no data read)."""
    import pyarrow.dataset as pads

    try:
        return pads.dataset(root, filesystem=fs, format="parquet", exclude_invalid_files=True).count_rows()
    except (FileNotFoundError, ValueError):
        return 0
