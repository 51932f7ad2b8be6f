"""`FieldByFieldAdapter`: DSPy's chat format, with the field headers written by the adapter.

Small models rarely answer in DSPy's `[[ ## field ## ]]` format, so `ChatAdapter` fails to parse
their output. This adapter keeps ChatAdapter's prompt (system message, demos, user turn) but
writes the assistant turn itself: for each output field it appends `[[ ## field ## ]]` to the
assistant turn (a prefill the engine continues) and lets the model generate only that field's
value, stopping at the next header or a blank line. The completion it parses is therefore always
well formed, so `Predict` and `ChainOfThought` with several output fields parse every time
(values of non-text types, e.g. `int`, must still be valid).

Cost: one LM call per output field (each cached by DSPy separately). `n > 1` asks for `n`
candidates of the first field and continues each candidate on its own.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from dspy.adapters.chat_adapter import ChatAdapter
from dspy.dsp.utils.settings import settings

try:  # DSPy 3.4's marker that this messages= call belongs to an adapter (silences its 3.5 warning)
    from dspy.clients._deprecation import adapter_message_call
except ImportError:  # pragma: no cover - later DSPy versions
    adapter_message_call = None

__all__ = ["FieldByFieldAdapter", "DEFAULT_FIELD_STOPS"]

DEFAULT_FIELD_STOPS = ("[[", "\n\n")
"""Where a field's value ends: the start of any header, or a blank line."""


