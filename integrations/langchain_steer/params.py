"""Fields and translation helpers shared by `SteerLLM` and `ChatSteer`.

Every `SteerConfig` field is a pydantic field of the LangChain model, so the model's fields *are*
its STEER configuration: they show up in `_identifying_params` (LangChain's cache key), they can be
swept with `.configurable_fields(...)`, and any of them can be overridden per call through
`.bind(...)` or invoke keyword arguments. Fields not given at construction take the engine's
defaults (`engine.config`).

A call becomes one `steer_plugins.CallOptions` (`SteerParams._call_options`: the model's fields, the
call's keywords and its `stop`, validated once by `CallOptions.build`) and one engine call; stop
merging, the negatives check and token usage are the engine's helpers.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from langchain_core.runnables import ConfigurableField
from pydantic import ConfigDict, Field, create_model, model_validator

from steer_plugins import (
    CALL_KEYS,
    CallOptions,
    SteerConfig,
    SteerEngine,
    SteerResult,
    StreamEvent,
    merge_stops,
    shared_negatives,
    usage,
)

__all__ = ["CONFIG_FIELDS", "CALL_KWARGS", "SteerParams", "arelay", "generation_info_of", "relay"]

#: The `SteerConfig` fields mirrored as model fields (a test checks this stays in sync).
CONFIG_FIELDS: tuple[str, ...] = tuple(SteerConfig.model_fields)
#: Per-call keyword arguments that are not config fields (the engine's other `CALL_KEYS`, such as
#: per-prompt `seeds`, have no LangChain form and are refused).
CALL_KWARGS: tuple[str, ...] = ("negatives", "add_to_pool")
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
    `engine.config`'s value.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    engine: SteerEngine = Field(default=None, exclude=True)  # type: ignore[assignment]
    """The `steer_plugins.SteerEngine` doing the decoding; built from `expert`/`base` when not given."""
    expert: Any = None
    """Model id/path of the expert (HF folder, `.gguf`, PEFT adapter, `"smollm2-135m-instruct"`); only
    used to build `engine` when none is given."""
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

    @model_validator(mode="before")
    @classmethod
    def _build_engine(cls, data: Any) -> Any:
        """Build the engine from `expert`/`base` if needed, fill unset config fields from
        `engine.config`, and validate the whole configuration once (SteerConfig's messages)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
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
        elif data.get("pool") is not None and data.get("expert") is None:
            raise ValueError(
                "`pool` only seeds an engine built from `expert=`; with `engine=` add real examples with "
                "engine.pool.add([...], real=True)"
            )
        cfg = engine.config.merged(**{name: data[name] for name in CONFIG_FIELDS if name in data})
        data.update(cfg.model_dump())  # every field, normalised (e.g. stop="x" -> ["x"])
        data["negatives"] = shared_negatives(data.get("negatives"))
        return data

    # ---- what the adapters share ----
    @property
    def steer_config(self) -> SteerConfig:
        """The resolved `SteerConfig` of this model (its fields)."""
        return SteerConfig.model_validate(self._config_fields())

    @property
    def _identifying_params(self) -> Mapping[str, Any]:
        """Every setting that changes the output (LangChain's cache key; chat adds the call kwargs):
        the model pair's fingerprint, every config field, the negatives."""
        fields = self._config_fields()
        return {
            "model": self.engine.name,
            "fingerprint": self.engine.fingerprint(**fields),
            **fields,
            "negatives": self.negatives,
        }

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of `text` with the engine's tokenizer (never downloads one)."""
        return list(self.engine.tokenizer(text).input_ids)

    def _config_fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in CONFIG_FIELDS}

    def _call_options(
        self, n: int, stop: Sequence[str] | str | None, kwargs: Mapping[str, Any]
    ) -> CallOptions:
        """The one validated `CallOptions` of a call over `n` prompts: this model's fields, then the
        call's keywords (any `SteerConfig` field, `negatives`, `add_to_pool`), the call's `stop`
        merged after the `stop` field.

        Raises:
            ValueError / TypeError: an unknown keyword (the message lists the valid ones) or a bad value.
        """
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
            **kwargs,
        }
        negatives = shared_negatives(call["negatives"])
        call["negatives"] = None if negatives is None else [negatives] * n
        call["stop"] = merge_stops(call["stop"], stop)
        return CallOptions.build(self.engine.config, n, call)

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
