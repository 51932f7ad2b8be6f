"""Structured output for `ChatSteer` and `SteerLLM`: decoding under the schema, parsing without retries.

`ChatSteer.with_structured_output(schema)` binds the engine's per-call `constraint=` (the schema as
a JSON schema) and parses the reply, as the partner packages' `method="json_schema"` does; the
output is valid JSON of the schema by construction, so the parser never needs a retry. The one way
it can fail is a reply cut by `max_new_tokens` (finish reason "length"): that is never returned as
parsed; it raises `OutputParserException` naming `max_new_tokens` (with `include_raw=True`:
`parsed=None` and the exception as `parsing_error`).

| schema | constraint | returns |
|---|---|---|
| pydantic model class (v2, or `pydantic.v1`) | its JSON schema | a model instance |
| TypedDict | LangChain's JSON schema of it (`Annotated[T, default, "description"]`), else pydantic's | a dict |
| another type pydantic describes (`list[str]`, ...) | `TypeAdapter(...).json_schema()` | the JSON value |
| JSON schema dict (or an OpenAI function/tool or Anthropic tool dict) | the schema (its parameters) | a dict |
| `method="json_mode"` | any JSON object | the schema's type (a dict without one) |

`method="function_calling"` gives the same result as "json_schema": STEER has no tool calls, but the
arguments a tool call would carry are exactly the JSON of the schema, which it decodes directly.
`strict` is accepted; decoding under the schema is always strict.

`SteerLLM` (text completion) takes the same `constraint=` per call (`.bind(constraint=Model)`, or
`schema=`, its alias) and `SteerJsonParser(target=Model)` parses its output:

    >>> chain = prompt | llm.bind(schema=Record) | SteerJsonParser(target=Record)
    >>> structured_output(llm, Record)      # the same chain, without the prompt
"""

from __future__ import annotations

import contextlib
import json
import sys
from operator import itemgetter
from typing import Any, Literal

from langchain_core.exceptions import OutputParserException
from langchain_core.output_parsers import BaseOutputParser
from langchain_core.outputs import ChatGeneration, Generation
from langchain_core.runnables import Runnable, RunnableLambda, RunnablePassthrough
from pydantic import BaseModel, ConfigDict, TypeAdapter
from typing_extensions import is_typeddict

__all__ = ["SteerJsonParser", "constraint_key", "json_schema_of", "structured_output"]

Method = Literal["json_schema", "function_calling", "json_mode"]
_METHODS = ("json_schema", "function_calling", "json_mode")
#: What `method="json_mode"` constrains the output to: any JSON object.
ANY_OBJECT: dict[str, Any] = {"type": "object"}


def _is_model(schema: Any) -> bool:
    """A pydantic model class, v2 or `pydantic.v1` (LangChain still accepts the latter; a v1 model
    means `pydantic.v1` is imported, so it is not imported here)."""
    if not isinstance(schema, type):
        return False
    v1 = sys.modules.get("pydantic.v1")
    return issubclass(schema, BaseModel) or (v1 is not None and issubclass(schema, v1.BaseModel))


def json_schema_of(schema: Any) -> dict[str, Any]:
    """The JSON schema a LangChain `schema` stands for (pydantic model, TypedDict or other type,
    JSON-schema dict, OpenAI function/tool dict, Anthropic tool dict).

    A TypedDict is read as LangChain reads it (`Annotated[T, default, "description"]`: a key with a
    default is optional), falling back to pydantic for what LangChain's converter cannot take
    (e.g. `Annotated[str, Field(max_length=4)]`).

    Raises:
        TypeError: a schema that is none of these.
    """
    if isinstance(schema, dict):
        if schema.get("type") == "function" and isinstance(schema.get("function"), dict):
            schema = schema["function"]
        if "name" in schema and "properties" not in schema:
            for key in ("parameters", "input_schema"):
                if isinstance(schema.get(key), dict):
                    return dict(schema[key])
        return dict(schema)
    if _is_model(schema):
        return schema.model_json_schema() if issubclass(schema, BaseModel) else schema.schema()
    if is_typeddict(schema):
        from langchain_core.utils.function_calling import convert_to_json_schema

        with contextlib.suppress(Exception):  # pydantic's reading below takes what LangChain's cannot
            return convert_to_json_schema(schema)
    try:
        return TypeAdapter(schema).json_schema()
    except Exception as err:  # pydantic raises several error types for what it cannot describe
        raise TypeError(
            f"with_structured_output takes a pydantic model, a TypedDict (or a type pydantic describes) or a "
            f"JSON-schema dict, got {schema!r} ({err})"
        ) from err


