"""Fields and translation helpers shared by `SteerLLM` and `ChatSteer`.

Every `SteerConfig` field is a pydantic field of the LangChain model, so the model's fields *are*
its STEER configuration: they show up in `_identifying_params` (LangChain's cache key), they can be
swept with `.configurable_fields(...)`, and any of them can be overridden per call through
`.bind(...)` or invoke keyword arguments. Fields not given at construction take the engine's
defaults (`engine.config`). LangChain's standard names are accepted too: `max_tokens` (an alias of
`max_new_tokens`, also per call), `timeout`, `max_retries`, and `HuggingFacePipeline`'s construction
arguments (`hf_args.py`).

A call becomes one `steer_plugins.CallOptions` (`SteerParams._call_options`: the model's fields, the
call's keywords and its `stop`, validated once by `CallOptions.build`) and one engine call; stop
merging, the negatives check and token usage are the engine's helpers.

Caching (LangChain's LLM cache, `set_llm_cache` or `cache=`): a call without a fixed `seed` is a
fresh sample and bypasses the cache (no lookup, no store), so repeated identical calls give new
texts. A seeded call is cached under a key holding every setting, the seed and, when its negatives
are drawn from the pool, the pool's state (`pool_state`): it hits while the pool is unchanged (fixed
`negatives`, `add_to_pool=False` or `eta=0`) and misses once the pool has grown.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from langchain_core.caches import BaseCache
from langchain_core.globals import get_llm_cache
from langchain_core.runnables import ConfigurableField
from pydantic import ConfigDict, Field, create_model, model_validator

from steer_plugins import (
    CALL_KEYS,
    CallOptions,
    NegativePool,
    SteerConfig,
    SteerEngine,
    SteerResult,
    StreamEvent,
    merge_stops,
    shared_negatives,
    usage,
)

from .hf_args import translate_hf_args
from .persist import EngineRef, engine_ref, resolve_engine, source_of
from .structured import constraint_key

__all__ = [
    "CONFIG_FIELDS",
    "CALL_KWARGS",
    "SteerParams",
    "arelay",
    "generation_info_of",
    "pool_state",
    "relay",
]

#: The `SteerConfig` fields mirrored as model fields (a test checks this stays in sync).
CONFIG_FIELDS: tuple[str, ...] = tuple(SteerConfig.model_fields)
#: Per-call keyword arguments that are not config fields (the engine's other `CALL_KEYS`, such as
#: per-prompt `seeds`, have no LangChain form and are refused).
CALL_KWARGS: tuple[str, ...] = ("negatives", "add_to_pool", "constraint")
#: LangChain's standard parameter names for SteerConfig fields.
ALIASES: dict[str, str] = {"max_tokens": "max_new_tokens", "schema": "constraint"}
_D = SteerConfig.model_fields
C = TypeVar("C")

# Every SteerConfig field, with its type, default and description, generated so the two never drift.
_ConfigFields = create_model(
    "_ConfigFields",
    __config__=ConfigDict(arbitrary_types_allowed=True, extra="forbid"),
    **{name: (info.annotation, info) for name, info in SteerConfig.model_fields.items()},
)


class SteerParams(_ConfigFields):
    """The STEER engine and settings of a LangChain model (mixed into `SteerLLM` and `ChatSteer`).

    Besides the fields below, every `SteerConfig` field (gamma, eta, num_negatives, form, alpha,
    temperature, top_k, top_p, min_p, max_new_tokens, stop, seed, ...) is a field, defaulting to
    `engine.config`'s value. `max_tokens` is LangChain's name for `max_new_tokens` (constructor,
    `.bind(max_tokens=...)`, and the `max_tokens` property).

    Pickling and deep copies (`persist.py`): `copy.deepcopy` shares the engine; `pickle` stores the
    settings and a reference to the engine (the same engine in this process; in another, one
    registered with `register_engine`, or one loaded again from `expert=`/`model_id=` sources).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    engine: SteerEngine = Field(default=None, exclude=True)  # type: ignore[assignment]
    """The `steer_plugins.SteerEngine` doing the decoding; built from `expert`/`base` when not given."""
    expert: Any = None
    """Model id/path of the expert (HF folder, `.gguf`, PEFT adapter, `"smollm2-135m-instruct"`); only
    used to build `engine` when none is given. `model_id=` and `pipeline=` (HuggingFacePipeline's
    names) set it too."""
    base: Any = None
    """Model id/path of the base the expert was tuned from (None: a PEFT expert's base, else the expert)."""
    pool: list[str] | None = Field(default=None, exclude=True)
    """Real examples seeding the negative pool of an engine built from `expert` (else use engine.pool)."""
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, exclude=True)
    """Extra `SteerEngine(...)` arguments (device, dtype, max_batch_size, ...) when building `engine`."""
    negatives: list[str] | None = None
    """Negative examples for every prompt; None draws `num_negatives` from `engine.pool` per prompt."""
    add_to_pool: bool | None = None
    """Append outputs to `engine.pool` (None: when negatives come from a seeded pool, as the paper does)."""
    constraint: Any = None
    """Structured output: every output follows this `constraint=` spec (JSON schema, pydantic model,
    TypedDict, `Regex`, choices, lark; see docs/structured.md). Per call too, as `constraint=` or
    `schema=` (`.bind(schema=Model)`); `structured.py` has the parsers."""
    timeout: float | None = Field(default=None, gt=0)
    """Seconds a call may run (LangChain's standard parameter). Locally there is no request to time
    out, so it bounds decoding: a call still running after `timeout` s is cancelled in the engine
    (other calls sharing its batch go on) and raises `TimeoutError`. Checked as tokens arrive; None
    waits for the end."""
    max_retries: int = Field(default=0, ge=0)
    """Accepted as LangChain's standard parameter and kept, but nothing is retried: local decoding has
    no transient (network, rate-limit) failures, and a bad input fails the same way every time. Use
    `.with_retry()` to retry on errors of your own (e.g. a parser's)."""

    @model_validator(mode="before")
    @classmethod
    def _build_engine(cls, data: Any) -> Any:
        """Map LangChain's and HuggingFacePipeline's argument names, refuse unknown ones, then build
        the engine from `expert`/`base` if needed (only now: a typo never costs a model load), fill
        unset config fields from `engine.config`, and validate the whole configuration once."""
        if not isinstance(data, dict):
            return data
        data = translate_hf_args(data)
        known = set(cls.model_fields) | {f.alias for f in cls.model_fields.values() if f.alias}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"{cls.__name__} got unknown argument(s) {unknown} (extra inputs are not permitted); it takes "
                f"the SteerConfig fields, {sorted(known - set(CONFIG_FIELDS))} and HuggingFacePipeline's "
                "model_id/pipeline/device/device_map/batch_size/model_kwargs/pipeline_kwargs/task"
            )
        engine = data.get("engine")
        if engine is None:
            if data.get("expert") is None:
                raise ValueError(
                    f"{cls.__name__} needs `engine=` (a steer_plugins.SteerEngine) or `expert=` (a model id or "
                    'path, e.g. "smollm2-135m-instruct"), got neither'
                )
            engine = SteerEngine(
                data["expert"], data.get("base"), pool=data.get("pool"), **(data.get("engine_kwargs") or {})
            )
            data["engine"] = engine
        elif not isinstance(engine, SteerEngine):
            raise TypeError(f"`engine` must be a steer_plugins.SteerEngine, got {type(engine).__name__}")
        elif data.get("expert") is not None or data.get("base") is not None or data.get("engine_kwargs"):
            given = [k for k in ("expert", "base") if data.get(k) is not None] + sorted(
                data.get("engine_kwargs") or {}
            )
            raise ValueError(
                f"{given} only build an engine; with a ready `engine=` they would be ignored: pass either "
                "model sources (expert/model_id/pipeline, device, batch_size, ...) or `engine=`"
            )
        elif data.get("pool") is not None:
            raise ValueError(
                "`pool` only seeds an engine built from `expert=`; with `engine=` add real examples with "
                "engine.pool.add([...], real=True)"
            )
        cfg = engine.config.merged(**{name: data[name] for name in CONFIG_FIELDS if name in data})
        data.update(cfg.model_dump())  # every field, normalised (e.g. stop="x" -> ["x"])
        data["negatives"] = shared_negatives(data.get("negatives"))
        return data

    @classmethod
    def from_model_id(
        cls,
        model_id: str,
        task: str = "text-generation",
        backend: str = "default",
        device: int | str | None = None,
        device_map: str | dict[str, Any] | None = None,
        model_kwargs: dict[str, Any] | None = None,
        pipeline_kwargs: dict[str, Any] | None = None,
        batch_size: int | None = None,
        *,
        base_model_id: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """`HuggingFacePipeline.from_model_id` with the same arguments, plus `base_model_id` and STEER
        fields (`gamma=`, `eta=`, `pool=`, ...). Each argument is mapped onto the engine or refused,
        naming it, before any weights load (see `hf_args.py` for the table): `device=-1` is the CPU,
        `device_map` must name one device, `batch_size` is the engine's `max_batch_size`,
        `model_kwargs` may hold `torch_dtype`/`dtype`, `trust_remote_code` and `device_map`,
        `pipeline_kwargs` max_new_tokens, temperature, top_k, top_p, do_sample (False: greedy) and
        return_full_text (only False: the prompt is never echoed).
        """
        hf = {
            "model_id": model_id,
            "task": task,
            "backend": backend,
            "device": device,
            "device_map": device_map,
            "model_kwargs": model_kwargs,
            "pipeline_kwargs": pipeline_kwargs,
            "batch_size": batch_size,
        }
        return cls(base=base_model_id, **{k: v for k, v in hf.items() if v is not None}, **kwargs)

    @property
    def max_tokens(self) -> int:
        """LangChain's standard name for `max_new_tokens`."""
        return self.max_new_tokens

    @property
    def model_name(self) -> str:
        """The engine's model-pair name (what LangSmith traces show as `ls_model_name`)."""
        return self.engine.name

    # ---- what the adapters share ----
    @property
    def steer_config(self) -> SteerConfig:
        """The resolved `SteerConfig` of this model (its fields)."""
        return SteerConfig.model_validate(self._config_fields())

    @property
    def _identifying_params(self) -> Mapping[str, Any]:
        """Every setting that changes the output (LangChain's cache key; chat adds the call kwargs):
        the model pair's fingerprint, every config field, the negatives and, when negatives are drawn
        from the pool, the pool's state (a grown pool gives other outputs)."""
        fields = self._config_fields()
        params = {
            "model": self.engine.name,
            "fingerprint": self.engine.fingerprint(**fields),
            **fields,
            "negatives": self.negatives,
        }
        if self.constraint is not None:
            params["constraint"] = constraint_key(self.constraint)
        if self.negatives is None and self.eta > 0:
            params["pool_state"] = pool_state(self.engine.pool)
        return params

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        """LangSmith's standard trace fields: provider `steer`, the model pair's name (a per-call
        `model=` wins, as LangChain asks), temperature, max tokens and the stop strings in force."""
        params = super()._get_ls_params(stop=stop, **kwargs)  # type: ignore[misc]
        params["ls_provider"] = "steer"
        model = kwargs.get("model")
        params["ls_model_name"] = model if isinstance(model, str) else self.engine.name
        params["ls_temperature"] = float(kwargs.get("temperature", self.temperature))
        max_tokens = kwargs.get("max_tokens", kwargs.get("max_new_tokens", self.max_new_tokens))
        params["ls_max_tokens"] = int(max_tokens)
        stops = merge_stops(self.stop, stop)
        if stops:
            params["ls_stop"] = list(stops)
        else:
            params.pop("ls_stop", None)
        return params

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of `text` with the engine's tokenizer (never downloads one)."""
        return list(self.engine.tokenizer(text).input_ids)

    def _config_fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in CONFIG_FIELDS}

    def _call_options(
        self, n: int, stop: Sequence[str] | str | None, kwargs: Mapping[str, Any]
    ) -> CallOptions:
        """The one validated `CallOptions` of a call over `n` prompts: this model's fields, then the
        call's keywords (any `SteerConfig` field or its LangChain alias, `negatives`, `add_to_pool`),
        the call's `stop` merged after the `stop` field.

        Raises:
            ValueError / TypeError: an unknown keyword (the message lists the valid ones) or a bad value.
        """
        kwargs = resolve_aliases(kwargs)
        refused = sorted(set(kwargs) & (set(CALL_KEYS) - set(CALL_KWARGS)))
        if refused:
            raise ValueError(
                f"{refused} cannot be set per call on {type(self).__name__}: per-call options are the "
                f"SteerConfig fields and {list(CALL_KWARGS)} (e.g. .bind(negatives=['...'], gamma=0.5))"
            )
        call = {
            **self._config_fields(),
            "negatives": self.negatives,
            "add_to_pool": self.add_to_pool,
            "constraint": self.constraint,
            **kwargs,
        }
        negatives = shared_negatives(call["negatives"])
        call["negatives"] = None if negatives is None else [negatives] * n
        call["stop"] = merge_stops(call["stop"], stop)
        return CallOptions.build(self.engine.config, n, call)

    # ---- decoding within `timeout` ----
    def _run(self, prompts: list[str], options: CallOptions) -> list[SteerResult]:
        """`engine.generate`, or with a `timeout` the engine's stream with a deadline."""
        if self.timeout is None:
            return self.engine.generate(prompts, options=options)
        results: dict[int, SteerResult] = {}
        for ev in self._stream_events(prompts, options):
            if ev.result is not None:
                results[ev.index] = ev.result
        return [results[i] for i in range(len(prompts))]

    async def _arun(self, prompts: list[str], options: CallOptions) -> list[SteerResult]:
        call = self.engine.agenerate(prompts, options=options)
        if self.timeout is None:
            return await call
        try:
            return await asyncio.wait_for(call, self.timeout)  # cancelling cancels the prompts
        except asyncio.TimeoutError as err:
            raise self._timed_out() from err

    def _stream_events(self, prompts: list[str], options: CallOptions) -> Iterator[StreamEvent]:
        events = self.engine.stream(prompts, options=options)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        try:
            for ev in events:
                if deadline is not None and time.monotonic() > deadline:
                    raise self._timed_out()
                yield ev
        finally:
            events.close()  # closing early cancels this call's prompts only

    async def _astream_events(self, prompts: list[str], options: CallOptions) -> AsyncIterator[StreamEvent]:
        events = self.engine.astream(prompts, options=options)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        try:
            async for ev in events:
                if deadline is not None and time.monotonic() > deadline:
                    raise self._timed_out()
                yield ev
        finally:
            await events.aclose()

    def _timed_out(self) -> TimeoutError:
        return TimeoutError(
            f"{type(self).__name__} call ran past timeout={self.timeout} s; its prompts were cancelled"
        )

    # ---- LangChain's cache ----
    def _cache_in_use(self) -> bool:
        """Whether LangChain would consult an LLM cache for this model."""
        if self.cache is False:
            return False
        return isinstance(self.cache, BaseCache) or get_llm_cache() is not None

    def _uncached(self) -> Any:
        """This model with LangChain's cache off, for a call that is a fresh sample (no seed)."""
        return self.model_copy(update={"cache": False})

    # ---- pickle / deepcopy (see persist.py) ----
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        values = dict(state["__dict__"])
        source = source_of(self.expert, self.base, self.engine_kwargs)
        values["engine"] = engine_ref(self.engine, source)
        if source is None:  # in-memory models travel by reference only, never by value
            values["expert"] = values["base"] = None
            values["engine_kwargs"] = {}
        return {**state, "__dict__": values}

    def __setstate__(self, state: dict[str, Any]) -> None:
        values = dict(state["__dict__"])
        if isinstance(values.get("engine"), EngineRef):
            values["engine"] = resolve_engine(values["engine"])
        super().__setstate__({**state, "__dict__": values})

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Any:
        memo = {} if memo is None else memo
        for shared in (self.engine, self.expert, self.base, *self.engine_kwargs.values()):
            memo.setdefault(id(shared), shared)  # weights, tokenizer and worker are shared, never copied
        return super().__deepcopy__(memo)

    def configurable_steering(self, *fields: str):
        """This model with `fields` (default: gamma, eta) as configurable fields of the same id.

        Example:
            >>> swept = llm.configurable_steering()
            >>> swept.with_config(configurable={"gamma": 0.5, "eta": 0.3}).invoke("Write a question:")
        """
        names = fields or ("gamma", "eta")
        bad = sorted(set(names) - set(CONFIG_FIELDS))
        if bad:
            raise ValueError(f"`fields` {bad} are not SteerConfig fields; choose from {list(CONFIG_FIELDS)}")
        return self.configurable_fields(  # type: ignore[attr-defined]
            **{n: ConfigurableField(id=n, name=n, description=_D[n].description) for n in names}
        )


