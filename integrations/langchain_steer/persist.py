"""What pickling and deep-copying a `SteerLLM` / `ChatSteer` means.

The engine holds the weights, a worker thread and locks, so it is never copied:

- `copy.deepcopy(llm)` (and `llm.model_copy(deep=True)`) copies every setting and **shares** the
  engine (weights, pool and worker), as a deep copy of an API model shares its HTTP client.
- `pickle.dumps(llm)` stores every setting plus an `EngineRef`: how to find or rebuild the engine.
  Unpickling uses, in order: the same engine if it is alive in this process (same object, same
  pool); an engine registered under the same name with `register_engine` (e.g. rebuilt by the
  receiving process); else, when the model was built from model sources (`expert=`/`model_id=`
  strings or paths), a new engine loaded from them, with the negative pool as it was when pickled.
  A model whose engine was built from in-memory models cannot be rebuilt elsewhere: unpickling it
  in another process raises a `pickle.UnpicklingError` that says to call `register_engine` first.
"""

from __future__ import annotations

import os
import pickle
import threading
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Any

from steer_plugins import NegativePool, SteerConfig, SteerEngine

__all__ = ["EngineRef", "engine_ref", "register_engine", "resolve_engine"]

_LOCK = threading.Lock()
_BY_TOKEN: weakref.WeakValueDictionary[str, SteerEngine] = weakref.WeakValueDictionary()
_TOKENS: weakref.WeakKeyDictionary[SteerEngine, str] = weakref.WeakKeyDictionary()
_BY_NAME: weakref.WeakValueDictionary[str, SteerEngine] = weakref.WeakValueDictionary()


@dataclass(frozen=True)
class EngineRef:
    """A picklable stand-in for a `SteerEngine` (see the module docstring)."""

    token: str
    name: str
    source: dict[str, Any] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    pool: str | None = None


def register_engine(engine: SteerEngine, name: str | None = None) -> str:
    """Make `engine` the one that unpickled LangChain models named `name` (default `engine.name`) use.

    The registry holds engines weakly (it never keeps weights alive): keep your own reference.

    Example:
        >>> engine = SteerEngine(my_expert, my_base, tokenizer)  # in the receiving process
        >>> register_engine(engine)
        >>> llm = pickle.loads(blob)  # uses `engine`
    """
    if not isinstance(engine, SteerEngine):
        raise TypeError(f"`engine` must be a steer_plugins.SteerEngine, got {type(engine).__name__}")
    key = name or engine.name
    with _LOCK:
        _BY_NAME[key] = engine
    return key


def source_of(expert: Any, base: Any, engine_kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """How to load the engine again: the model sources when they are paths or ids, else None."""
    sources = (expert, base)
    if expert is None or not all(s is None or isinstance(s, str | os.PathLike) for s in sources):
        return None
    return {"expert": os.fspath(expert), "base": None if base is None else os.fspath(base), **engine_kwargs}


def engine_ref(engine: SteerEngine, source: dict[str, Any] | None) -> EngineRef:
    """The `EngineRef` that pickles in place of `engine` (it is registered for this process)."""
    with _LOCK:
        token = _TOKENS.get(engine)
        if token is None:
            token = f"{os.getpid()}-{uuid.uuid4().hex}"
            _TOKENS[engine] = token
            _BY_TOKEN[token] = engine
    return EngineRef(
        token=token,
        name=engine.name,
        source=source,
        config=engine.config.model_dump(),
        pool=engine.pool.to_json() if source is not None else None,
    )


def resolve_engine(ref: EngineRef) -> SteerEngine:
    """The engine an unpickled model uses (see the module docstring for the order)."""
    with _LOCK:
        engine = _BY_TOKEN.get(ref.token) or _BY_NAME.get(ref.name)
    if engine is not None:
        return engine
    if ref.source is None:
        raise pickle.UnpicklingError(
            f"cannot unpickle a LangChain STEER model: its engine {ref.name!r} was built from in-memory models "
            "and is not in this process. Build the SteerEngine here and call "
            f"langchain_steer.register_engine(engine, {ref.name!r}) before unpickling"
        )
    source = dict(ref.source)
    pool = NegativePool.from_json(ref.pool) if ref.pool else None
    engine = SteerEngine(
        source.pop("expert"),
        source.pop("base", None),
        config=SteerConfig(**ref.config),
        pool=pool,
        **source,
    )
    with _LOCK:
        _BY_TOKEN[ref.token] = engine  # later copies of the same pickle share it
        _TOKENS[engine] = ref.token
    return engine
