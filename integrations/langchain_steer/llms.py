"""`SteerLLM`: STEER decoding as a LangChain `BaseLLM` (a drop-in for `HuggingFacePipeline`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models.llms import BaseLLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from pydantic import ConfigDict

from steer_plugins import SteerResult, StreamEvent, usage

from .params import (
    CALL_KWARGS,
    CONFIG_FIELDS,
    SteerParams,
    arelay,
    generation_info_of,
    relay,
    resolve_aliases,
)
from .runs import merge_results, per_prompt_runs, run_each

__all__ = ["SteerLLM"]


class SteerLLM(SteerParams, BaseLLM):
    """A LangChain text-completion model decoding with STEER (expert + base + negative contexts).

    `batch` hands all prompts to the engine as one batch (LangChain's `max_concurrency` splits it);
    async calls await the engine without blocking the event loop; `stop` strings are cut by the
    engine in both the generate and stream paths, and the prompt is never echoed.

    Args:
        engine: a `steer_plugins.SteerEngine`, or
        expert / base / pool / engine_kwargs: what to build one from (or HuggingFacePipeline's
            `model_id`, `pipeline`, `device`, `device_map`, `batch_size`, `model_kwargs`,
            `pipeline_kwargs`, mapped onto the engine or refused by name before loading).
        negatives: negative examples for every prompt (None: draw `num_negatives` from engine.pool).
        add_to_pool: append outputs to engine.pool (default: as the paper does, when it was seeded).
        gamma, eta, ...: any `SteerConfig` field (default: `engine.config`'s value).

    Per call, `negatives`, `add_to_pool` and any config field can be overridden:
    `llm.bind(negatives=["..."], gamma=0.5)` or `llm.invoke(prompt, gamma=0.5)`. The per-call
    `stop` adds to the `stop` field. `configurable_steering()` makes gamma/eta sweepable with
    `.with_config(configurable={"gamma": ...})`. LangChain's `max_tokens`, `timeout` and
    `max_retries` are accepted (see `SteerParams`). With LangChain's LLM cache, unseeded calls are
    fresh samples (never cached) and seeded ones are cached with the pool's state in the key.

    Example:
        >>> from steer_plugins import SteerEngine
        >>> engine = SteerEngine("smollm2-135m-instruct", pool=["Is dark matter cold?"])
        >>> llm = SteerLLM(engine=engine, gamma=0.2, eta=0.6, num_negatives=1, max_new_tokens=30)
        >>> llm.invoke("Write one question about stars:", stop=["\\n"])
    """

    # ------------------------------------------------------------------ LangChain plumbing
    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    @property
    def _llm_type(self) -> str:
        return "steer"

    def _with_overrides(self, kwargs: dict[str, Any]) -> tuple[SteerLLM, dict[str, Any]]:
        """Fold per-call STEER settings into a copy of this model, so that LangChain's LLM cache key
        (built from `_identifying_params`, not from call kwargs) sees them; the rest are LangChain's
        (or unknown: `_generate` refuses those, naming them)."""
        kwargs = resolve_aliases(kwargs)
        steer = {k: v for k, v in kwargs.items() if k in CONFIG_FIELDS or k in CALL_KWARGS}
        rest = {k: v for k, v in kwargs.items() if k not in steer}
        return (self.model_copy(update=steer) if steer else self), rest

    def _route(self, n: int) -> str:
        """How a call over `n` prompts meets LangChain's cache: "plain" (no cache in use, or one
        seeded prompt), "fresh" (no seed: a new sample, the cache is bypassed) or "each" (seeded
        prompts: prompt *i* runs as its own cached call with seed + i, as in the batch)."""
        if not self._cache_in_use():
            return "plain"
        if self.seed is None:
            return "fresh"
        return "each" if n > 1 else "plain"

    def generate(
        self, prompts: list[str], stop: list[str] | None = None, callbacks: Any = None, **kwargs: Any
    ):
        llm, rest = self._with_overrides(kwargs)
        if llm is not self:
            return llm.generate(prompts, stop, callbacks, **rest)
        route = self._route(len(prompts))
        if route == "fresh":
            return self._uncached().generate(prompts, stop, callbacks, **rest)
        if route == "each":
            runs = per_prompt_runs(len(prompts), callbacks, rest)
            return merge_results(
                run_each(
                    len(prompts),
                    lambda i: self.model_copy(update={"seed": self.seed + i}).generate(
                        [prompts[i]], stop, runs[i][0], **runs[i][1]
                    ),
                )
            )
        return super().generate(prompts, stop, callbacks, **rest)

    async def agenerate(
        self, prompts: list[str], stop: list[str] | None = None, callbacks: Any = None, **kwargs: Any
    ):
        llm, rest = self._with_overrides(kwargs)
        if llm is not self:
            return await llm.agenerate(prompts, stop, callbacks, **rest)
        route = self._route(len(prompts))
        if route == "fresh":
            return await self._uncached().agenerate(prompts, stop, callbacks, **rest)
        if route == "each":
            runs = per_prompt_runs(len(prompts), callbacks, rest)
            calls = [
                self.model_copy(update={"seed": self.seed + i}).agenerate(
                    [prompts[i]], stop, runs[i][0], **runs[i][1]
                )
                for i in range(len(prompts))
            ]
            return merge_results(await asyncio.gather(*calls))
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
        return self._result(self._run(prompts, options))

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        options = self._call_options(len(prompts), stop, kwargs)
        return self._result(await self._arun(prompts, options))

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        options = self._call_options(1, stop, kwargs)
        yield from relay(self._stream_events([prompt], options), _chunk, run_manager)

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        options = self._call_options(1, stop, kwargs)
        async for chunk in arelay(self._astream_events([prompt], options), _chunk, run_manager):
            yield chunk


def _chunk(ev: StreamEvent) -> GenerationChunk | None:
    """A text delta as a chunk; the final event also carries usage, finish reason and negatives."""
    if ev.result is not None:
        return GenerationChunk(text=ev.delta, generation_info=generation_info_of(ev.result))
    if not ev.delta:
        return None
    return GenerationChunk(text=ev.delta)
