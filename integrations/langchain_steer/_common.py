"""Fields and translation helpers shared by `SteerLLM` and `ChatSteer`.

Every `SteerConfig` field is a pydantic field of the LangChain model, so the model's fields *are*
its STEER configuration: they show up in `_identifying_params` (LangChain's cache key), they can be
swept with `.configurable_fields(...)`, and any of them can be overridden per call through
`.bind(...)` or invoke keyword arguments. Fields not given at construction take the engine's
defaults (`engine.config`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.runnables import ConfigurableField
from pydantic import ConfigDict, Field, create_model, model_validator

from steer_plugins import SteerConfig, SteerEngine, SteerResult

__all__ = ["CONFIG_FIELDS", "CALL_KWARGS", "SteerParams", "usage_of", "generation_info_of"]

#: The `SteerConfig` fields mirrored as model fields (a test checks this stays in sync).
CONFIG_FIELDS: tuple[str, ...] = tuple(SteerConfig.model_fields)
#: Per-call keyword arguments that are not config fields.
CALL_KWARGS: tuple[str, ...] = ("negatives", "add_to_pool")
_ENGINE_ONLY = ("expert", "base", "pool", "engine_kwargs")
_D = SteerConfig.model_fields

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
        defaults = engine.config.model_dump()
        for name in CONFIG_FIELDS:
            if name not in data:
                data[name] = defaults[name]
        cfg = SteerConfig.model_validate({name: data[name] for name in CONFIG_FIELDS})
        data.update(cfg.model_dump())  # normalised (e.g. stop="x" -> ["x"])
        data["negatives"] = check_negatives(data.get("negatives"))
        return data

    # ---- helpers the adapters share ----
    @property
    def steer_config(self) -> SteerConfig:
        """The resolved `SteerConfig` of this model (its fields)."""
        return SteerConfig.model_validate({name: getattr(self, name) for name in CONFIG_FIELDS})

    @property
    def _identifying_params(self) -> Mapping[str, Any]:
        """Every setting that changes the output (LangChain's cache key; chat adds the call kwargs)."""
        return self._steer_identity()

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of `text` with the engine's tokenizer (never downloads one)."""
        return list(self.engine.tokenizer(text).input_ids)

    def _steer_identity(self) -> dict[str, Any]:
        """Everything that changes the output: model pair fingerprint, every config field, negatives."""
        cfg = self.steer_config
        return {
            "model": self.engine.name,
            "fingerprint": self.engine.fingerprint(**cfg.model_dump()),
            **cfg.model_dump(mode="json"),
            "negatives": self.negatives,
        }

    def _split_call(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Split invoke/bind kwargs into (config overrides, call options); unknown names raise."""
        unknown = sorted(set(kwargs) - set(CONFIG_FIELDS) - set(CALL_KWARGS))
        if unknown:
            raise ValueError(
                f"unknown keyword argument(s) {unknown} for {type(self).__name__}; per-call options are the "
                f"SteerConfig fields {list(CONFIG_FIELDS)} and {list(CALL_KWARGS)} (e.g. "
                f".bind(negatives=['...'], gamma=0.5))"
            )
        overrides = {k: v for k, v in kwargs.items() if k in CONFIG_FIELDS}
        options = {k: v for k, v in kwargs.items() if k in CALL_KWARGS}
        if "negatives" in options:
            options["negatives"] = check_negatives(options["negatives"])
        return overrides, options

    def _engine_args(
        self, n_prompts: int, stop: Sequence[str] | None, kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        """Keyword arguments for engine.generate/stream: the full config (fields + overrides + stop)
        plus negatives (one list per prompt) and add_to_pool."""
        overrides, options = self._split_call(kwargs)
        cfg = self.steer_config.merged(**overrides)
        stops = list(dict.fromkeys([*cfg.stop, *(_check_stop(stop))]))
        args = {**cfg.model_dump(), "stop": stops}
        negatives = options.get("negatives", self.negatives)
        args["negatives"] = None if negatives is None else [list(negatives)] * n_prompts
        args["add_to_pool"] = options.get("add_to_pool", self.add_to_pool)
        return args

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


def check_negatives(negatives: Any) -> list[str] | None:
    """None, or a list of strings (one list shared by every prompt of the call)."""
    if negatives is None:
        return None
    if isinstance(negatives, str) or not isinstance(negatives, Sequence):
        raise TypeError(
            f"`negatives` must be a list of strings (shared by every prompt), got {type(negatives).__name__}: "
            "wrap one example in a list, or pass None to draw from engine.pool"
        )
    bad = [type(n).__name__ for n in negatives if not isinstance(n, str)]
    if bad:
        raise TypeError(f"`negatives` must hold only strings, got {bad}")
    return list(negatives)


def _check_stop(stop: Any) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    return list(stop)


def usage_of(result: SteerResult) -> dict[str, int]:
    """OpenAI-style token usage of one result."""
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def generation_info_of(result: SteerResult) -> dict[str, Any]:
    """What a LangChain generation carries besides the text."""
    return {
        "finish_reason": result.finish_reason,
        "negatives_used": list(result.negatives_used),
        "negatives_dropped": list(result.negatives_dropped),
        **usage_of(result),
        "token_ids": list(result.token_ids),
        "seed": result.seed,
        "warnings": result.warnings,
    }


def sum_usage(results: Sequence[SteerResult]) -> dict[str, int]:
    """Token usage summed over results (an `llm_output["token_usage"]`)."""
    total = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for r in results:
        for k, v in usage_of(r).items():
            total[k] += v
    return total
