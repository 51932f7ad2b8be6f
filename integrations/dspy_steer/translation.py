"""DSPy `Request` -> one engine call, and `SteerResult` -> DSPy `Response` / stream events.

The one home of the translation (outlines' `ModelTypeAdapter`):
    system + user/assistant turns  -> `engine.apply_chat_template` (a trailing assistant turn is a
                                      prefill: the model continues it, see `FieldByFieldAdapter`)
    temperature, top_p, top_k, seed -> the same `SteerConfig` fields
    max_tokens                      -> `max_new_tokens`
    stop                            -> added to the configured stop strings (`merge_stops`)
    metadata={"steer": {...}}       -> per-call overrides: any `SteerConfig` field, `negatives`
                                      (a list of strings) and `add_to_pool` (bool); `pool_state`
                                      is only a cache key (`SteerLM` puts it there) and is dropped
    `evaluation_mode()`             -> add_to_pool=False (and its eta), applied last
    response_format, ChatAdapter layout -> `constraint=` (a well-formed, typed reply: `structured.py`)
    tools, images, audio, logprobs, penalties -> `dspy.LMUnsupportedFeatureError`

A request's settings become one `CallOptions`, validated once by `CallOptions.build`; an invalid
setting is a `dspy.lm15.InvalidRequestError`, which DSPy raises as `LMInvalidRequestError`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from dspy import lm15
from dspy.lm15 import (
    Message,
    Request,
    Response,
    StreamDeltaEvent,
    StreamEndEvent,
    TextDelta,
    TextPart,
    Usage,
)

from steer_plugins import CallOptions, SteerConfig, merge_stops, shared_negatives, usage

from .modes import frozen_options
from .structured import request_constraint

if TYPE_CHECKING:
    from steer_plugins import SteerEngine, SteerResult, StreamEvent

__all__ = [
    "CACHE_ONLY_KEYS",
    "PER_CALL_KEYS",
    "STEER_METADATA_KEY",
    "call_options",
    "check_request",
    "invalid_request",
    "render_prompt",
    "response",
    "stream_events",
]

STEER_METADATA_KEY = "steer"
"""Key under the request's `metadata` that carries per-call STEER overrides."""
PER_CALL_KEYS = ("negatives", "add_to_pool")
"""Per-call keys besides the `SteerConfig` fields: the engine's `CALL_KEYS` that fit DSPy (metadata is
part of DSPy's JSON cache key, so no `pool` object; DSPy has its own `seed`; a DSPy call is one prompt)."""
CACHE_ONLY_KEYS = ("pool_state",)
"""Keys of `metadata["steer"]` that only shape DSPy's cache key (see `SteerLM`)."""

# Request settings STEER cannot honour: refused by name rather than dropped silently.
_UNSUPPORTED_CONFIG = {
    "tool_choice": "tool calling (tool_choice)",
    "logprobs": "per-token logprobs",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "probabilities": "probability judgments",
}


@contextmanager
def invalid_request(prefix: str = "") -> Iterator[None]:
    """Raise a `TypeError`/`ValueError` from inside (a bad setting, prompt or negatives) as the
    `dspy.lm15.InvalidRequestError` DSPy expects."""
    try:
        yield
    except (TypeError, ValueError) as err:
        raise lm15.InvalidRequestError(f"{prefix}{err}") from err


def check_request(request: Request, model: str) -> None:
    """Refuse, by name, a request STEER cannot honour (wrong model string, tools, unsupported
    settings, native reasoning)."""
    if not isinstance(request, Request):
        raise TypeError(f"a STEER engine takes a dspy.lm15.Request, got {type(request).__name__}")
    if request.model != model:
        raise lm15.ConfigurationError(
            f"request for model {request.model!r} reached the STEER engine for {model!r}. The model string "
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


def call_options(
    engine: SteerEngine, request: Request, config: Mapping[str, Any], add_to_pool: bool | None
) -> CallOptions:
    """The one validated `CallOptions` of `request`: the LM's `config` fields, then the request's
    settings, then its metadata's per-call options; the request's `stop` after the configured ones."""
    cfg = request.config
    call: dict[str, Any] = {**config, "add_to_pool": add_to_pool}
    call.update(
        {f: getattr(cfg, f) for f in ("temperature", "top_p", "top_k", "seed") if getattr(cfg, f) is not None}
    )
    if cfg.max_tokens is not None:
        call["max_new_tokens"] = cfg.max_tokens
    call.update(_per_call_options(cfg.extensions))
    call.update(frozen_options())  # evaluation_mode(): the pool stays as it is
    budget = call.get("max_new_tokens", engine.config.max_new_tokens)
    with invalid_request("structured output: "):
        constraint = request_constraint(request, budget, engine.count_tokens)
    if constraint is not None:  # response_format or ChatAdapter's layout: a well-formed typed reply
        call["constraint"] = constraint
    call["stop"] = merge_stops(call.get("stop", engine.config.stop), cfg.stop)
    with invalid_request("invalid STEER setting: "):
        negatives = shared_negatives(call.get("negatives"))
        call["negatives"] = None if negatives is None else [negatives]
        return CallOptions.build(engine.config, 1, call)


def render_prompt(engine: SteerEngine, request: Request) -> str:
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
    with invalid_request():
        prompt = engine.apply_chat_template(messages, add_generation_prompt=True)
    return prompt + (prefill or "")


def response(request: Request, result: SteerResult) -> Response:
    """The DSPy `Response` of one finished result."""
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


def stream_events(ev: StreamEvent) -> list[Any]:
    """The DSPy stream events of one engine event: its text delta, and the end event with usage."""
    out: list[Any] = []
    if ev.delta:
        out.append(StreamDeltaEvent(delta=TextDelta(text=ev.delta)))
    if ev.result is not None:
        out.append(StreamEndEvent(finish_reason=_finish(ev.result), usage=_usage(ev.result)))
    return out


# ---------------------------------------------------------------------- helpers
def _per_call_options(extensions: dict[str, Any] | None) -> dict[str, Any]:
    """The `metadata["steer"]` options of a request; any other request extension is refused."""
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
    unknown = sorted(set(options) - set(SteerConfig.model_fields) - set(PER_CALL_KEYS) - set(CACHE_ONLY_KEYS))
    if unknown:
        raise lm15.InvalidRequestError(
            f"unknown per-call STEER option(s) {unknown}; valid: {sorted([*SteerConfig.model_fields, *PER_CALL_KEYS])}"
        )
    return {k: v for k, v in options.items() if k not in CACHE_ONLY_KEYS}


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


def _finish(result: SteerResult) -> str:
    return "length" if result.finish_reason == "length" else "stop"


def _usage(result: SteerResult) -> Usage:
    u = usage(result)
    return Usage(
        input_tokens=u["prompt_tokens"], output_tokens=u["completion_tokens"], total_tokens=u["total_tokens"]
    )
