"""DSPy custom engines over a `SteerEngine`: `complete(Request) -> Response` and `stream(Request)`.

This is DSPy 3.4's supported custom-LM route (`dspy.LM(model, engine=..., async_engine=...)`);
DSPy owns the cache, retries, `n` fan-out, history and usage tracking, and calls `complete` once
per candidate from whatever thread runs the program. Every call goes straight to
`SteerEngine.generate`, which coalesces concurrent calls into one decode batch.

Translation (one home for it, outlines-style):
    system + user/assistant turns  -> `engine.apply_chat_template` (a trailing assistant turn is a
                                      prefill: the model continues it, see `FieldByFieldAdapter`)
    temperature, top_p, top_k, seed -> the same `SteerConfig` fields
    max_tokens                      -> `max_new_tokens`
    stop                            -> added to the configured stop strings
    metadata={"steer": {...}}       -> per-call overrides: any `SteerConfig` field, `negatives`
                                      (a list of strings) and `add_to_pool` (bool)
    tools, images, audio, logprobs, response_format, penalties -> `dspy.LMUnsupportedFeatureError`
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import weakref
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from dspy import lm15
from dspy.lm15 import (
    Message,
    Request,
    Response,
    StreamDeltaEvent,
    StreamEndEvent,
    StreamStartEvent,
    TextDelta,
    TextPart,
    Usage,
)

from steer_plugins import NegativePool, SteerConfig, SteerEngine, SteerResult

__all__ = [
    "SteerDSPyEngine",
    "AsyncSteerDSPyEngine",
    "STEER_METADATA_KEY",
    "PER_CALL_KEYS",
    "register_engine",
]

PROVIDER = "steer"
STEER_METADATA_KEY = "steer"
"""Key under the request's `metadata` that carries per-call STEER overrides."""
PER_CALL_KEYS = ("negatives", "add_to_pool")
"""Per-call keys besides the `SteerConfig` fields."""

