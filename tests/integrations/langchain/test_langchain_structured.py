"""`ChatSteer.with_structured_output` and `SteerLLM`'s `schema=` on the tiny random models."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

import pytest
from langchain_core.exceptions import OutputParserException
from langchain_steer import ChatSteer, SteerLLM
from langchain_steer.structured import SteerJsonParser, structured_output
from pydantic import BaseModel, Field
from pydantic import v1 as pydantic_v1
from typing_extensions import TypedDict


class Question(BaseModel):
    text: str = Field(max_length=6)
    difficulty: int = Field(ge=1, le=5)
    kind: Literal["open", "closed"]


class Flags(TypedDict):
    label: Annotated[str, Field(max_length=4)]
    ok: bool


SCHEMA = {
    "title": "Rating",
    "type": "object",
    "properties": {
        "score": {"type": "integer", "minimum": 0, "maximum": 9},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 2},
    },
    "required": ["score", "tags"],
}


@pytest.fixture
def chat(tiny_engine):
    return ChatSteer(engine=tiny_engine, max_new_tokens=80, add_to_pool=False)


@pytest.mark.parametrize("seed", [0, 100])
def test_batch_returns_model_instances(chat, seed):
    out = chat.with_structured_output(Question).batch([f"Question {i}" for i in range(6)], seed=seed)
    assert len(out) == 6 and all(isinstance(q, Question) for q in out)


def test_invoke_many_seeds(chat):
    structured = chat.with_structured_output(Question)
    for seed in range(8):
        assert isinstance(structured.invoke("Write one.", seed=seed), Question)


def test_include_raw(chat):
    out = chat.with_structured_output(Question, include_raw=True).invoke("Write one.", seed=1)
    assert set(out) == {"raw", "parsed", "parsing_error"}
    assert isinstance(out["parsed"], Question) and out["parsing_error"] is None
    assert Question.model_validate_json(out["raw"].content) == out["parsed"]


def test_length_cut_is_never_parsed(chat):
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    # per-call keywords reach the model through both forms (LangChain's `bind(...)` before
    # `with_structured_output` would be dropped by RunnableBinding, for any chat model)
    raw, plain = chat.with_structured_output(schema, include_raw=True), chat.with_structured_output(schema)
    cut = []
    for seed in range(4):
        out = raw.invoke("x", seed=seed, max_new_tokens=12)
        assert out["raw"].content == raw.invoke("x", seed=seed, max_new_tokens=12)["raw"].content  # seeded
        if out["raw"].response_metadata["finish_reason"] == "length":
            assert out["parsed"] is None and "max_new_tokens" in str(out["parsing_error"])
            cut.append(seed)
        else:
            assert isinstance(out["parsed"]["a"], str)
    assert cut, "an unbounded string within 12 tokens should be cut for some seed"
    with pytest.raises(OutputParserException, match="max_new_tokens"):
        plain.invoke("x", seed=cut[0], max_new_tokens=12)
    with pytest.raises(OutputParserException, match="max_new_tokens"):
        SteerJsonParser().parse_result([_cut_generation()])


def _cut_generation():
    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration

    msg = AIMessage(content='{"a": "abc', response_metadata={"finish_reason": "length"})
    return ChatGeneration(message=msg)


def test_typeddict_and_dict_schema(chat):
    flags = chat.with_structured_output(Flags).invoke("x", seed=2)
    assert isinstance(flags, dict) and set(flags) == {"label", "ok"} and isinstance(flags["ok"], bool)
    rating = chat.with_structured_output(SCHEMA).invoke("x", seed=3)
    assert isinstance(rating["score"], int) and 0 <= rating["score"] <= 9 and len(rating["tags"]) <= 2


def test_json_mode(chat):
    """Any JSON object: a random model may not close it within the budget, but never breaks it."""
    for seed in range(3):
        out = chat.with_structured_output(method="json_mode", include_raw=True).invoke("x", seed=seed)
        assert out["raw"].content.startswith("{")
        if out["raw"].response_metadata["finish_reason"] == "stop":
            assert isinstance(out["parsed"], dict)
        else:
            assert out["parsed"] is None


def test_stream_and_async(chat):
    structured = chat.with_structured_output(Question)
    chunks = list(structured.stream("x", seed=5))
    assert chunks and all(isinstance(c, Question) for c in chunks)
    assert chunks[-1] == structured.invoke("x", seed=5)

    async def run():
        one = await structured.ainvoke("x", seed=6)
        many = await structured.abatch(["a", "b", "c"], seed=6)
        streamed = [c async for c in structured.astream("x", seed=6)]
        return one, many, streamed

    one, many, streamed = asyncio.run(run())
    assert isinstance(one, Question) and all(isinstance(q, Question) for q in many)
    assert streamed and isinstance(streamed[-1], Question)


def test_bad_method_and_schema(chat):
    with pytest.raises(ValueError, match="method must be one of"):
        chat.with_structured_output(Question, method="tools")
    for method in ("json_schema", "function_calling"):
        with pytest.raises(ValueError, match="json_mode"):
            chat.with_structured_output(None, method=method)


def test_function_calling_and_strict_decode_as_json_schema(chat):
    """STEER has no tool calls; "function_calling" (any `strict`) decodes the arguments' JSON directly."""
    expected = chat.with_structured_output(Question).invoke("Write one.", seed=1)
    for strict in (None, False, True):
        structured = chat.with_structured_output(Question, method="function_calling", strict=strict)
        assert structured.invoke("Write one.", seed=1) == expected


class Short(pydantic_v1.BaseModel):
    """A pydantic.v1 model (LangChain still accepts them)."""

    code: str = pydantic_v1.Field(max_length=3)
    n: int = pydantic_v1.Field(ge=0, le=9)


class Note(TypedDict):
    """LangChain's TypedDict convention: Annotated[type, default, description]; a default makes a key optional."""

    n: Annotated[int, ..., "a count"]
    flag: Annotated[bool, False, "optional"]


def test_pydantic_v1_langchain_typeddict_and_tool_dicts(chat):
    assert isinstance(chat.with_structured_output(Short).invoke("x", seed=0), Short)
    note = chat.with_structured_output(Note).invoke("x", seed=0)
    assert isinstance(note["n"], int) and set(note) <= {"n", "flag"}
    params = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    openai_tool = {"type": "function", "function": {"name": "count", "parameters": params}}
    anthropic_tool = {"name": "count", "description": "A count.", "input_schema": params}
    for tool in (openai_tool, anthropic_tool):
        assert set(chat.with_structured_output(tool).invoke("x", seed=0)) == {"n"}


def test_steer_llm_schema_option(tiny_engine):
    llm = SteerLLM(engine=tiny_engine, max_new_tokens=80, add_to_pool=False, seed=0)
    chain = llm.bind(schema=Question) | SteerJsonParser(target=Question)
    assert all(isinstance(q, Question) for q in chain.batch(["a", "b", "c"]))
    built = SteerLLM(engine=tiny_engine, max_new_tokens=80, constraint=Question, seed=1)
    assert isinstance(SteerJsonParser(target=Question).invoke(built.invoke("x")), Question)
    assert built._identifying_params["constraint"] != llm._identifying_params.get("constraint")
    assert isinstance(structured_output(llm, Question).invoke("x"), Question)
