"""`SteerLLM`: STEER decoding as a LangChain `BaseLLM` (a drop-in for `HuggingFacePipeline`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models.llms import BaseLLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from pydantic import ConfigDict

from steer_plugins import SteerResult, StreamEvent, usage

from .params import CALL_KWARGS, CONFIG_FIELDS, SteerParams, arelay, generation_info_of, relay

__all__ = ["SteerLLM"]

_PIPELINE_KWARGS = {"max_new_tokens", "temperature", "top_k", "top_p", "do_sample", "return_full_text"}


class SteerLLM(SteerParams, BaseLLM):
    """A LangChain text-completion model decoding with STEER (expert + base + negative contexts).

    `batch` hands all prompts to the engine as one batch (LangChain's `max_concurrency` splits it);
    async calls await the engine without blocking the event loop; `stop` strings are cut by the
    engine in both the generate and stream paths, and the prompt is never echoed.

    Args:
        engine: a `steer_plugins.SteerEngine`, or
        expert / base / pool / engine_kwargs: what to build one from.
        negatives: negative examples for every prompt (None: draw `num_negatives` from engine.pool).
        add_to_pool: append outputs to engine.pool (default: as the paper does, when it was seeded).
        gamma, eta, ...: any `SteerConfig` field (default: `engine.config`'s value).

    Per call, `negatives`, `add_to_pool` and any config field can be overridden:
    `llm.bind(negatives=["..."], gamma=0.5)` or `llm.invoke(prompt, gamma=0.5)`. The per-call
    `stop` adds to the `stop` field. `configurable_steering()` makes gamma/eta sweepable with
    `.with_config(configurable={"gamma": ...})`.

    Example:
        >>> from steer_plugins import SteerEngine
        >>> engine = SteerEngine("smollm2-135m-instruct", pool=["Is dark matter cold?"])
        >>> llm = SteerLLM(engine=engine, gamma=0.2, eta=0.6, num_negatives=1, max_new_tokens=30)
        >>> llm.invoke("Write one question about stars:", stop=["\\n"])
    """

    @classmethod
    def from_model_id(
        cls,
        model_id: str,
        task: str = "text-generation",
        pipeline_kwargs: dict[str, Any] | None = None,
        *,
        base_model_id: str | None = None,
        device: str | None = None,
        **kwargs: Any,
    ) -> SteerLLM:
        """`HuggingFacePipeline.from_model_id` with the same arguments, plus `base_model_id` and
        STEER fields (`gamma=`, `eta=`, `pool=`, ...).

        `pipeline_kwargs` may hold max_new_tokens, temperature, top_k, top_p, do_sample (False
        means greedy) and return_full_text (only False: the prompt is never echoed).
        """
        if task != "text-generation":
            raise ValueError(f"`task` must be 'text-generation' for STEER decoding, got {task!r}")
        pk = dict(pipeline_kwargs or {})
        unknown = sorted(set(pk) - _PIPELINE_KWARGS)
        if unknown:
            raise ValueError(
                f"`pipeline_kwargs` {unknown} are not supported; use {sorted(_PIPELINE_KWARGS)} or SteerConfig "
                "fields as keyword arguments"
            )
        if pk.pop("return_full_text", False):
            raise ValueError("`return_full_text=True` is not supported: SteerLLM returns the completion only")
        if pk.pop("do_sample", True) is False:
            pk["temperature"] = 0.0
        engine_kwargs = dict(kwargs.pop("engine_kwargs", None) or {})
        if device is not None:
            engine_kwargs["device"] = device
        return cls(expert=model_id, base=base_model_id, engine_kwargs=engine_kwargs, **{**pk, **kwargs})

    # ------------------------------------------------------------------ LangChain plumbing
    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    @property
    def _llm_type(self) -> str:
        return "steer"

    def _with_overrides(self, kwargs: dict[str, Any]) -> tuple[SteerLLM, dict[str, Any]]:
        """Fold per-call STEER settings into a copy of this model, so that LangChain's LLM cache key
        (built from `_identifying_params`, not from call kwargs) sees them; the rest are LangChain's
        (or unknown: `_generate` refuses those, naming them)."""
        steer = {k: v for k, v in kwargs.items() if k in CONFIG_FIELDS or k in CALL_KWARGS}
        rest = {k: v for k, v in kwargs.items() if k not in steer}
        return (self.model_copy(update=steer) if steer else self), rest

    def generate(
        self, prompts: list[str], stop: list[str] | None = None, callbacks: Any = None, **kwargs: Any
    ):
        llm, rest = self._with_overrides(kwargs)
        if llm is not self:
            return llm.generate(prompts, stop, callbacks, **rest)
        return super().generate(prompts, stop, callbacks, **rest)

    async def agenerate(
        self, prompts: list[str], stop: list[str] | None = None, callbacks: Any = None, **kwargs: Any
    ):
        llm, rest = self._with_overrides(kwargs)
        if llm is not self:
            return await llm.agenerate(prompts, stop, callbacks, **rest)
        return await super().agenerate(prompts, stop, callbacks, **rest)

    def _convert_input(self, model_input: Any):
        from langchain_core.prompt_values import PromptValue

        if not isinstance(model_input, (str, PromptValue, list, tuple)):
            raise TypeError(
                f"SteerLLM input must be a str, a PromptValue or a list of messages, got "
                f"{type(model_input).__name__}: format it into a prompt first (e.g. PromptTemplate | llm)"
            )
        return super()._convert_input(model_input)

    # ------------------------------------------------------------------ generate / stream
    def _result(self, results: list[SteerResult]) -> LLMResult:
        return LLMResult(
            generations=[[Generation(text=r.text, generation_info=generation_info_of(r))] for r in results],
            llm_output={
                "token_usage": usage(results),
                "model_name": self.engine.name,
                "fingerprint": self.engine.fingerprint(**self._config_fields()),
            },
        )

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        options = self._call_options(len(prompts), stop, kwargs)
        return self._result(self.engine.generate(prompts, options=options))

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        options = self._call_options(len(prompts), stop, kwargs)
        return self._result(await self.engine.agenerate(prompts, options=options))

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        options = self._call_options(1, stop, kwargs)
        yield from relay(self.engine.stream([prompt], options=options), _chunk, run_manager)

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        options = self._call_options(1, stop, kwargs)
        async for chunk in arelay(self.engine.astream([prompt], options=options), _chunk, run_manager):
            yield chunk


def _chunk(ev: StreamEvent) -> GenerationChunk | None:
    """A text delta as a chunk; the final event also carries usage, finish reason and negatives."""
    if ev.result is not None:
        return GenerationChunk(text=ev.delta, generation_info=generation_info_of(ev.result))
    if not ev.delta:
        return None
    return GenerationChunk(text=ev.delta)