# Request settings STEER cannot honour: refused by name rather than dropped silently.
_UNSUPPORTED_CONFIG = {
    "response_format": "structured output (response_format); use a DSPy adapter (FieldByFieldAdapter) instead",
    "tool_choice": "tool calling (tool_choice)",
    "logprobs": "per-token logprobs",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "probabilities": "probability judgments",
}

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
        prompt, negatives, add_to_pool, overrides = self.translate(request)
        result = _call(self.engine.generate, [prompt], negatives, add_to_pool=add_to_pool, **overrides)[0]
        return _response(request, result)

    def stream(self, request: Request) -> Iterator[Any]:
        """Yield a start event, one text delta per decoded piece, and an end event with usage."""
        prompt, negatives, add_to_pool, overrides = self.translate(request)
        yield StreamStartEvent(id=None, model=request.model)
        events = _call(self.engine.stream, [prompt], negatives, add_to_pool=add_to_pool, **overrides)
        try:
            for ev in _checked(events):
                if ev.delta:
                    yield StreamDeltaEvent(delta=TextDelta(text=ev.delta))
                if ev.result is not None:
                    yield StreamEndEvent(finish_reason=_finish(ev.result), usage=_usage(ev.result))
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
        """Rebuild from `dump_state`: reuse a registered engine of that name, else load `source`."""
        engine = _REGISTRY.get(state.get("engine_name") or "")
        if engine is None:
            source = state.get("source")
            if not source:
                raise ValueError(
                    f"cannot load STEER engine {state.get('engine_name')!r}: its models were passed in memory. "
                    "Build the SteerEngine first and call dspy_steer.register_engine(engine, "
                    f"{state.get('engine_name')!r}) before loading the program"
                )
            engine = SteerEngine(
                source["expert"],
                source.get("base"),
                config=SteerConfig(),
                pool=NegativePool(state.get("pool") or ()),
                **{k: v for k, v in source.items() if k not in ("expert", "base")},
            )
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

    # ------------------------------------------------------------------ Request -> engine call
    def translate(self, request: Request) -> tuple[str, list[list[str]] | None, bool | None, dict[str, Any]]:
        """(prompt, negatives, add_to_pool, SteerConfig overrides) for one `Request`.

        Raises `dspy.lm15` errors, which DSPy turns into its own (`LMUnsupportedFeatureError`,
        `LMInvalidRequestError`).
        """
        if not isinstance(request, Request):
            raise TypeError(f"a STEER engine takes a dspy.lm15.Request, got {type(request).__name__}")
        if request.model != self.model:
            raise lm15.ConfigurationError(
                f"request for model {request.model!r} reached the STEER engine for {self.model!r}. The model string "
                "carries the hash of the STEER settings (DSPy's cache key ignores the engine): build the LM with "
                "dspy_steer.steer_lm(...) or dspy.LM(engine.model, engine=engine, async_engine=...)"
            )
        if request.tools:
            names = [getattr(t, "name", "?") for t in request.tools]
            raise lm15.UnsupportedFeatureError(
                f"STEER decoding does not support tool calling (got tools {names}); use a DSPy adapter without "
                "native function calling (the default ChatAdapter or dspy_steer.FieldByFieldAdapter)",
                feature="tools",
            )
        cfg = request.config
        for name, what in _UNSUPPORTED_CONFIG.items():
            if getattr(cfg, name, None) is not None:
                raise lm15.UnsupportedFeatureError(f"STEER decoding does not support {what}", feature=name)
        if cfg.reasoning is not None and cfg.reasoning.effort != "off":
            raise lm15.UnsupportedFeatureError(
                "STEER decoding has no native reasoning mode; use dspy.ChainOfThought for a reasoning field",
                feature="reasoning",
            )
        overrides = dict(self.config)
        for field in ("temperature", "top_p", "top_k", "seed"):
            value = getattr(cfg, field)
            if value is not None:
                overrides[field] = value
        if cfg.max_tokens is not None:
            overrides["max_new_tokens"] = cfg.max_tokens
        if cfg.stop:
            overrides["stop"] = list(dict.fromkeys([*self.resolved.stop, *cfg.stop]))
        negatives, add_to_pool = None, self.add_to_pool
        per_call = _per_call_options(cfg.extensions)
        if "negatives" in per_call:
            negs = per_call.pop("negatives")
            if (
                isinstance(negs, str)
                or not isinstance(negs, list)
                or not all(isinstance(n, str) for n in negs)
            ):
                raise lm15.InvalidRequestError(
                    f"`negatives` must be a list of strings (this call's negative examples), got {negs!r}"
                )
            negatives = [negs]
        if "add_to_pool" in per_call:
            add_to_pool = per_call.pop("add_to_pool")
            if not isinstance(add_to_pool, bool):
                raise lm15.InvalidRequestError(f"`add_to_pool` must be true or false, got {add_to_pool!r}")
        if "stop" in per_call and cfg.stop:
            per_call["stop"] = list(dict.fromkeys([*_as_list(per_call["stop"]), *cfg.stop]))
        overrides.update(per_call)
        try:
            self.engine.config.merged(**overrides)
        except ValueError as err:  # unknown field or out-of-range value
            raise lm15.InvalidRequestError(f"invalid STEER setting: {err}") from err
        return self.render(request), negatives, add_to_pool, overrides

    def render(self, request: Request) -> str:
        """The prompt text: the chat template over system + turns. A trailing assistant turn is
        continued (prefilled), not closed."""
        messages: list[dict[str, str]] = []
        if request.system is not None:
            system = request.system if isinstance(request.system, str) else _text(request.system, "system")
            messages.append({"role": "system", "content": system})
        for i, m in enumerate(request.messages):
            role = {"developer": "system"}.get(m.role, m.role)
            if role not in ("system", "user", "assistant"):
                raise lm15.UnsupportedFeatureError(
                    f"message #{i} has role {m.role!r}; STEER renders system/user/assistant turns only "
                    "(tool results need tool calling, which STEER does not support)",
                    feature=f"role:{m.role}",
                )
            messages.append({"role": role, "content": _text(m.parts, f"message #{i}")})
        prefill = None
        if len(messages) > 1 and messages[-1]["role"] == "assistant":
            prefill = messages.pop()["content"]
        try:
            prompt = self.engine.apply_chat_template(messages, add_generation_prompt=True)
        except ValueError as err:
            raise lm15.InvalidRequestError(str(err)) from err
        return prompt + (prefill or "")


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
        prompt, negatives, add_to_pool, overrides = self.sync.translate(request)
        try:
            results = await self.sync.engine.agenerate(
                [prompt], negatives, add_to_pool=add_to_pool, **overrides
            )
        except (TypeError, ValueError) as err:
            raise lm15.InvalidRequestError(str(err)) from err
        return _response(request, results[0])

    async def stream(self, request: Request) -> AsyncIterator[Any]:
        prompt, negatives, add_to_pool, overrides = self.sync.translate(request)
        yield StreamStartEvent(id=None, model=request.model)
        events = _call(self.sync.engine.astream, [prompt], negatives, add_to_pool=add_to_pool, **overrides)
        try:
            async for ev in events:
                if ev.delta:
                    yield StreamDeltaEvent(delta=TextDelta(text=ev.delta))
                if ev.result is not None:
                    yield StreamEndEvent(finish_reason=_finish(ev.result), usage=_usage(ev.result))
        finally:
            await events.aclose()

    async def aclose(self) -> None:
        """Borrowed engine: nothing to release."""

    def dump_state(self) -> dict[str, Any]:
        return self.sync.dump_state()

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> AsyncSteerDSPyEngine:
        return cls(SteerDSPyEngine.load_state(state))


