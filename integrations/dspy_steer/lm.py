"""`steer_lm`: a `dspy.LM` (`SteerLM`) that decodes with STEER, and `steer_options` for per-call settings.

DSPy's response cache and a diversity tool: DSPy caches by request (model string, messages,
settings), so four identical calls would return one answer four times and the pool would grow
once. `SteerLM` decides per call, before DSPy's lookup:

- no seed fixed (`seed` neither in `steer_lm(...)`, the LM's or the call's kwargs, nor the
  per-call STEER options): the call is a fresh sample, so it bypasses the cache (`cache=False` for
  that call); an explicit per-call `cache=True` still caches it;
- a seed fixed: the call is reproducible and cached, and when its negatives are drawn from the pool
  (no fixed `negatives`, η > 0), the pool's state (`pool_state`: size and hash) is part of the key,
  so the cache hits while the pool is unchanged and misses once it has grown.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import dspy

from steer_plugins import NegativePool, SteerConfig, SteerEngine, shared_negatives

from .engine import AsyncSteerDSPyEngine, SteerDSPyEngine
from .modes import evaluation_mode, frozen_options, pool_state
from .translation import PER_CALL_KEYS, STEER_METADATA_KEY

__all__ = ["SteerLM", "steer_lm", "steer_options", "steer_call_config"]

_ENGINE_KWARGS = (
    "tokenizer",
    "device",
    "dtype",
    "trust_remote_code",
    "peft_mode",
    "max_batch_size",
    "coalesce_ms",
)


class SteerLM(dspy.LM):
    """The `dspy.LM` `steer_lm` returns: DSPy's LM, with a per-call cache decision (module docstring)
    and `frozen()` for evaluation. Saved programs record it by class path, so loading them needs
    `allow_unsafe_lm_state=True`, as any custom engine does."""

    def __call__(self, prompt=None, *, messages=None, **kwargs):
        return super().__call__(prompt, messages=messages, **self.call_kwargs(kwargs))

    async def acall(self, prompt=None, *, messages=None, **kwargs):
        return await super().acall(prompt, messages=messages, **self.call_kwargs(kwargs))

    def frozen(self, *, eta: float | None = None):
        """`dspy_steer.evaluation_mode(eta=eta)`: the pool stays as it is within the block."""
        return evaluation_mode(eta=eta)

    def call_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """`kwargs` of one call with the cache decision applied: `cache=False` for an unseeded call,
        the pool's state in `metadata["steer"]` for a seeded one that draws from the pool, and the
        `evaluation_mode` overrides (part of the key: η=0 answers differ)."""
        engine = self.engine
        if not isinstance(engine, SteerDSPyEngine):
            return kwargs
        kwargs = dict(kwargs)
        metadata = dict(kwargs["metadata"] if "metadata" in kwargs else self.kwargs.get("metadata") or {})
        given = dict(metadata.get(STEER_METADATA_KEY) or {})
        steer = {**given, **frozen_options()}
        if "cache" not in kwargs and self.cache:
            seed = kwargs.get("seed", self.kwargs.get("seed"))
            seed = steer.get("seed", engine.resolved.seed) if seed is None else seed
            if seed is None:
                kwargs["cache"] = False  # a fresh sample: never served from, nor stored in, the cache
            elif steer.get("negatives") is None and steer.get("eta", engine.resolved.eta) > 0:
                steer["pool_state"] = pool_state(engine.engine.pool)
        if steer != given:
            kwargs["metadata"] = {**metadata, STEER_METADATA_KEY: steer}
        return kwargs


def steer_lm(
    expert: Any = None,
    base: Any = None,
    *,
    engine: SteerEngine | None = None,
    pool: Sequence[str] | NegativePool | None = None,
    add_to_pool: bool | None = None,
    name: str | None = None,
    cache: bool = True,
    num_retries: int = 0,
    engine_kwargs: dict[str, Any] | None = None,
    **config_fields: Any,
) -> dspy.LM:
    """A `dspy.LM` whose every call is STEER-decoded by the engine's worker (concurrent calls coalesce).

    Args:
        expert, base: model sources as `SteerEngine` takes them (HF folder, `.gguf`, PEFT adapter,
            `"smollm2-135m-instruct"`, loaded models); ignored when `engine` is given.
        engine: an already loaded `SteerEngine` to share (its `config` gives the defaults).
        pool: real examples for the negative pool (added as real to a given engine's pool).
        add_to_pool: append outputs to the pool; None = the engine's default (the paper's: when
            the pool holds real examples and negatives were drawn from it).
        name: a stable name for in-memory models, so a saved program can find the engine again
            (`dspy_steer.register_engine`).
        cache: DSPy's response cache (the model string carries the STEER settings' hash). Only
            seeded calls use it; unseeded ones are fresh samples (see the module docstring).
        num_retries: DSPy retries (local decoding has no transient failures; default 0).
        engine_kwargs: `SteerEngine` keyword arguments (`tokenizer`, `device`, `dtype`, ...).
        **config_fields: `SteerConfig` fields (`gamma`, `eta`, `num_negatives`, `max_new_tokens`, ...);
            unknown names raise `ValueError`.

    Returns:
        `SteerLM("steer/<model>-<hash>", engine=SteerDSPyEngine, async_engine=AsyncSteerDSPyEngine)`,
        a `dspy.LM`.

    Example:
        >>> lm = steer_lm("smollm2-135m-instruct", gamma=0.2, eta=0.6, max_new_tokens=48,
        ...               pool=["What makes a comet's tail point away from the Sun?"])
        >>> dspy.configure(lm=lm, adapter=FieldByFieldAdapter())
        >>> dspy.Predict("topic -> question, answer")(topic="astronomy")
    """
    unknown = sorted(set(config_fields) - set(SteerConfig.model_fields))
    if unknown:
        hint = [k for k in unknown if k in _ENGINE_KWARGS]
        raise ValueError(
            f"unknown STEER setting(s) {unknown} for steer_lm; valid SteerConfig fields: "
            f"{sorted(SteerConfig.model_fields)}"
            + (f". {hint} are SteerEngine arguments: pass engine_kwargs={{...}}" if hint else "")
        )
    source = None
    if engine is None:
        if expert is None:
            raise TypeError("steer_lm needs `expert` (e.g. 'smollm2-135m-instruct') or a loaded `engine=`")
        kwargs = dict(engine_kwargs or {})
        bad = sorted(set(kwargs) - set(_ENGINE_KWARGS))
        if bad:
            raise ValueError(f"unknown engine_kwargs {bad}; valid: {list(_ENGINE_KWARGS)}")
        engine = SteerEngine(expert, base, pool=pool, **kwargs)
        if all(isinstance(s, str) for s in (expert, base) if s is not None) and "tokenizer" not in kwargs:
            source = {"expert": expert, "base": base, **_plain(kwargs)}
    else:
        if not isinstance(engine, SteerEngine):
            raise TypeError(f"`engine` must be a steer_plugins.SteerEngine, got {type(engine).__name__}")
        if expert is not None or base is not None or engine_kwargs:
            raise TypeError(
                "pass either model sources (expert, base, engine_kwargs) or a loaded `engine=`, not both"
            )
        if pool is not None:
            known = set(engine.pool.texts)
            texts = pool.texts if isinstance(pool, NegativePool) else list(pool)
            engine.pool.add([t for t in texts if t not in known], real=True)
    sync = SteerDSPyEngine(engine, config=config_fields, add_to_pool=add_to_pool, source=source, name=name)
    return SteerLM(
        sync.model, engine=sync, async_engine=AsyncSteerDSPyEngine(sync), cache=cache, num_retries=num_retries
    )


def _plain(engine_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The engine arguments a saved program can record (plain values; a dtype by its name)."""
    import torch

    out = {}
    for k, v in engine_kwargs.items():
        if isinstance(v, torch.dtype):
            out[k] = str(v).removeprefix("torch.")
        elif isinstance(v, str | int | float | bool):
            out[k] = v
    return out


