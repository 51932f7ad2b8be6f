"""One engine call per map batch: every planned output in one `engine.stream`, each row handed on
as soon as its last output arrives (so long jobs checkpoint as they go).

The call carries one `CallOptions` for all prompts: the augmenter's `SteerConfig` fields and one
seed per prompt. Negatives are left to the engine, which draws each prompt's K from the pool as it
stands when the prompt starts (seeded by that prompt's seed). Outputs join the pool through
`on_output` as they arrive (the augmenter keeps duplicates out when dedup is on).
The engine's scheduler decides how the prompts are batched; each prompt's own seed keeps its output
independent of that grouping.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from steer_plugins import CallOptions, SteerEngine, SteerResult

from .plan import RowPlan

__all__ = ["generate_rows", "output_record"]

RowDone = Callable[[str, list[dict[str, Any]]], None]
OutputDone = Callable[[list[str]], None]


def output_record(result: SteerResult) -> dict[str, Any]:
    """One output as the checkpoint keeps it; `config` records the exact settings, this output's
    seed included."""
    return {
        "text": result.text,
        "negatives": list(result.negatives_used),
        "seed": result.seed,
        "config": result.config.merged(seed=result.seed).model_dump_json(),
        "completion_tokens": result.completion_tokens,
        "finish_reason": result.finish_reason,
    }


def generate_rows(
    engine: SteerEngine,
    plan: RowPlan,
    options: CallOptions,
    on_row: RowDone,
    on_output: OutputDone | None = None,
) -> None:
    """Decode every prompt of `plan` in one `engine.stream` call; call `on_output([text])` as each
    output arrives and `on_row(key, records)` once per row, on this thread, when all of its outputs
    are done.

    An exception from `on_row` (or an interrupt) closes the stream, which cancels the prompts still
    running; rows already handed on stay handed on.
    """
    slots: dict[str, list[dict[str, Any] | None]] = {key: [None] * plan.n for key in plan.keys}
    with contextlib.closing(engine.stream(plan.prompts, options=options)) as events:
        for ev in events:
            if ev.result is None:
                continue
            if on_output is not None and ev.result.finish_reason != "cancelled":
                on_output([ev.result.text])
            key, j = plan.owners[ev.index]
            outputs = slots[key]
            outputs[j] = output_record(ev.result)
            if all(o is not None for o in outputs):
                on_row(key, slots.pop(key))
