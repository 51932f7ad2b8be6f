"""`ChatSteer`: STEER decoding as a LangChain `BaseChatModel` over the model's chat template."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import Future
from contextvars import ContextVar
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
from langchain_core.runnables.config import get_config_list
from pydantic import ConfigDict

from steer_plugins import SteerEngine, SteerResult, StreamEvent

from ._common import SteerParams, generation_info_of, sum_usage

__all__ = ["ChatSteer", "to_chat_dicts"]

#: Threads `ChatSteer.batch` runs at once when the caller sets no `max_concurrency`.
DEFAULT_BATCH_WIDTH = 32
#: How long a gathered call waits for the rest of its batch after the last arrival.
GATHER_WINDOW_S = 0.05

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
    machine by default) and the threads reach the engine milliseconds apart, so the engine's own
    coalescing split 8 inputs into 2-3 decode batches. `ChatSteer.batch` therefore gives the pool
    one thread per input (up to `max_concurrency`, else `DEFAULT_BATCH_WIDTH`) and gathers the
    calls into one `engine.generate` call; `abatch` needs nothing (the engine coalesces it).

    Args: as `SteerLLM` (engine or expert/base, `negatives`, `add_to_pool`, any SteerConfig field).
    Per call: `chat.invoke(messages, negatives=[...], gamma=0.5)` or `.bind(...)`.

    Example:
        >>> from steer_plugins import SteerEngine
        >>> chat = ChatSteer(engine=SteerEngine("smollm2-135m-instruct"), max_new_tokens=40, eta=0.0)
        >>> chat.invoke([("system", "You write short questions."), ("user", "One about comets.")]).content
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    @property
    def _llm_type(self) -> str:
        return "steer-chat"

    def render(self, messages: Sequence[BaseMessage]) -> str:
        """The prompt string the model sees for `messages` (chat template, generation prompt added)."""
        return self.engine.apply_chat_template(to_chat_dicts(messages))

    def _combine_llm_outputs(self, llm_outputs: list[dict | None]) -> dict:
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        for out in llm_outputs:
            for k, v in ((out or {}).get("token_usage") or {}).items():
                usage[k] = usage.get(k, 0) + v
        return {"token_usage": usage, "model_name": self.engine.name}

    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[BaseMessage]:
        """`Runnable.batch` with the per-input `_generate` calls gathered into engine batches."""
        if len(inputs) < 2:
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        configs = get_config_list(config, len(inputs))
        width = configs[0].get("max_concurrency") or min(len(inputs), DEFAULT_BATCH_WIDTH)
        configs = [{**c, "max_concurrency": width} for c in configs]
        token = _GATHER.set(_Gather(self.engine, total=len(inputs), width=width))
        try:
            return super().batch(inputs, configs, return_exceptions=return_exceptions, **kwargs)
        finally:
            _GATHER.reset(token)

    # ------------------------------------------------------------------ generate / stream
    def _result(self, result: SteerResult) -> ChatResult:
        info = generation_info_of(result)
        message = AIMessage(
            content=result.text,
            usage_metadata=_usage_metadata(result),
            response_metadata={"finish_reason": result.finish_reason, "model_name": self.engine.name},
        )
        return ChatResult(
            generations=[ChatGeneration(message=message, generation_info=info)],
            llm_output={"token_usage": sum_usage([result]), "model_name": self.engine.name},
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        args = self._engine_args(1, stop, kwargs)
        prompt = self.render(messages)
        gather = _GATHER.get()
        if gather is not None and gather.engine is self.engine:
            return self._result(gather.submit(prompt, args))
        return self._result(self.engine.generate([prompt], **args)[0])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        args = self._engine_args(1, stop, kwargs)
        results = await self.engine.agenerate([self.render(messages)], **args)
        return self._result(results[0])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        args = self._engine_args(1, stop, kwargs)
        for ev in self.engine.stream([self.render(messages)], **args):
            chunk = self._chunk(ev)
            if chunk is None:
                continue
            if run_manager is not None:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        args = self._engine_args(1, stop, kwargs)
        async for ev in self.engine.astream([self.render(messages)], **args):
            chunk = self._chunk(ev)
            if chunk is None:
                continue
            if run_manager is not None:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
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


_GATHER: ContextVar[_Gather | None] = ContextVar("langchain_steer_gather", default=None)


class _Gather:
    """Collects the `_generate` calls of one `ChatSteer.batch` (each on its own pool thread) and
    submits each full wave of them as one `engine.generate` call.

    A wave is full when `min(width, inputs not yet submitted)` calls are waiting; calls that never
    come (a cache hit, an error before `_generate`) are covered by `GATHER_WINDOW_S`: a waiting call
    flushes whatever is pending once no call arrived for that long. Calls whose settings differ
    go to the engine as separate requests of the same wave (the engine coalesces those).
    """

    def __init__(self, engine: SteerEngine, *, total: int, width: int) -> None:
        self.engine, self.left, self.width = engine, total, width
        self.cond = threading.Condition()
        self.pending: list[tuple[str, dict[str, Any], Future]] = []
        self.last_arrival = time.monotonic()

    def submit(self, prompt: str, args: dict[str, Any]) -> SteerResult:
        fut: Future = Future()
        with self.cond:
            self.pending.append((prompt, args, fut))
            self.last_arrival = time.monotonic()
            wave = None
            while wave is None and fut in (f for _, _, f in self.pending):
                full = len(self.pending) >= min(self.width, self.left)
                if full or time.monotonic() - self.last_arrival >= GATHER_WINDOW_S:
                    wave = self._take()
                else:
                    self.cond.wait(GATHER_WINDOW_S - (time.monotonic() - self.last_arrival))
        if wave is not None:
            self._run(wave)
        return fut.result()

    def _take(self) -> list[tuple[str, dict[str, Any], Future]]:
        wave, self.pending = self.pending, []
        self.left -= len(wave)
        self.cond.notify_all()
        return wave

    def _run(self, wave: list[tuple[str, dict[str, Any], Future]]) -> None:
        groups: dict[str, list[tuple[str, dict[str, Any], Future]]] = {}
        for item in wave:
            args = item[1]
            key = repr(sorted((k, v) for k, v in args.items() if k != "negatives"))
            groups.setdefault(f"{key}|{args['negatives'] is None}", []).append(item)
        requests = []
        for items in groups.values():
            args = {k: v for k, v in items[0][1].items() if k != "negatives"}
            negs = None if items[0][1]["negatives"] is None else [it[1]["negatives"][0] for it in items]
            requests.append((items, args, negs))

        def run(items, args, negs) -> None:
            try:
                results = self.engine.generate([p for p, _, _ in items], negatives=negs, **args)
            except BaseException as err:  # noqa: BLE001 - handed to every caller of the wave
                for _, _, f in items:
                    f.set_exception(err)
                return
            for (_, _, f), r in zip(items, results, strict=True):
                f.set_result(r)

        threads = [threading.Thread(target=run, args=req, daemon=True) for req in requests[1:]]
        for t in threads:
            t.start()
        run(*requests[0])
        for t in threads:
            t.join()


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
    return UsageMetadata(
        input_tokens=result.prompt_tokens,
        output_tokens=result.completion_tokens,
        total_tokens=result.prompt_tokens + result.completion_tokens,
    )