def steer_call_config(
    *, negatives: Sequence[str] | None = None, add_to_pool: bool | None = None, **config_fields: Any
) -> dict[str, Any]:
    """LM keyword arguments carrying per-call STEER settings (they are part of DSPy's cache key).

    Example:
        >>> predict(topic="tides", config=steer_call_config(negatives=["Why is the sea salty?"], gamma=0.5))
        >>> lm("Write a question:", **steer_call_config(eta=0.0))
    """
    unknown = sorted(set(config_fields) - set(SteerConfig.model_fields))
    if unknown:
        raise ValueError(
            f"unknown STEER setting(s) {unknown}; valid: {sorted([*SteerConfig.model_fields, *PER_CALL_KEYS])}"
        )
    SteerConfig().merged(**config_fields)  # validate values now, not in the worker
    options: dict[str, Any] = dict(config_fields)
    if negatives is not None:
        options["negatives"] = shared_negatives(negatives)
    if add_to_pool is not None:
        options["add_to_pool"] = bool(add_to_pool)
    return {"metadata": {STEER_METADATA_KEY: options}}


@contextmanager
def steer_options(
    lm: dspy.LM | None = None,
    *,
    negatives: Sequence[str] | None = None,
    add_to_pool: bool | None = None,
    **config_fields: Any,
) -> Iterator[dspy.LM]:
    """Within the block, DSPy calls use a copy of `lm` (default: the configured LM) with these settings.

    The settings travel as LM kwargs, so they are part of DSPy's cache key and apply in threads
    started by `dspy.Parallel` / `Module.batch` too. Predictors with their own `lm` are not affected.

    Example:
        >>> with steer_options(negatives=["What is a black hole?"], eta=0.8):
        ...     pred = program(topic="astronomy")
    """
    lm = lm or dspy.settings.lm
    if not isinstance(getattr(lm, "engine", None), SteerDSPyEngine):
        raise TypeError("steer_options needs a STEER LM (dspy_steer.steer_lm), configured or passed as `lm`")
    extra = steer_call_config(negatives=negatives, add_to_pool=add_to_pool, **config_fields)["metadata"]
    metadata = dict(lm.kwargs.get("metadata") or {})
    metadata[STEER_METADATA_KEY] = {**metadata.get(STEER_METADATA_KEY, {}), **extra[STEER_METADATA_KEY]}
    scoped = lm.copy(metadata=metadata)
    with dspy.context(lm=scoped):
        yield scoped
