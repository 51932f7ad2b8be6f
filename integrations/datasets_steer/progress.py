"""What this process has done: counters, and a tqdm bar of input rows and tokens/s whose total is
this worker's own share.

The bar counts input rows (generated, taken from the checkpoint, or sharing a key with another row).
Inside a datasets `Dataset.map` its total is the rows of the shard this process maps (with
`num_proc`, each worker's own shard, not the whole dataset), and it closes when the shard is done.
Elsewhere (a Ray actor, a streaming `IterableDataset.map`, a direct call) the share is not known in
advance: the total grows with each batch the worker receives, so the bar reads `done/received`, and
it closes with `close()` (a Ray actor's shutdown).
"""

from __future__ import annotations

import inspect
import threading
import time
from typing import Any

__all__ = ["Progress", "map_shard_rows"]

#: Counters in `SteerAugmenter.stats`.
STAT_NAMES = (
    "generated_rows",
    "reused_rows",
    "completion_tokens",
    "synthetic_rows",
    "duplicate_outputs",
    "checkpoint_skipped",
)


def map_shard_rows(max_depth: int = 16) -> tuple[int, int] | None:
    """`(id, rows)` of the shard a datasets `Dataset.map` is applying the caller to, or None
    outside one.

    Reads the `shard` argument of datasets' `_map_single` from the call stack (datasets hands a map
    function no other sign of it); with any other caller, or another datasets layout, None.
    """
    frame = inspect.currentframe()
    try:
        for _ in range(max_depth):
            frame = frame.f_back if frame is not None else None
            if frame is None:
                return None
            if frame.f_code.co_name == "_map_single" and "datasets" in frame.f_code.co_filename:
                shard = frame.f_locals.get("shard")
                try:
                    return id(shard), len(shard)
                except TypeError:
                    return None
        return None
    finally:
        del frame


class Progress:
    """Per-process bookkeeping of finished rows.

    Args:
        show: draw a tqdm bar (created on the first `begin_batch`).

    Attributes:
        stats: the counters of `STAT_NAMES`.
        done, total: input rows handled and this worker's share of the current map (`total` grows
            with each batch when the share is not known).
    """

    def __init__(self, show: bool) -> None:
        self.show = show
        self.stats = dict.fromkeys(STAT_NAMES, 0)
        self.done = self.total = 0
        self._shard: int | None = None
        self._open = False
        self._bar: Any = None
        self._batch_generated = 0
        self._t0 = time.perf_counter()
        self._lock = threading.Lock()
        self._new_outputs: list[str] = []

    def begin_batch(self, rows: int, shard: tuple[int, int] | None, rank: int | None) -> None:
        """A batch of `rows` input rows starts; `shard` is `map_shard_rows()` (None: unknown share)."""
        self._batch_generated = 0
        if self._open and shard is not None and shard[0] != self._shard:
            self.close()  # another map (or the rest of an interrupted one): start over
        if not self._open:
            self._open, self.done = True, 0
            self._shard, self.total = (None, 0) if shard is None else shard
            self._t0 = time.perf_counter()
            if self.show:
                from tqdm.auto import tqdm

                self._bar = tqdm(
                    total=self.total,
                    unit="row",
                    desc="steer augment" + (f" #{rank}" if rank is not None else ""),
                    position=rank or 0,
                    leave=rank is None,
                )
        if self._shard is None:
            self.total += rows
            if self._bar is not None:
                self._bar.total = self.total
                self._bar.refresh()

    def reused(self, rows: int) -> None:
        self.stats["reused_rows"] += rows

    def row_done(self, outputs: list[dict[str, Any]]) -> None:
        """Count one generated row (its outputs' tokens) and advance the bar."""
        self.stats["generated_rows"] += 1
        self.stats["completion_tokens"] += sum(o["completion_tokens"] for o in outputs)
        self._advance(1)
        self._batch_generated += 1

    def _advance(self, rows: int) -> None:
        self.done += rows
        if self._bar is not None and rows:
            self._bar.update(rows)
            rate = self.stats["completion_tokens"] / max(1e-9, time.perf_counter() - self._t0)
            self._bar.set_postfix(tok_s=f"{rate:.1f}", refresh=False)

    def end_batch(self, rows: int) -> bool:
        """The batch of `rows` input rows is done: count the rows not generated here (checkpoint,
        shared key). True when this finished a share of known size (the bar is then closed)."""
        self._advance(max(0, rows - self._batch_generated))
        self._batch_generated = 0
        if self._shard is not None and self.done >= self.total:
            self.close()
            return True
        return False

    def joined_pool(self, texts: list[str]) -> None:
        """Remember outputs that joined this process's pool (to share with other workers)."""
        with self._lock:
            self._new_outputs.extend(texts)

    def drain_new_outputs(self) -> list[str]:
        """Texts that joined this process's pool since the last call."""
        with self._lock:
            out, self._new_outputs = self._new_outputs, []
        return out

    def close(self) -> None:
        """End the current share: close the bar (a later batch starts a new one)."""
        if self._bar is not None:
            self._bar.refresh()  # the final count, whatever the refresh rate skipped
            self._bar.close()
            self._bar = None
        self._open, self._shard = False, None
