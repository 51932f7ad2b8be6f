"""FieldByFieldAdapter: programs with several output fields parse on tiny models that emit random bytes."""

from __future__ import annotations

import asyncio

import dspy
import pytest
from dspy.streaming import StreamListener, StreamResponse
from dspy_steer import FieldByFieldAdapter


def test_predict_with_two_output_fields_parses(lm, adapter):
    with dspy.context(lm=lm, adapter=adapter):
        for topic in ("stars", "tides"):
            pred = dspy.Predict("topic -> question, answer")(topic=topic)
            assert isinstance(pred.question, str) and isinstance(pred.answer, str)
            assert pred.question and pred.answer
    # the LM generated values only: the adapter wrote the headers as the assistant turn's prefill
    last = lm.history[-1]["messages"]
    assert last[-1]["role"] == "assistant" and last[-1]["content"].endswith("[[ ## answer ## ]]\n")
    assert "[[ ## question ## ]]\n" in last[-1]["content"]


def test_chain_of_thought_with_two_output_fields_parses(lm, adapter):
    with dspy.context(lm=lm, adapter=adapter):
        pred = dspy.ChainOfThought("topic -> question, answer")(topic="volcanoes")
    assert all(isinstance(pred[k], str) and pred[k] for k in ("reasoning", "question", "answer"))


def test_plain_chat_adapter_layout_too_big_for_the_budget_is_refused(lm):
    """Since structured output (issue 11) the engine holds DSPy's own ChatAdapter layout, so a
    random model no longer breaks it (tests/integrations/dspy/test_dspy_structured.py); a budget
    too small for the layout's headers is refused up front, naming `max_new_tokens`."""
    with dspy.context(lm=lm), pytest.raises(Exception, match="max_new_tokens"):
        dspy.Predict("topic -> question, answer")(topic="stars")


def test_stops_end_each_value(tiny_engine, adapter):
    from dspy_steer import steer_lm
    from test_dspy_lm import recording

    calls = recording(tiny_engine)
    lm = steer_lm(engine=tiny_engine, cache=False, max_new_tokens=6, add_to_pool=False, stop=["END"])
    with dspy.context(lm=lm, adapter=adapter):
        dspy.Predict("topic -> question, answer")(topic="x")
    assert len(calls) >= 2
    assert all(set(c["stop"]) >= {"END", "[[", "\n\n"} for c in calls)


def test_n_candidates(lm, adapter):
    lm = lm.copy(seed=None)
    with dspy.context(lm=lm, adapter=adapter):
        pred = dspy.Predict("topic -> question, answer", n=2)(topic="x")
    assert len(pred.completions.question) == 2 and len(pred.completions.answer) == 2


async def test_acall(lm, adapter):
    with dspy.context(lm=lm, adapter=adapter):
        pred = await dspy.Predict("topic -> question, answer").acall(topic="stars")
        sync = dspy.Predict("topic -> question, answer")(topic="stars")
    assert pred.question and pred.answer
    assert (pred.question, pred.answer) == (sync.question, sync.answer)  # same seed, same engine rows


async def test_streamify_streams_field_text(lm, adapter):
    predict = dspy.Predict("topic -> question, answer")
    program = dspy.streamify(
        predict,
        stream_listeners=[
            StreamListener(signature_field_name="question"),
            StreamListener(signature_field_name="answer"),
        ],
    )
    chunks: dict[str, list[str]] = {"question": [], "answer": []}
    final = None
    with dspy.context(lm=lm, adapter=adapter):
        async for value in program(topic="stars"):
            if isinstance(value, StreamResponse):
                chunks[value.signature_field_name].append(value.chunk)
            elif isinstance(value, dspy.Prediction):
                final = value
    assert final is not None
    for field in ("question", "answer"):
        assert len(chunks[field]) >= 1
        # ChatAdapter.parse splits lines with str.splitlines (random bytes include \x1c etc.)
        assert "\n".join("".join(chunks[field]).strip().splitlines()) == final[field]
        assert "[[" not in "".join(chunks[field])


def test_sync_streamify(lm, adapter):
    program = dspy.streamify(
        dspy.Predict("topic -> question, answer"),
        stream_listeners=[StreamListener(signature_field_name="answer")],
        async_streaming=False,
    )
    with dspy.context(lm=lm, adapter=adapter):
        values = list(program(topic="stars"))
    text = "".join(v.chunk for v in values if isinstance(v, StreamResponse))
    assert "\n".join(text.strip().splitlines()) == values[-1].answer


def test_bad_field_stops():
    with pytest.raises(ValueError, match="field_stops"):
        FieldByFieldAdapter(field_stops=("",))


def test_asyncio_gather_of_predictions(lm, adapter):
    async def main():
        with dspy.context(lm=lm, adapter=adapter):
            p = dspy.Predict("topic -> question, answer")
            return await asyncio.gather(*(p.acall(topic=t) for t in ("a", "b", "c")))

    preds = asyncio.run(main())
    assert all(p.question and p.answer for p in preds)