def constraint_key(spec: Any) -> Any:
    """A stable, printable form of a `constraint=` spec for LangChain's cache key (a class by its
    JSON schema, not its address)."""
    if spec is None or isinstance(spec, (str, int, float, bool)):
        return spec
    try:
        schema = json_schema_of(spec) if (_is_model(spec) or isinstance(spec, dict)) else None
        return json.dumps(schema if schema is not None else spec, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        return repr(spec)


class SteerJsonParser(BaseOutputParser[Any]):
    """Parses a STEER reply decoded under a JSON constraint: a model instance for a pydantic
    `target`, the JSON value otherwise (a dict for a TypedDict or a JSON-schema dict).

    The output was decoded under the schema, so it parses whenever it is complete; a reply cut by
    `max_new_tokens` (finish reason "length") raises `OutputParserException` saying so. Streaming
    yields one value, when the reply is complete. Works on `ChatSteer` messages and on `SteerLLM`
    text (a plain string has no finish reason: a cut one fails as invalid JSON).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    target: Any = None
    """The schema: a pydantic model, a TypedDict (or other type), a JSON-schema dict, or None (any JSON)."""

    @property
    def _type(self) -> str:
        return "steer_json"

    def get_format_instructions(self) -> str:
        return "Answer with a JSON value only."  # the constraint enforces the format itself

    def parse(self, text: str) -> Any:
        return self._value(text)

    def parse_result(self, result: list[Generation], *, partial: bool = False) -> Any:
        gen = result[0]
        text = gen.text
        finish, tokens = _finish_of(gen)
        if finish == "length":
            raise OutputParserException(
                f"the structured output was cut by max_new_tokens ({tokens} tokens) before it was complete, so "
                "it is not returned as parsed: raise max_new_tokens (a per-call option: "
                "`.bind(max_new_tokens=...)`) or bound the schema's strings and arrays "
                "(maxLength, maxItems)",
                llm_output=text,
            )
        return self._value(text)

    def _value(self, text: str) -> Any:
        try:
            if _is_model(self.target):
                if issubclass(self.target, BaseModel):
                    return self.target.model_validate_json(text)
                return self.target.parse_raw(text)  # pydantic.v1
            return json.loads(text)
        except ValueError as err:  # pydantic's ValidationError is a ValueError
            raise OutputParserException(
                f"the output is not valid JSON for the schema ({err}); if it was cut by max_new_tokens, raise it",
                llm_output=text,
            ) from err


def _finish_of(gen: Generation) -> tuple[str | None, Any]:
    """(finish reason, tokens generated) of a generation or an accumulated chat message."""
    info = gen.generation_info or {}
    finish, tokens = info.get("finish_reason"), info.get("completion_tokens")
    if isinstance(gen, ChatGeneration):
        message = gen.message
        finish = finish or (message.response_metadata or {}).get("finish_reason")
        usage = getattr(message, "usage_metadata", None) or {}
        tokens = tokens if tokens is not None else usage.get("output_tokens")
    return finish, tokens


def structured_output(
    model: Any,
    schema: Any = None,
    *,
    method: Method = "json_schema",
    include_raw: bool = False,
    strict: bool | None = None,
    **kwargs: Any,
) -> Runnable:
    """`model.with_structured_output(...)` for a STEER model (`ChatSteer` or `SteerLLM`).

    Args:
        model: the `ChatSteer` or `SteerLLM`.
        schema: pydantic model (v2 or v1), TypedDict (or another type pydantic describes), JSON-schema
            dict or OpenAI/Anthropic tool dict; optional with `method="json_mode"`.
        method: "json_schema" (default): the output is JSON of `schema`; "function_calling": the
            same (STEER has no tool calls; it decodes the arguments' JSON directly, and the message
            carries it as content, not as a tool call); "json_mode": any JSON object, parsed as
            `schema` when one is given (a pydantic model may then reject it).
        include_raw: return `{"raw": message, "parsed": value | None, "parsing_error": error | None}`.
        strict: accepted for compatibility (None, True or False); decoding under the schema is
            always strict.

    Raises:
        ValueError: an unknown method or keyword, or no schema with method="json_schema" or
            "function_calling".
    """
    if kwargs:
        raise ValueError(f"with_structured_output got unknown argument(s) {sorted(kwargs)}")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {list(_METHODS)}, got {method!r}")
    if schema is None and method != "json_mode":
        raise ValueError(f"method={method!r} needs a schema; use method='json_mode' for any JSON object")
    constraint = ANY_OBJECT if method == "json_mode" else json_schema_of(schema)
    bound: dict[str, Any] = {"constraint": constraint}
    if _is_chat(model) and schema is not None:
        traced = {"method": method, **({} if strict is None else {"strict": strict})}
        bound["ls_structured_output_format"] = {"kwargs": traced, "schema": _traceable(schema)}
    llm = model.bind(**bound)
    parser = SteerJsonParser(target=schema)
    if not include_raw:
        return llm | parser
    parse_raw = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
    no_parse = RunnablePassthrough.assign(parsed=lambda _: None)
    # `llm` first in the sequence, so per-call keywords (`.invoke(x, seed=0)`) reach the model; a
    # `RunnableMap(raw=llm)` first step would drop them
    as_raw = RunnableLambda(lambda message: {"raw": message}, name="as_raw")
    return llm | as_raw | parse_raw.with_fallbacks([no_parse], exception_key="parsing_error")


def _traceable(schema: Any) -> Any:
    """`schema` as LangSmith's `ls_structured_output_format` can convert it (LangChain's converter
    fails on some TypedDicts, e.g. with `Annotated[str, Field(...)]`: then their JSON schema)."""
    from langchain_core.utils.function_calling import convert_to_json_schema

    try:
        convert_to_json_schema(schema)
    except Exception:  # noqa: BLE001 - any failure there would break the call, not just tracing
        return json_schema_of(schema)
    return schema


def _is_chat(model: Any) -> bool:
    from langchain_core.language_models.chat_models import BaseChatModel

    return isinstance(model, BaseChatModel)
