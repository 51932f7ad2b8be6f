"""The real offline model (SmolLM2-135M-Instruct): DSPy programs parse with the field-writing adapter."""

from __future__ import annotations

import dspy
import pytest
from dspy_steer import FieldByFieldAdapter, steer_lm

pytestmark = pytest.mark.slow


def test_real_model_predict_and_cot_parse(real_engine):
    real_engine.pool.add(
        ["What is the boiling point of water at sea level?", "Why is the sky blue?"], real=True
    )
    lm = steer_lm(engine=real_engine, cache=False, num_negatives=2, max_new_tokens=32, seed=0)
    with dspy.context(lm=lm, adapter=FieldByFieldAdapter()):
        pred = dspy.Predict("topic -> question, answer")(topic="the moon")
        cot = dspy.ChainOfThought("topic -> question, answer")(topic="volcanoes")
    assert pred.question and pred.answer and cot.reasoning and cot.question and cot.answer
