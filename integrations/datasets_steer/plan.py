"""Row planning: which input rows of a batch still need outputs, and the prompts and seeds of one
engine call that produces them.

A `RowPlan` lists every prompt of the call in order (row by row, output 0..n-1 of each), with its
own seed, so the engine can decode them in any grouping and each output stays the same.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RowPlan", "plan_rows"]


@dataclass
class RowPlan:
    """The prompts of one engine call and the (row key, output index) each one fills.

    Attributes:
        n: outputs per row.
        prompts: one prompt per output to generate.
        seeds: one seed per prompt (`row_seed(key, j)`).
        owners: `(key, j)` per prompt: output `j` of the row with `key`.
        reused: rows of the batch already finished (in the checkpoint), not planned again.
    """

    n: int
    prompts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    owners: list[tuple[str, int]] = field(default_factory=list)
    reused: int = 0

    @property
    def keys(self) -> list[str]:
        """The planned rows' keys, in order."""
        return list(dict.fromkeys(key for key, _ in self.owners))

    def __len__(self) -> int:
        return len(self.prompts)


def plan_rows(
    rows: list[dict[str, Any]],
    keys: list[str],
    done: Mapping[str, Any],
    *,
    n: int,
    render: Callable[[dict[str, Any]], str],
    seed_of: Callable[[str, int], int],
) -> RowPlan:
    """Plan `n` outputs for each row whose key is not in `done` (rows sharing a key are planned once).

    Args:
        rows, keys: the batch's rows and their keys.
        done: finished rows by key (the checkpoint).
        n: outputs per row.
        render: the row's prompt (template filled, chat template applied).
        seed_of: the seed of output `j` of the row with `key`.
    """
    plan = RowPlan(n)
    planned: set[str] = set()
    for row, key in zip(rows, keys, strict=True):
        if key in done:
            plan.reused += 1
        elif key not in planned:
            planned.add(key)
            prompt = render(row)
            for j in range(n):
                plan.prompts.append(prompt)
                plan.seeds.append(seed_of(key, j))
                plan.owners.append((key, j))
    return plan
