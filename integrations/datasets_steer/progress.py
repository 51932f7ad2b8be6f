"""What this process has done: counters, a tqdm bar of rows and tokens/s, and the outputs it has
not yet shared with other workers (Ray's `SharedPool`)."""

from __future__ import annotations

import threading
import time
from typing import Any

__all__ = ["Progress"]


class Progress:
    """Per-process bookkeeping of finished rows.

    Args:
        show: draw a tqdm bar (created on the first `start`).

    Attributes:
        stats: `generated_rows`, `reused_rows` (taken from the checkpoint) and `completion_tokens`.
    """

    def __init__(self, show: bool) -> None:
        self.show = show
        self.stats = {"generated_rows": 0, "reused_rows": 0, "completion_tokens": 0}
        self._bar: Any = None
        self._t0 = time.perf_counter()
        self._lock = threading.Lock()
        self._new_outputs: list[str] = []

    def start(self, total: int | None, rank: int | None) -> None:
        """Open the bar (once): `total` rows when known; one bar line per `rank`."""
        if self._bar is not None or not self.show:
            return
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=total,
            unit="row",
            desc="steer augment" + (f" #{rank}" if rank is not None else ""),
            position=rank or 0,
            leave=rank is None,
        )
        self._t0 = time.perf_counter()

    def reused(self, rows: int) -> None:
        self.stats["reused_rows"] += rows

    def row_done(self, outputs: list[dict[str, Any]]) -> None:
        """Count one generated row (its outputs' texts and tokens) and advance the bar."""
        with self._lock:
            self._new_outputs.extend(o["text"] for o in outputs)
        self.stats["generated_rows"] += 1
        self.stats["completion_tokens"] += sum(o["completion_tokens"] for o in outputs)
        if self._bar is not None:
            self._bar.update(1)
            rate = self.stats["completion_tokens"] / max(1e-9, time.perf_counter() - self._t0)
            self._bar.set_postfix(tok_s=f"{rate:.1f}", refresh=False)

    def drain_new_outputs(self) -> list[str]:
        """Texts generated since the last call."""
        with self._lock:
            out, self._new_outputs = self._new_outputs, []
        return out

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
