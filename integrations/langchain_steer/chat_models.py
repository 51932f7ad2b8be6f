"""`ChatSteer`: STEER decoding as a LangChain `BaseChatModel` over the model's chat template."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import get_config_list, get_executor_for_config
from pydantic import ConfigDict

from steer_plugins import SteerResult, StreamEvent, usage

from .params import SteerParams, arelay, generation_info_of, relay
from .structured import structured_output

__all__ = ["ChatSteer", "to_chat_dicts"]

#: Threads `ChatSteer.batch` runs at once when the caller sets no `max_concurrency`.
DEFAULT_BATCH_WIDTH = 32

_ROLES: dict[type, str] = {
    SystemMessage: "system",
    HumanMessage: "user",
    AIMessage: "assistant",
    ToolMessage: "tool",
    FunctionMessage: "function",
}


class ChatSteer(SteerParams, BaseChatModel):
    """A LangChain chat model decoding with STEER; messages go through the model's chat template.

    System, user and assistant turns (and any other role the template renders, via
    `ChatMessage(role=...)`) are rendered with `engine.apply_chat_template`; a role it cannot
    render raises a `ValueError` naming it. Streaming yields `AIMessageChunk`s, the last one
    carrying `usage_metadata` and the finish reason. `stop` is honoured in every path.

    `batch`: LangChain runs one `_generate` per input on a thread pool (6 threads on a 2-core
    machine by default) and the threads reach the engine milliseconds apart, so the engine's
    5 ms coalescing window alone split 8 inputs into 2-3 decode batches. `ChatSteer.batch` gives the
    pool one thread per input (up to `max_concurrency`, else `DEFAULT_BATCH_WIDTH`) and announces
    each wave of that many inputs with `engine.expect`, so the engine's scheduler starts them as
    one batch; with a `seed`, input *i* gets `seed + i` (as in one `SteerLLM.batch` call). `abatch`
    needs nothing (its calls start together and the engine coalesces them).

    Args: as `SteerLLM` (engine or expert/base or HuggingFacePipeline's arguments, `negatives`,
    `add_to_pool`, any SteerConfig field, `max_tokens`, `timeout`, `max_retries`), plus `streaming`.
    Caching, pickling and copies behave as for `SteerLLM`.
    Per call: `chat.invoke(messages, negatives=[...], gamma=0.5)` or `.bind(...)`.

    Example:
        >>> from steer_plugins import SteerEngine
        >>> chat = ChatSteer(engine=SteerEngine("smollm2-135m-instruct"), max_new_tokens=40, eta=0.0)
        >>> chat.invoke([("system", "You write short questions."), ("user", "One about comets.")]).content
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    streaming: bool = False
    """`invoke` decodes through the streaming path (callbacks get every token), as LangChain's
    `streaming=True` means; the result is the same message."""

    @property
    def _llm_type(self) -> str:
        return "steer-chat"

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """Tokens the model is given for `messages`: the chat template's rendering (roles, special
        tokens and the generation prompt included), counted as the engine counts prompt tokens."""
        if tools:
            raise ValueError("ChatSteer has no tool calling: count messages without `tools`")
        return self.engine.count_tokens(self.render(messages))

    def generate(
        self,
        messages: list[list[BaseMessage]],
        stop: list[str] | None = None,
        callbacks: Any = None,
        **kwargs: Any,
    ):
        """`BaseChatModel.generate`; a call without a seed is a fresh sample and bypasses LangChain's
        cache (see `params.py`)."""
        if self._cache_in_use() and kwargs.get("seed", self.seed) is None:
            return self._uncached().generate(messages, stop, callbacks, **kwargs)
        return super().generate(messages, stop, callbacks, **kwargs)

    async def agenerate(
        self,
        messages: list[list[BaseMessage]],
        stop: list[str] | None = None,
        callbacks: Any = None,
        **kwargs: Any,
    ):
        if self._cache_in_use() and kwargs.get("seed", self.seed) is None:
            return await self._uncached().agenerate(messages, stop, callbacks, **kwargs)
        return await super().agenerate(messages, stop, callbacks, **kwargs)

    def with_structured_output(
        self, schema: Any = None, *, method: str = "json_schema", include_raw: bool = False, **kwargs: Any
    ):
        """Outputs decoded under `schema` (pydantic model, TypedDict or JSON-schema dict) and parsed
        without retries; `method="function_calling"` is the same (no tool calls: the arguments' JSON
        is decoded directly), `method="json_mode"`: any JSON object; `strict` is accepted (always
        strict). A reply cut by `max_new_tokens` is never returned as parsed. See `structured.py`
        (`structured_output`) for the details."""
        return structured_output(self, schema, method=method, include_raw=include_raw, **kwargs)

    def render(self, messages: Sequence[BaseMessage]) -> str:
        """The prompt string the model sees for `messages` (chat template, generation prompt added)."""
        return self.engine.apply_chat_template(to_chat_dicts(messages))

    def _combine_llm_outputs(self, llm_outputs: list[dict | None]) -> dict:
        totals = usage([])  # zeros
        for out in llm_outputs:
            for k, v in ((out or {}).get("token_usage") or {}).items():
                totals[k] = totals.get(k, 0) + v
        return {"token_usage": totals, "model_name": self.engine.name}

    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[BaseMessage]:
        """`Runnable.batch` with one pool thread per input, in waves of `max_concurrency` (default
        `DEFAULT_BATCH_WIDTH`) inputs that the engine is told to expect (`engine.expect`), so each
        wave's `_generate` calls start as one decode batch. With a `seed` (field or keyword), input
        *i* gets `seed + i`, as the prompts of one `SteerLLM.batch` call do."""
        if len(inputs) < 2:
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        configs = get_config_list(config, len(inputs))
        width = configs[0].get("max_concurrency") or min(len(inputs), DEFAULT_BATCH_WIDTH)
        seed = kwargs.pop("seed", self.seed)

        def invoke(i: int) -> BaseMessage | Exception:
            call = kwargs if seed is None else {**kwargs, "seed": seed + i}
            try:
                return self.invoke(inputs[i], configs[i], **call)
            except Exception as err:
                if return_exceptions:
                    return err
                raise

        outputs: list[Any] = []
        with get_executor_for_config({**configs[0], "max_concurrency": width}) as pool:
            for start in range(0, len(inputs), width):
                wave = range(start, min(start + width, len(inputs)))
                with self.engine.expect(len(wave)):
                    outputs += pool.map(invoke, wave)
        return outputs

    # ------------------------------------------------------------------ generate / stream
    def _result(self, result: SteerResult) -> ChatResult:
        message = AIMessage(
            content=result.text,
            usage_metadata=_usage_metadata(result),
            response_metadata={"finish_reason": result.finish_reason, "model_name": self.engine.name},
        )
        return ChatResult(
            generations=[ChatGeneration(message=message, generation_info=generation_info_of(result))],
            llm_output={"token_usage": usage(result), "model_name": self.engine.name},
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        options = self._call_options(1, stop, kwargs)
        return self._result(self._run([self.render(messages)], options)[0])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        options = self._call_options(1, stop, kwargs)
        return self._result((await self._arun([self.render(messages)], options))[0])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        options = self._call_options(1, stop, kwargs)
        events = self._stream_events([self.render(messages)], options)
        yield from relay(events, self._chunk, run_manager)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        options = self._call_options(1, stop, kwargs)
        events = self._astream_events([self.render(messages)], options)
        async for chunk in arelay(events, self._chunk, run_manager):
            yield chunk

    def _chunk(self, ev: StreamEvent) -> ChatGenerationChunk | None:
        """A text delta as a message chunk; the final one carries usage and the finish reason."""
        if ev.result is not None:
            r = ev.result
            msg = AIMessageChunk(
                content=ev.delta,
                usage_metadata=_usage_metadata(r),
                response_metadata={"finish_reason": r.finish_reason, "model_name": self.engine.name},
                chunk_position="last",
            )
            return ChatGenerationChunk(message=msg, generation_info=generation_info_of(r))
        if not ev.delta:
            return None
        return ChatGenerationChunk(message=AIMessageChunk(content=ev.delta))


def to_chat_dicts(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages as `{"role", "content"}` dicts for `engine.apply_chat_template`.

    Raises:
        TypeError: a message that is not a BaseMessage, or content with non-text parts.
    """
    out = []
    for i, m in enumerate(messages):
        if isinstance(m, ChatMessage):
            role = m.role
        else:
            role = next((r for cls, r in _ROLES.items() if isinstance(m, cls)), None)
        if role is None:
            raise TypeError(
                f"message #{i} is a {type(m).__name__}; ChatSteer renders System/Human/AI/Tool/Function "
                "messages and ChatMessage(role=...)"
            )
        out.append({"role": role, "content": _text_of(m, i)})
    return out


def _text_of(message: BaseMessage, i: int) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if isinstance(part, str):
            parts.append(part)
        elif isinstance(part, dict) and part.get("type") == "text":
            parts.append(part.get("text", ""))
        else:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise TypeError(f"message #{i} has a {kind!r} content part; ChatSteer handles text only")
    return "".join(parts)


def _usage_metadata(result: SteerResult) -> UsageMetadata:
    u = usage(result)
    return UsageMetadata(
        input_tokens=u["prompt_tokens"], output_tokens=u["completion_tokens"], total_tokens=u["total_tokens"]
    )
