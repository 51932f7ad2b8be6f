"""The two Ray actors of a run: `AugmentActor` (one engine per actor, one `SteerAugmenter` call per
`map_batches` batch) and `SharedPool` (the synthetic outputs every actor shares, and what each actor
reports for the dataset card).

Before each batch an actor pulls the outputs other actors pushed since its last pull; after the
batch it pushes the outputs that joined its pool (no duplicates when `dedup` is on). Negatives
therefore reflect the whole run, at most one batch per actor stale (docs/ray.md explains the
trade-off).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from datasets_steer import SteerAugmenter
from datasets_steer.schema import cast_schema_columns

__all__ = ["AugmentActor", "SharedPool"]


class SharedPool:
    """Synthetic outputs of every actor, in arrival order (a Ray actor; texts only, no model).

    `pull(author, cursor)` returns the texts after `cursor` that other authors pushed and the new
    cursor, so each actor receives every other actor's outputs exactly once. `report(author, info)`
    keeps each actor's latest counts and model fingerprints; `reports()` returns them all.
    """

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.authors: list[str] = []
        self.infos: dict[str, dict[str, Any]] = {}

    def push(self, author: str, texts: list[str]) -> int:
        self.texts.extend(texts)
        self.authors.extend([author] * len(texts))
        return len(self.texts)

    def pull(self, author: str, cursor: int) -> tuple[int, list[str]]:
        new = [t for t, a in zip(self.texts[cursor:], self.authors[cursor:], strict=True) if a != author]
        return len(self.texts), new

    def size(self) -> int:
        return len(self.texts)

    def report(self, author: str, info: dict[str, Any]) -> None:
        self.infos[author] = info

    def reports(self) -> dict[str, dict[str, Any]]:
        return dict(self.infos)


class AugmentActor:
    """The callable class `map_batches` runs in each actor: loads the engine once, syncs the pool.

    Each batch is one `SteerAugmenter` call, so one engine call for all of the batch's new outputs
    (the same path as `ds.map(aug, batched=True)`). After each batch the actor reports its counts to
    the `SharedPool`; at shutdown it closes its progress bar and checkpoint file.
    """

    def __init__(
        self, aug: SteerAugmenter, pool: Any = None, num_threads: int | None = None, share: bool = True
    ) -> None:
        import ray

        if num_threads:
            import torch

            torch.set_num_threads(num_threads)
        self._ray = ray
        self.aug = aug
        self.pool = pool
        self.share = share
        self.cursor = 0
        self.author = f"{ray.get_runtime_context().get_actor_id()}-{os.getpid()}"
        self.aug.engine  # noqa: B018 - load the model now, not inside the first batch

    def __call__(self, table):
        import pyarrow as pa

        if self.pool is not None and self.share:
            self.cursor, others = self._ray.get(self.pool.pull.remote(self.author, self.cursor))
            if others:
                self.aug.add_synthetic(others)
        out = self.aug(table.to_pydict())
        if self.pool is not None:
            mine = self.aug.drain_new_outputs()
            if mine and self.share:
                self.pool.push.remote(self.author, mine)
            # waited for: the driver reads the reports once the last batch is back
            self._ray.get(self.pool.report.remote(self.author, self.aug.report()))
        # schema columns typed per block, whatever its values (all None when every output was cut)
        return cast_schema_columns(pa.Table.from_pydict(out), self.aug.schema_columns)

    def __del__(self) -> None:
        # Ray Data deletes the UDF when the actor shuts down gracefully: close the bar and files
        with contextlib.suppress(Exception):
            self.aug.close()