# ---------------------------------------------------------------------- helpers
def _per_call_options(extensions: dict[str, Any] | None) -> dict[str, Any]:
    extensions = dict(extensions or {})
    metadata = extensions.pop("metadata", None) or {}
    if extensions:
        raise lm15.UnsupportedFeatureError(
            f"STEER decoding does not support the request option(s) {sorted(extensions)}",
            feature=sorted(extensions)[0],
        )
    if not isinstance(metadata, dict):
        return {}
    options = metadata.get(STEER_METADATA_KEY)
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise lm15.InvalidRequestError(
            f"metadata[{STEER_METADATA_KEY!r}] must be a dict of STEER settings, got {type(options).__name__}"
        )
    unknown = sorted(set(options) - set(SteerConfig.model_fields) - set(PER_CALL_KEYS))
    if unknown:
        raise lm15.InvalidRequestError(
            f"unknown per-call STEER option(s) {unknown}; valid: {sorted([*SteerConfig.model_fields, *PER_CALL_KEYS])}"
        )
    return dict(options)


def _as_list(stop: Any) -> list[str]:
    return [stop] if isinstance(stop, str) else list(stop or [])


def _text(parts: Sequence[Any], where: str) -> str:
    texts = []
    for p in parts:
        if isinstance(p, TextPart):
            texts.append(p.text)
        elif getattr(p, "type", None) == "thinking":
            continue  # earlier reasoning of an assistant turn is not replayed
        else:
            kind = getattr(p, "type", type(p).__name__)
            raise lm15.UnsupportedFeatureError(
                f"{where} contains a {kind!r} part; STEER decoding takes text only (images, audio and files "
                "are not supported): pass text, e.g. a caption instead of an image",
                feature=f"{kind}s" if kind in ("image", "document") else kind,
            )
    return "".join(texts)


def _call(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except (TypeError, ValueError) as err:  # bad prompt/negatives/settings, raised before decoding
        raise lm15.InvalidRequestError(str(err)) from err


def _checked(events: Iterator[Any]) -> Iterator[Any]:
    try:
        yield from events
    except (TypeError, ValueError) as err:  # raised by the worker while preparing this request
        raise lm15.InvalidRequestError(str(err)) from err


def _finish(result: SteerResult) -> str:
    return "length" if result.finish_reason == "length" else "stop"


def _usage(result: SteerResult) -> Usage:
    return Usage(
        input_tokens=result.prompt_tokens,
        output_tokens=result.completion_tokens,
        total_tokens=result.prompt_tokens + result.completion_tokens,
    )


def _response(request: Request, result: SteerResult) -> Response:
    return Response(
        id=None,
        model=request.model,
        message=Message.assistant([TextPart(result.text)]),
        finish_reason=_finish(result),
        usage=_usage(result),
        provider_data={
            "steer": {
                "seed": result.seed,
                "negatives_used": len(result.negatives_used),
                "warnings": result.warnings,
            }
        },
    )
