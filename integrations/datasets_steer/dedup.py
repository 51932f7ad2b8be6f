"""Deduplication of the augmenter's outputs: which synthetic rows are returned, which outputs join
the negative pool.

Built on `steer_plugins.apps.dedup.Deduper` (`"exact"`: equal after normalisation; `"minhash"`:
near-duplicates by MinHash Jaccard similarity, needs `datasketch`). Two memories per process:

- **rows**: a synthetic row is returned only if its text duplicates neither a real text nor an output
  returned before in this process (rows are checked in the order `map` returns them, so the result
  does not depend on how the engine scheduled the prompts). Its outputs stay in the checkpoint, so a
  rerun with another dedup setting needs no regeneration.
- **pool**: an output joins the negative pool only if the pool holds no duplicate of it yet (outputs
  of this process, of a resumed checkpoint, and of other Ray actors alike).

Each process (datasets `num_proc` worker, Ray actor) dedups what it sees; see docs/datasets.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from steer_plugins.apps.dedup import DEDUP_MODES, Deduper

__all__ = ["OutputDedup", "check_dedup"]


def check_dedup(mode: Any, threshold: Any) -> None:
    """Validate the augmenter's `dedup`/`dedup_threshold` up front (a throwaway `Deduper` does).

    Raises:
        ValueError: an unknown mode, or a threshold that does not fit the mode.
        ImportError: `"minhash"` without `datasketch` installed.
    """
    if mode is None:
        if threshold is not None:
            raise ValueError("`dedup_threshold` needs `dedup='minhash'`")
        return
    if mode not in DEDUP_MODES:
        raise ValueError(f"`dedup` must be None or one of {list(DEDUP_MODES)}, got {mode!r}")
    Deduper(mode, threshold)


class OutputDedup:
    """The two memories of one process (see the module docstring).

    Args:
        mode, threshold: as for `Deduper`.
        real_texts: the real examples: a synthetic text duplicating one is dropped and kept out of
            the pool (they are in it already).
    """

    def __init__(self, mode: str, threshold: float | None, real_texts: Iterable[str]) -> None:
        real = list(real_texts)
        self.rows = Deduper(mode, threshold)
        self.rows.add(real)
        self.pool = Deduper(mode, threshold)
        self.pool.add(real)
        self.settings = self.rows.settings()

    def keep_row(self, text: str) -> bool:
        """True if a synthetic row with `text` should be returned (and remember it)."""
        return not self.rows.seen(text)

    def new_for_pool(self, texts: Iterable[str]) -> list[str]:
        """The texts of `texts` the pool holds no duplicate of (they are remembered as joined)."""
        return [t for t in texts if not self.pool.seen(t)]

    def counts(self) -> dict[str, Any]:
        """`{"mode", "threshold", "checked", "kept", "duplicates"}` of the returned rows."""
        return self.rows.counts()
