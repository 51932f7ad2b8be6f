"""DSPy custom engines over a `SteerEngine`: `complete(Request) -> Response` and `stream(Request)`.

This is DSPy 3.4's supported custom-LM route (`dspy.LM(model, engine=..., async_engine=...)`);
DSPy owns the cache, retries, `n` fan-out, history and usage tracking, and calls `complete` once
per candidate from whatever thread runs the program. Each call is one engine call with one
`CallOptions` (see `translation.py` for how a `Request` maps onto it); the engine's scheduler
coalesces concurrent calls into one decode batch.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any

import torch
from dspy.lm15 import Request, Response, StreamStartEvent

from steer_plugins import CallOptions, NegativePool, SteerConfig, SteerEngine

from .translation import call_options, check_request, invalid_request, render_prompt, response, stream_events

__all__ = ["SOURCE_KEYS", "SteerDSPyEngine", "AsyncSteerDSPyEngine", "engine_from_source", "register_engine"]

PROVIDER = "steer"

# Engines by `SteerEngine.name`, so a saved program whose models were passed in memory can find
# them again in this process (`load_state`). Weak: a registry never keeps weights alive.
_REGISTRY: weakref.WeakValueDictionary[str, SteerEngine] = weakref.WeakValueDictionary()
_REGISTRY_LOCK = threading.Lock()


def register_engine(engine: SteerEngine, name: str | None = None) -> str:
    """Make `engine` findable by `load_state` under `name` (default: `engine.name`); returns the name.

    `steer_lm` registers every engine it wraps; call this yourself only for a program saved in one
    process and loaded in another that builds its engine from in-memory models.
    """
    key = name or engine.name
    with _REGISTRY_LOCK:
        _REGISTRY[key] = engine
    return key


def _slug(name: str) -> str:
    tail = re.split(r"[\\/|]", name.split("@")[0].rstrip("/"))[-1] or "model"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", tail).strip("-").lower()[:40] or "model"


SOURCE_KEYS = (
    "expert",
    "base",
    "device",
    "dtype",
    "peft_mode",
    "max_batch_size",
    "coalesce_ms",
    "min_forward_rows",
)
"""What a saved `source` may hold: the model sources and plain `SteerEngine` settings (never code)."""
_SOURCE_TYPES: dict[str, tuple[type, ...]] = {
    "expert": (str,),
    "base": (str, type(None)),
    "device": (str,),
    "dtype": (str,),
    "peft_mode": (str,),
    "max_batch_size": (int,),
    "coalesce_ms": (int, float),
    "min_forward_rows": (int, type(None)),
}


def engine_from_source(source: Any, pool: Any, name: str | None) -> SteerEngine:
    """A `SteerEngine` loaded from a saved `source`, which is checked first: only `SOURCE_KEYS`, of
    plain types, and no `trust_remote_code` (a saved file never decides to run a model's code)."""
    if not isinstance(source, dict):
        raise ValueError(f"saved STEER `source` must be a dict, got {type(source).__name__}")
    if source.get("trust_remote_code", False) is not False:
        raise ValueError(
            f"the saved state of STEER engine {name!r} asks for trust_remote_code={source['trust_remote_code']!r}; "
            "loading a saved program never runs a model's own code. Read the code, build the engine yourself "
            f"(SteerEngine(..., trust_remote_code=True)) and call dspy_steer.register_engine(engine, {name!r}) "
            "before loading"
        )
    unknown = sorted(set(source) - set(SOURCE_KEYS) - {"trust_remote_code"})
    if unknown:
        raise ValueError(f"saved STEER `source` has unknown key(s) {unknown}; allowed: {list(SOURCE_KEYS)}")
    for key, value in source.items():
        types = _SOURCE_TYPES.get(key)
        if types is not None and (isinstance(value, bool) or not isinstance(value, types)):
            raise ValueError(
                f"saved STEER `source[{key!r}]` must be {' or '.join(t.__name__ for t in types)}, got {value!r}"
            )
    kwargs = {k: v for k, v in source.items() if k not in ("expert", "base", "trust_remote_code")}
    if "dtype" in kwargs:
        kwargs["dtype"] = _dtype(kwargs["dtype"])
    return SteerEngine(
        source["expert"],
        source.get("base"),
        config=SteerConfig(),
        pool=NegativePool(pool),
        trust_remote_code=False,
        **kwargs,
    )


def _dtype(name: str) -> torch.dtype:
    found = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(found, torch.dtype):
        raise ValueError(
            f"saved STEER `source['dtype']` must name a torch dtype (e.g. 'bfloat16'), got {name!r}"
        )
    return found


class SteerDSPyEngine:
    """The synchronous DSPy engine: one `SteerEngine`, fixed STEER settings, per-call overrides.

    Args:
        engine: a loaded `SteerEngine` (shared freely between LMs and threads).
        config: `SteerConfig` fields applied to every call (validated now; unknown names raise).
        add_to_pool: append outputs to `engine.pool` (None = the engine's default: when the pool
            was seeded with real examples and negatives came from it, as the paper does).
        source: how to rebuild the engine in another process, e.g. `{"expert": "smollm2-135m-instruct"}`;
            None when the models were given in memory (then `load_state` needs `register_engine`).
        name: a stable name for the model pair (default `engine.name`, which for in-memory models
            differs per process); it is registered (`register_engine`) and hashed into `model`.

    Example:
        >>> steer = SteerEngine("smollm2-135m-instruct", pool=["What is a comet?"])
        >>> eng = SteerDSPyEngine(steer, config={"max_new_tokens": 32})
        >>> lm = dspy.LM(eng.model, engine=eng, async_engine=AsyncSteerDSPyEngine(eng))
    """

    #: Capability hints DSPy reads from a custom engine: JSONAdapter then sends `response_format`,
    #: which becomes the engine's `constraint=` (see `structured.py`).
    supports_response_schema = True
    supported_params = frozenset({"temperature", "max_tokens", "top_p", "stop", "seed", "response_format"})

    def __init__(
        self,
        engine: SteerEngine,
        *,
        config: dict[str, Any] | None = None,
        add_to_pool: bool | None = None,
        source: dict[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        if not isinstance(engine, SteerEngine):
            raise TypeError(f"`engine` must be a steer_plugins.SteerEngine, got {type(engine).__name__}")
        if add_to_pool is not None and not isinstance(add_to_pool, bool):
            raise TypeError(f"`add_to_pool` must be True, False or None, got {add_to_pool!r}")
        self.engine = engine
        self.config: dict[str, Any] = dict(config or {})
        self.resolved: SteerConfig = engine.config.merged(**self.config)  # raises on unknown fields
        self.add_to_pool = add_to_pool
        self.source = dict(source) if source else None
        self.name = name
        self.registered_name = register_engine(engine, name)
        self.model = f"{PROVIDER}/{_slug(self.registered_name)}-{self.fingerprint()}"

    # ------------------------------------------------------------------ identity
    def fingerprint(self) -> str:
        """Hash of the model pair, every resolved `SteerConfig` field, the real negative examples
        the pool was seeded with, and `add_to_pool`: equal iff two engines answer alike."""
        pool = self.engine.pool
        real = pool.texts[: pool.num_real]
        blob = json.dumps(
            {
                "engine": self.engine.fingerprint(**self.config)
                if self.name is None
                else f"{self.name}|{self.resolved.fingerprint()}",
                "pool": hashlib.sha256(json.dumps(real).encode()).hexdigest(),
                "add_to_pool": self.add_to_pool,
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    # ------------------------------------------------------------------ DSPy engine protocol
    def complete(self, request: Request) -> Response:
        """Generate one completion for `request` (DSPy calls this once per candidate)."""
        prompt, options = self.translate(request)
        with invalid_request():
            result = self.engine.generate([prompt], options=options)[0]
        return response(request, result)

    def stream(self, request: Request) -> Iterator[Any]:
        """Yield a start event, one text delta per decoded piece, and an end event with usage."""
        prompt, options = self.translate(request)
        yield StreamStartEvent(id=None, model=request.model)
        events = self.engine.stream([prompt], options=options)
        try:
            with invalid_request():  # raised by the worker while preparing this request
                for ev in events:
                    yield from stream_events(ev)
        finally:
            events.close()  # closing early cancels the prompt in the engine

    def close(self) -> None:
        """DSPy borrows the engine; the `SteerEngine` stays usable (its worker idles out by itself)."""

    # ------------------------------------------------------------------ save / load
    def dump_state(self) -> dict[str, Any]:
        """JSON state: the STEER settings, the real negative examples and how to find the models."""
        pool = self.engine.pool
        return {
            "name": self.name,
            "engine_name": self.registered_name,
            "source": self.source,
            "config": self.resolved.model_dump(mode="json"),
            "add_to_pool": self.add_to_pool,
            "pool": pool.texts[: pool.num_real],
            "model": self.model,
        }

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> SteerDSPyEngine:
        """Rebuild from `dump_state`: reuse a registered engine of that name, else load `source`.

        A saved file is data, not code: `source` may hold only `SOURCE_KEYS` (the model sources and
        plain `SteerEngine` settings), and it can never turn on `trust_remote_code`: a program
        saved with remote code must find its engine registered (`register_engine`), built by you.

        Raises:
            ValueError: unknown or ill-typed `source` keys, `trust_remote_code` asked for, no
                engine to find, or a rebuilt engine that answers as another model string.
        """
        if not isinstance(state, dict):
            raise ValueError(
                f"STEER engine state must be a dict (from dump_state), got {type(state).__name__}"
            )
        engine = _REGISTRY.get(state.get("engine_name") or "")
        if engine is None:
            source = state.get("source")
            if not source:
                raise ValueError(
                    f"cannot load STEER engine {state.get('engine_name')!r}: its models were passed in memory. "
                    "Build the SteerEngine first and call dspy_steer.register_engine(engine, "
                    f"{state.get('engine_name')!r}) before loading the program"
                )
            engine = engine_from_source(source, state.get("pool") or (), state.get("engine_name"))
        elif state.get("pool"):
            known = set(engine.pool.texts)
            engine.pool.add([t for t in state["pool"] if t not in known], real=True)
        config = {
            k: v for k, v in (state.get("config") or {}).items() if getattr(engine.config, k, None) != v
        }
        loaded = cls(
            engine,
            config=config,
            add_to_pool=state.get("add_to_pool"),
            source=state.get("source"),
            name=state.get("name"),
        )
        if state.get("model") and state["model"] != loaded.model:
            raise ValueError(
                f"the loaded STEER engine answers as {loaded.model!r}, not {state['model']!r} as saved: the model "
                "pair, settings or seed examples differ from the saved program's"
            )
        return loaded

    # ------------------------------------------------------------------ pickle (save_program=True)
    def __getstate__(self) -> dict[str, Any]:
        """Pickled as its `dump_state` (settings, real examples, where the models are): never the
        weights, the worker thread or its locks."""
        return self.dump_state()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(type(self).load_state(state).__dict__)

    # ------------------------------------------------------------------ Request -> engine call
    def translate(self, request: Request) -> tuple[str, CallOptions]:
        """(prompt, validated `CallOptions`) for one `Request`.

        Raises `dspy.lm15` errors, which DSPy turns into its own (`LMUnsupportedFeatureError`,
        `LMInvalidRequestError`, `LMConfigurationError`).
        """
        check_request(request, self.model)
        prompt = self.render(request)  # refuses non-text parts before any structured-output check
        return prompt, call_options(self.engine, request, self.config, self.add_to_pool)

    def render(self, request: Request) -> str:
        """The prompt text: the chat template over system + turns (a trailing assistant turn is
        continued, not closed)."""
        return render_prompt(self.engine, request)


class AsyncSteerDSPyEngine:
    """The async twin of `SteerDSPyEngine` (pass it as `dspy.LM(..., async_engine=...)`).

    It awaits the same `SteerEngine` worker without blocking the event loop.
    """

    def __init__(self, sync: SteerDSPyEngine) -> None:
        if not isinstance(sync, SteerDSPyEngine):
            raise TypeError(f"`sync` must be a SteerDSPyEngine, got {type(sync).__name__}")
        self.sync = sync

    @property
    def model(self) -> str:
        return self.sync.model

    async def complete(self, request: Request) -> Response:
        prompt, options = self.sync.translate(request)
        with invalid_request():
            results = await self.sync.engine.agenerate([prompt], options=options)
        return response(request, results[0])

    async def stream(self, request: Request) -> AsyncIterator[Any]:
        prompt, options = self.sync.translate(request)
        yield StreamStartEvent(id=None, model=request.model)
        events = self.sync.engine.astream([prompt], options=options)
        try:
            with invalid_request():
                async for ev in events:
                    for out in stream_events(ev):
                        yield out
        finally:
            await events.aclose()

    async def aclose(self) -> None:
        """Borrowed engine: nothing to release."""

    def dump_state(self) -> dict[str, Any]:
        return self.sync.dump_state()

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> AsyncSteerDSPyEngine:
        return cls(SteerDSPyEngine.load_state(state))