class FieldByFieldAdapter(ChatAdapter):
    """A `ChatAdapter` that writes each output field's header itself; the LM fills in the values.

    Args:
        field_stops: stop strings that end a field's value (default: a header start or a blank line).
        retry_empty: when a value comes back empty (the model stopped at once), ask once more with
            only header starts as stops, so a leading blank line does not end the value.
        **kwargs: `ChatAdapter` arguments (callbacks, ...). The JSON fallback is off: the output
            is well formed by construction.

    Example:
        >>> dspy.configure(lm=steer_lm("smollm2-135m-instruct"), adapter=FieldByFieldAdapter())
        >>> dspy.ChainOfThought("topic -> question, answer")(topic="volcanoes").answer
    """

    def __init__(
        self, field_stops: tuple[str, ...] = DEFAULT_FIELD_STOPS, retry_empty: bool = True, **kwargs: Any
    ):
        kwargs.setdefault("use_json_adapter_fallback", False)
        super().__init__(**kwargs)
        if isinstance(field_stops, str) or not all(isinstance(s, str) and s for s in field_stops):
            raise ValueError(f"`field_stops` must be a tuple of non-empty strings, got {field_stops!r}")
        self.field_stops = tuple(field_stops)
        self.retry_empty = retry_empty

    # ------------------------------------------------------------------ the adapter pipeline
    def __call__(self, lm, lm_kwargs, signature, demos, inputs):
        processed = self._call_preprocess(lm, lm_kwargs, signature, inputs)
        messages = self.format(processed, demos, inputs)
        completions = self._write_fields(lm, dict(lm_kwargs), processed, messages)
        return self._call_postprocess(processed, signature, completions, lm, lm_kwargs)

    async def acall(self, lm, lm_kwargs, signature, demos, inputs):
        processed = self._call_preprocess(lm, lm_kwargs, signature, inputs)
        messages = self.format(processed, demos, inputs)
        completions = await self._awrite_fields(lm, dict(lm_kwargs), processed, messages)
        return self._call_postprocess(processed, signature, completions, lm, lm_kwargs)

    # ------------------------------------------------------------------ sync / async twins
    def _write_fields(self, lm, lm_kwargs, signature, messages) -> list[str]:
        n = lm_kwargs.pop("n", None) or lm.kwargs.get("n") or 1
        names = list(signature.output_fields)
        drafts = [""] * n
        for k, field in enumerate(names):
            header = self._header(field, first=k == 0)
            self._emit(lm, header)
            prefixes = [d + header for d in drafts]
            if k == 0:
                values = self._ask(lm, lm_kwargs, messages, prefixes[0], n)
            else:
                values = [self._ask(lm, lm_kwargs, messages, p, 1)[0] for p in prefixes]
            drafts = [p + v for p, v in zip(prefixes, values, strict=True)]
        self._emit(lm, "\n\n[[ ## completed ## ]]\n")
        return [d + "\n\n[[ ## completed ## ]]\n" for d in drafts]

    async def _awrite_fields(self, lm, lm_kwargs, signature, messages) -> list[str]:
        n = lm_kwargs.pop("n", None) or lm.kwargs.get("n") or 1
        names = list(signature.output_fields)
        drafts = [""] * n
        for k, field in enumerate(names):
            header = self._header(field, first=k == 0)
            await self._aemit(lm, header)
            prefixes = [d + header for d in drafts]
            if k == 0:
                values = await self._aask(lm, lm_kwargs, messages, prefixes[0], n)
            else:
                values = [(await self._aask(lm, lm_kwargs, messages, p, 1))[0] for p in prefixes]
            drafts = [p + v for p, v in zip(prefixes, values, strict=True)]
        await self._aemit(lm, "\n\n[[ ## completed ## ]]\n")
        return [d + "\n\n[[ ## completed ## ]]\n" for d in drafts]

    def _ask(self, lm, lm_kwargs, messages, prefix, n) -> list[str]:
        values = self._values(self._lm_call(lm, lm_kwargs, messages, prefix, n, self.field_stops))
        if self.retry_empty and any(not v for v in values):
            stops = tuple(s for s in self.field_stops if s.strip()) or ("[[",)
            retry = self._values(self._lm_call(lm, lm_kwargs, messages, prefix, 1, stops))
            values = [v or retry[0] for v in values]
        return values

    async def _aask(self, lm, lm_kwargs, messages, prefix, n) -> list[str]:
        call = self._lm_acall(lm, lm_kwargs, messages, prefix, n, self.field_stops)
        values = self._values(await call)
        if self.retry_empty and any(not v for v in values):
            stops = tuple(s for s in self.field_stops if s.strip()) or ("[[",)
            retry = self._values(await self._lm_acall(lm, lm_kwargs, messages, prefix, 1, stops))
            values = [v or retry[0] for v in values]
        return values

    def _lm_call(self, lm, lm_kwargs, messages, prefix, n, stops):
        msgs, kwargs = self._request(lm, lm_kwargs, messages, prefix, n, stops)
        with adapter_message_call(lm, msgs) if adapter_message_call else nullcontext():
            return lm(messages=msgs, **kwargs)

    async def _lm_acall(self, lm, lm_kwargs, messages, prefix, n, stops):
        msgs, kwargs = self._request(lm, lm_kwargs, messages, prefix, n, stops)
        with adapter_message_call(lm, msgs) if adapter_message_call else nullcontext():
            return await lm.acall(messages=msgs, **kwargs)

    # ------------------------------------------------------------------ pieces
    @staticmethod
    def _header(field: str, *, first: bool) -> str:
        return ("" if first else "\n\n") + f"[[ ## {field} ## ]]\n"

    def _request(self, lm, lm_kwargs, messages, prefix, n, stops):
        configured = lm_kwargs.get("stop", lm.kwargs.get("stop")) or []
        configured = [configured] if isinstance(configured, str) else list(configured)
        kwargs = {**lm_kwargs, "stop": list(dict.fromkeys([*configured, *stops]))}
        if n > 1:
            kwargs["n"] = n
        return [*messages, {"role": "assistant", "content": prefix}], kwargs

    @staticmethod
    def _values(outputs) -> list[str]:
        texts = [o.get("text") if isinstance(o, dict) else o for o in outputs]
        return [(t or "").strip() for t in texts]

    @staticmethod
    def _chunk(lm, text: str):
        from dspy.clients.call_result import attributes
        from dspy.clients.engines.streaming import EngineChunk

        predict_id = id(settings.caller_predict) if settings.caller_predict else None
        return EngineChunk(
            id=None,
            model=lm.model,
            predict_id=predict_id,
            choices=[attributes({"index": 0, "delta": {"content": text}, "finish_reason": None})],
        )

    def _listening(self) -> bool:
        if settings.send_stream is None:
            return False
        # StreamListener keys its field markers by adapter class name; ours writes ChatAdapter's markers.
        for listener in settings.get("stream_listeners") or []:
            ids = getattr(listener, "adapter_identifiers", None)
            if isinstance(ids, dict) and "ChatAdapter" in ids:
                ids.setdefault(type(self).__name__, ids["ChatAdapter"])
        return True

    def _emit(self, lm, text: str) -> None:
        """While streaming, send the text the adapter writes (field headers) so listeners see them."""
        if self._listening():
            import anyio

            anyio.from_thread.run(settings.send_stream.send, self._chunk(lm, text))

    async def _aemit(self, lm, text: str) -> None:
        if self._listening():
            await settings.send_stream.send(self._chunk(lm, text))
