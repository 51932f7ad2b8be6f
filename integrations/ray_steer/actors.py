"""The two Ray actors of a run: `AugmentActor` (one engine per actor, one `SteerAugmenter` call per
`map_batches` batch) and `SharedPool` (the synthetic outputs every actor shares).

Before each batch an actor pulls the outputs other actors pushed since its last pull; after the
batch it pushes its own. Negatives therefore reflect the whole run, at most one batch per actor
stale (docs/ray.md explains the trade-off).
"""

from __future__ import annotations

import os
from typing import Any

from datasets_steer import SteerAugmenter

__all__ = ["AugmentActor", "SharedPool"]


class SharedPool:
    """Synthetic outputs of every actor, in arrival order (a Ray actor; texts only, no model).

    `pull(author, cursor)` returns the texts after `cursor` that other authors pushed and the new
    cursor, so each actor receives every other actor's outputs exactly once.
    """

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.authors: list[str] = []

    def push(self, author: str, texts: list[str]) -> int:
        self.texts.extend(texts)
        self.authors.extend([author] * len(texts))
        return len(self.texts)

    def pull(self, author: str, cursor: int) -> tuple[int, list[str]]:
        new = [t for t, a in zip(self.texts[cursor:], self.authors[cursor:], strict=True) if a != author]
        return len(self.texts), new

    def size(self) -> int:
        return len(self.texts)


class AugmentActor:
    """The callable class `map_batches` runs in each actor: loads the engine once, syncs the pool.

    Each batch is one `SteerAugmenter` call, so one engine call for all of the batch's new outputs
    (the same path as `ds.map(aug, batched=True)`).
    """

    def __init__(self, aug: SteerAugmenter, pool: Any = None, num_threads: int | None = None) -> None:
        import ray

        if num_threads:
            import torch

            torch.set_num_threads(num_threads)
        self._ray = ray
        self.aug = aug
        self.pool = pool
        self.cursor = 0
        self.author = f"{ray.get_runtime_context().get_actor_id()}-{os.getpid()}"
        self.aug.engine  # noqa: B018 - load the model now, not inside the first batch

    def __call__(self, table):
        import pyarrow as pa

        if self.pool is not None:
            self.cursor, others = self._ray.get(self.pool.pull.remote(self.author, self.cursor))
            if others:
                self.aug.add_synthetic(others)
        out = self.aug(table.to_pydict())
        if self.pool is not None:
            mine = self.aug.drain_new_outputs()
            if mine:
                self.pool.push.remote(self.author, mine)
        return pa.Table.from_pydict(out)
