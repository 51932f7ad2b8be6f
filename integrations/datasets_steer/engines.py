"""The engines of this process: one per model setting, loaded lazily, never pickled.

A forked child (datasets `num_proc`) inherits the registry, so it reuses the parent's engine
(copy-on-write weights) instead of loading the model again. Spawned workers and Ray actors start
empty and load their own from the augmenter's settings (a model id, folder or picklable factory).
"""

from __future__ import annotations

import os
import threading
from typing import Any

from steer_plugins import NegativePool, SteerConfig, SteerEngine

__all__ = ["ENGINES", "EngineRegistry", "describe_model", "load_engine", "source_stamp"]


class EngineRegistry:
    """Engines by key, and which (process, engine, pool content) marks have seeded a pool. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engines: dict[str, SteerEngine] = {}
        self._seeded: set[tuple[int, int, str]] = set()

    def put(self, key: str, engine: SteerEngine) -> None:
        with self._lock:
            self._engines[key] = engine

    def pop(self, key: str) -> SteerEngine | None:
        with self._lock:
            return self._engines.pop(key, None)

    def get_or_load(self, key: str, load: Any) -> SteerEngine:
        """The engine under `key`, or `load()`'s (stored under `key`)."""
        with self._lock:
            engine = self._engines.get(key)
            if engine is None:
                engine = self._engines[key] = load()
            return engine

    def first_seeding(self, engine: SteerEngine, content: str) -> bool:
        """True the first time this process seeds `engine`'s pool with `content` (a hash)."""
        mark = (os.getpid(), id(engine), content)
        with self._lock:
            if mark in self._seeded:
                return False
            self._seeded.add(mark)
            return True


#: This process's engines (module state: a forked child inherits it).
ENGINES = EngineRegistry()


def describe_model(spec: Any) -> str | None:
    """A stable text identity of a model source, for fingerprints (a factory by its import path).

    Raises:
        TypeError: a model object (it cannot travel to other processes): pass `engine=` instead.
    """
    if spec is None:
        return None
    if isinstance(spec, (str, os.PathLike)):
        return str(spec)
    if callable(spec):
        return (
            f"factory:{getattr(spec, '__module__', '?')}.{getattr(spec, '__qualname__', type(spec).__name__)}"
        )
    raise TypeError(
        f"`expert`/`base` must be a model id, a folder/.gguf path or a picklable factory returning "
        f"(expert, base, tokenizer) or a SteerEngine, got {type(spec).__name__}: for a model already in "
        "memory pass engine=SteerEngine(model, ...) (in-process and forked workers only)"
    )


def source_stamp(spec: Any) -> list[tuple[str, int, int]] | None:
    """Size and modification time of a model source's files (a folder's top level, or one file), or
    None for anything that is not a local path (a model id, a factory).

    Cheap (no file is read): it goes into the augmenter's pickled state, so datasets' cache
    fingerprint of a `map` changes when the weights are rewritten in place. The checkpoint is checked
    against the loaded weights' own fingerprint (`SteerEngine.fingerprint`), which reads them.
    """
    if not isinstance(spec, (str, os.PathLike)):
        return None
    path = os.path.expanduser(os.fspath(spec))
    try:
        if os.path.isfile(path):
            st = os.stat(path)
            return [(os.path.basename(path), st.st_size, st.st_mtime_ns)]
        if os.path.isdir(path):
            with os.scandir(path) as entries:
                files = [(e.name, e.stat()) for e in entries if e.is_file()]
            return sorted((name, st.st_size, st.st_mtime_ns) for name, st in files)
    except OSError:
        return None
    return None


def load_engine(
    expert: Any,
    base: Any,
    tokenizer: Any,
    *,
    config: SteerConfig,
    seed: int,
    max_batch_size: int,
    engine_kwargs: dict[str, Any],
    rank: int | None = None,
) -> SteerEngine:
    """Build a `SteerEngine` from the augmenter's model settings.

    Args:
        expert: a model id/folder/.gguf path, or a factory returning a `SteerEngine` (used as is) or
            `(expert, base, tokenizer)`.
        base, tokenizer: as for `SteerEngine` (ignored with a factory).
        config: the engine's default settings.
        seed: the seed of the (empty) negative pool.
        max_batch_size: prompts decoded together (unless `engine_kwargs` sets it).
        engine_kwargs: extra `SteerEngine` arguments; `device="cuda"` with a `rank` becomes
            `cuda:<rank % device_count>`.
        rank: the datasets `with_rank` worker rank, if any.
    """
    kwargs = dict(engine_kwargs)
    device = kwargs.get("device")
    if rank is not None and isinstance(device, str) and device == "cuda":
        import torch

        kwargs["device"] = f"cuda:{rank % max(1, torch.cuda.device_count())}"
    kwargs.setdefault("max_batch_size", max_batch_size)
    pool = NegativePool(seed=seed)
    if callable(expert) and not isinstance(expert, (str, os.PathLike)):
        made = expert()
        if isinstance(made, SteerEngine):
            return made
        if not (isinstance(made, tuple) and len(made) == 3):
            raise TypeError(
                "an `expert` factory must return a SteerEngine or a tuple (expert, base, tokenizer), "
                f"got {type(made).__name__}"
            )
        expert, base, tokenizer = made
    return SteerEngine(expert, base, tokenizer, config=config, pool=pool, **kwargs)
