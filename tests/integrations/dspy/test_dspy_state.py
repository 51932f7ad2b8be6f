"""Saving and loading a program keeps its STEER LM and settings."""

from __future__ import annotations

import dspy
import pytest
from dspy_steer import SteerDSPyEngine, steer_lm


def test_save_and_load_a_program(tiny_engine, adapter, tmp_path):
    lm = steer_lm(
        engine=tiny_engine,
        name="tiny-llama-pair",
        add_to_pool=False,
        gamma=0.4,
        eta=0.3,
        num_negatives=2,
        max_new_tokens=6,
        seed=9,
        cache=False,
    )
    program = dspy.Predict("topic -> question, answer")
    program.set_lm(lm)
    with dspy.context(adapter=adapter):
        before = program(topic="stars")
    path = tmp_path / "program.json"
    program.save(str(path))

    loaded = dspy.Predict("topic -> question, answer")
    loaded.load(str(path), allow_unsafe_lm_state=True)
    new_lm = loaded.get_lm()
    assert isinstance(new_lm.engine, SteerDSPyEngine) and new_lm.engine is not lm.engine
    assert new_lm.model == lm.model
    assert new_lm.engine.resolved == lm.engine.resolved  # every STEER setting survived
    assert new_lm.engine.engine is tiny_engine  # found in the registry by name, not reloaded
    with dspy.context(adapter=adapter):
        after = loaded(topic="stars")
    assert (after.question, after.answer) == (before.question, before.answer)


def test_loading_refuses_untrusted_state_and_unknown_engines(tiny_engine, tmp_path):
    lm = steer_lm(engine=tiny_engine, name="tiny-for-refusal", cache=False)
    program = dspy.Predict("topic -> question")
    program.set_lm(lm)
    path = tmp_path / "p.json"
    program.save(str(path))
    with pytest.raises(ValueError, match="allow_unsafe_lm_state"):
        dspy.Predict("topic -> question").load(str(path))
    state = lm.engine.dump_state()
    state["engine_name"], state["name"] = "never-registered", "never-registered"
    with pytest.raises(ValueError, match="register_engine"):
        SteerDSPyEngine.load_state(state)