def resolve_aliases(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """`kwargs` with LangChain's names (`max_tokens`) as SteerConfig's (`max_new_tokens`)."""
    out = dict(kwargs)
    for alias, name in ALIASES.items():
        if alias in out:
            value = out.pop(alias)
            if name in out and out[name] != value:
                raise ValueError(f"`{alias}` is an alias of `{name}`; got both ({value!r} and {out[name]!r})")
            out[name] = value
    return out


def pool_state(pool: NegativePool) -> str:
    """A short digest of the pool's contents (size and hash), for cache keys."""
    texts = pool.texts
    digest = hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    return f"{len(texts)}:{digest.hexdigest()[:16]}"


def generation_info_of(result: SteerResult) -> dict[str, Any]:
    """What a LangChain generation carries besides the text."""
    return {
        "finish_reason": result.finish_reason,
        "negatives_used": list(result.negatives_used),
        "negatives_dropped": list(result.negatives_dropped),
        **usage(result),
        "token_ids": list(result.token_ids),
        "seed": result.seed,
        "warnings": result.warnings,
    }


def relay(
    events: Iterable[StreamEvent], to_chunk: Callable[[StreamEvent], C | None], run_manager: Any
) -> Iterator[C]:
    """Engine stream events as LangChain chunks (empty deltas dropped), each reported to `run_manager`."""
    for ev in events:
        chunk = to_chunk(ev)
        if chunk is None:
            continue
        if run_manager is not None:
            run_manager.on_llm_new_token(chunk.text, chunk=chunk)  # type: ignore[attr-defined]
        yield chunk


async def arelay(
    events: AsyncIterable[StreamEvent], to_chunk: Callable[[StreamEvent], C | None], run_manager: Any
) -> AsyncIterator[C]:
    """`relay` for asyncio (the async run manager's callbacks are awaited)."""
    async for ev in events:
        chunk = to_chunk(ev)
        if chunk is None:
            continue
        if run_manager is not None:
            await run_manager.on_llm_new_token(chunk.text, chunk=chunk)  # type: ignore[attr-defined]
        yield chunk
