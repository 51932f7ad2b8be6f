"""Typed DSPy outputs parse every time under DSPy's default adapter, on the tiny random models."""

from __future__ import annotations

import contextlib
from typing import Literal

import dspy
import pydantic
import pytest
from dspy_steer import FieldByFieldAdapter, steer_lm
from dspy_steer.structured import chat_layout, field_spec, layout_grammar


class Item(pydantic.BaseModel):
    name: str
    count: int


class Rated(dspy.Signature):
    """Rate the topic."""

    topic: str = dspy.InputField()
    level: Literal["easy", "medium", "hard"] = dspy.OutputField()
    item: Item = dspy.OutputField()
    score: float = dspy.OutputField()


@pytest.fixture
def typed_lm(tiny_engine):
    return steer_lm(engine=tiny_engine, add_to_pool=False, max_new_tokens=96, cache=False)


@pytest.fixture
def use():
    """`use(lm=..., adapter=...)`: DSPy settings for the rest of the test (inside the hermetic ones)."""
    with contextlib.ExitStack() as stack:
        yield lambda **settings: stack.enter_context(dspy.context(**settings))


def _no_fallback(lm):
    """Every call answered in ChatAdapter's layout (no JSONAdapter retry)."""
    return all(str(h["outputs"][0]).startswith("[[ ## ") for h in lm.history)


def test_predict_typed_no_adapter(typed_lm, use):
    use(lm=typed_lm)  # no adapter: DSPy's default ChatAdapter
    predict = dspy.Predict("topic -> question: str, difficulty: int, is_open: bool")
    for i in range(6):
        pred = predict(topic=f"comets {i}")
        assert isinstance(pred.question, str) and pred.question
        assert isinstance(pred.difficulty, int) and isinstance(pred.is_open, bool)
    assert _no_fallback(typed_lm)


def test_chain_of_thought_list(typed_lm, use):
    use(lm=typed_lm)
    cot = dspy.ChainOfThought("topic -> tags: list[str]")
    for i in range(4):
        pred = cot(topic=f"pulsars {i}")
        assert isinstance(pred.reasoning, str)
        assert isinstance(pred.tags, list) and all(isinstance(t, str) for t in pred.tags)
    assert _no_fallback(typed_lm)


def test_literal_pydantic_float(tiny_engine, use):
    use(lm=steer_lm(engine=tiny_engine, add_to_pool=False, max_new_tokens=200, cache=False))
    for i in range(4):
        pred = dspy.Predict(Rated)(topic=f"quasars {i}")
        assert pred.level in ("easy", "medium", "hard")
        assert isinstance(pred.item, Item) and isinstance(pred.score, float)


def test_async_and_small_budget(tiny_engine, use):
    lm = steer_lm(engine=tiny_engine, add_to_pool=False, max_new_tokens=120, cache=False)
    use(lm=lm)
    predict = dspy.Predict("topic -> question: str, difficulty: int, tags: list[str]")
    for i in range(3):
        pred = predict(topic=f"nebulae {i}")
        assert isinstance(pred.difficulty, int) and isinstance(pred.tags, list)
    import asyncio

    pred = asyncio.run(predict.acall(topic="meteors"))
    assert isinstance(pred.difficulty, int)
    with pytest.raises(Exception, match="max_new_tokens"):
        predict(topic="tides", config={"max_tokens": 30})


def test_json_adapter_response_format(typed_lm, use):
    use(lm=typed_lm, adapter=dspy.JSONAdapter())
    predict = dspy.Predict("topic -> difficulty: int, is_open: bool, level: Literal['a', 'b']")
    for i in range(3):
        pred = predict(topic=f"galaxies {i}")
        assert isinstance(pred.difficulty, int) and isinstance(pred.is_open, bool) and pred.level in "ab"
    assert "response_format" in str(typed_lm.history[-1]["kwargs"]) or typed_lm.history


def test_field_by_field_values_typed(typed_lm, use):
    use(lm=typed_lm, adapter=FieldByFieldAdapter())
    predict = dspy.Predict("topic -> difficulty: int, is_open: bool")
    for i in range(3):
        pred = predict(topic=f"black holes {i}")
        assert isinstance(pred.difficulty, int) and isinstance(pred.is_open, bool)


def test_layout_reading():
    adapter = dspy.ChatAdapter()
    sig = dspy.Signature("topic -> question: str, difficulty: int, tags: list[str], ok: bool")
    system, user = (m["content"] for m in adapter.format(sig, [], {"topic": "x"}))
    fields = chat_layout(system, user)
    assert [(f.name, f.kind) for f in fields] == [
        ("question", "text"),
        ("difficulty", "int"),
        ("tags", "json"),
        ("ok", "bool"),
    ]
    assert field_spec("x", "must exactly match (no extra characters) one of: a; b").choices == ("a", "b")
    assert chat_layout("plain system prompt", user) is None


def test_text_value_ends_at_one_newline(tiny_tok):
    """A text value is one line; after its newline the grammar allows only the next header (with one
    or two newlines before it), so a model that writes one newline is not trapped in the value."""
    import torch

    from steer_plugins.core.grammar import compile_grammar

    fields = [field_spec("question", None), field_spec("difficulty", "must be a single int value")]
    grammar = compile_grammar({"lark": layout_grammar(fields, 160)})

    def walk(text: str):
        """(allowed next strings, finished) after `text`; None when a token of `text` is refused."""
        constraint = grammar.start(tiny_tok, [tiny_tok.eos_token_id], 160)
        for t in tiny_tok(text, add_special_tokens=False)["input_ids"]:
            if not constraint.allowed_mask(len(tiny_tok), torch.device("cpu"))[t]:
                return None
            constraint.advance(t)
        mask = constraint.allowed_mask(len(tiny_tok), torch.device("cpu"))
        return [tiny_tok.decode([i]) for i in torch.nonzero(mask).flatten().tolist()], constraint.is_finished

    after_newline, _ = walk("[[ ## question ## ]]\nWhy do stars die?\n")
    assert after_newline and all(s[0] in "\n[" for s in after_newline), after_newline
    for sep in ("\n", "\n\n"):
        reply = f"[[ ## question ## ]]\nWhy?{sep}[[ ## difficulty ## ]]\n3{sep}[[ ## completed ## ]]"
        assert walk(reply)[1], repr(reply)
        parsed = dspy.ChatAdapter().parse(dspy.Signature("topic -> question: str, difficulty: int"), reply)
        assert parsed == {"question": "Why?", "difficulty": 3}
