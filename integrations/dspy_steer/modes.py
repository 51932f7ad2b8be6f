"""Evaluation mode (a frozen negative pool) and the pool state that goes into DSPy's cache key.

With η > 0 and the default `add_to_pool`, every STEER call appends its output to the negative pool,
so later answers are pushed away from earlier ones. That is the point when generating data, and a
bias when scoring a program: in a `dspy.Evaluate` (or an optimizer's trials) the tenth example's
answer is steered away from the first nine answers. `evaluation_mode()` freezes the pool for a
block; `evaluation_mode(eta=0.0)` also turns negative prompting off.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dspy

from steer_plugins import NegativePool, SteerConfig

__all__ = ["FROZEN_SETTING", "evaluation_mode", "frozen_options", "pool_state"]

FROZEN_SETTING = "steer_frozen"
"""The `dspy.settings` key `evaluation_mode` sets (DSPy copies settings into its worker threads)."""


@contextmanager
def evaluation_mode(*, eta: float | None = None) -> Iterator[None]:
    """Within the block, every STEER LM call leaves the negative pool as it is (`add_to_pool=False`);
    `eta=0.0` also decodes without negative prompting (γ still applies). Use it around
    `dspy.Evaluate(...)` and `optimizer.compile(...)`; outside it, the default, the pool grows as the
    paper does. It reaches the threads DSPy starts (`Evaluate`, `Parallel`, `Module.batch`,
    optimizers) and predictors with their own `lm` (`set_lm`), since it is a DSPy setting read by
    the STEER engine, and it is part of DSPy's cache key.

    Example:
        >>> with dspy_steer.evaluation_mode():  # or lm.frozen()
        ...     score = dspy.Evaluate(devset=dev, metric=exact_match)(program)
    """
    overrides: dict[str, Any] = {"add_to_pool": False}
    if eta is not None:
        SteerConfig().merged(eta=eta)  # the same checks as everywhere else, now
        overrides["eta"] = eta
    with dspy.context(**{FROZEN_SETTING: overrides}):
        yield


def frozen_options() -> dict[str, Any]:
    """The per-call STEER overrides `evaluation_mode` sets in this thread ({} outside it)."""
    return dict(dspy.settings.get(FROZEN_SETTING) or {})


def pool_state(pool: NegativePool) -> str:
    """A short digest of the pool's contents (size and hash), for DSPy's cache key."""
    texts = pool.texts
    digest = hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    return f"{len(texts)}:{digest.hexdigest()[:16]}"
