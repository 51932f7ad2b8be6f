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


def test_save_program_pickles_the_lm_without_weights_or_locks(tiny_engine, tmp_path):
    lm = steer_lm(engine=tiny_engine, name="tiny-pickled", add_to_pool=False, seed=3, max_new_tokens=6)
    cot = dspy.ChainOfThought("question -> answer")
    cot.set_lm(lm)
    cot.save(str(tmp_path / "prog"), save_program=True)  # cloudpickle of the whole program
    loaded = dspy.load(str(tmp_path / "prog"), allow_pickle=True)
    new_lm = loaded.predict.lm
    assert new_lm.model == lm.model and new_lm.engine.engine is tiny_engine  # found by name, not copied
    assert new_lm.engine.resolved == lm.engine.resolved


def _saved_with_source(tiny_folders, **source):
    state = steer_lm(tiny_folders[0], tiny_folders[1], cache=False).engine.dump_state()
    state["engine_name"] = state["name"] = "not-registered-anywhere"
    state["model"] = None
    state["source"] = {"expert": tiny_folders[0], "base": tiny_folders[1], **source}
    return state


def test_loading_never_runs_remote_code_and_refuses_unknown_source_keys(tiny_folders, monkeypatch):
    import dspy_steer.engine as engine_module

    remote = _saved_with_source(tiny_folders, trust_remote_code=True)
    unknown = _saved_with_source(tiny_folders, revision="x", attn_implementation="eager")
    ill_typed = _saved_with_source(tiny_folders, max_batch_size="8")
    not_a_dict = {**_saved_with_source(tiny_folders), "source": "rm -rf"}
    fine = _saved_with_source(tiny_folders, max_batch_size=4, dtype="float32", trust_remote_code=False)
    built = []

    class Spy(engine_module.SteerEngine):
        def __init__(self, *args, **kwargs):
            built.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(engine_module, "SteerEngine", Spy)
    with pytest.raises(ValueError, match="trust_remote_code"):
        SteerDSPyEngine.load_state(remote)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['attn_implementation', 'revision'\]"):
        SteerDSPyEngine.load_state(unknown)
    with pytest.raises(ValueError, match="max_batch_size"):
        SteerDSPyEngine.load_state(ill_typed)
    with pytest.raises(ValueError, match="`source` must be a dict"):
        SteerDSPyEngine.load_state(not_a_dict)
    assert built == []  # refused before anything was loaded
    ok = SteerDSPyEngine.load_state(fine)
    assert built[0]["trust_remote_code"] is False and ok.engine.max_batch_size == 4
    ok.engine.close()


def test_remote_code_state_loads_only_from_an_engine_the_user_registered(tiny_folders):
    from dspy_steer import register_engine

    from steer_plugins import SteerEngine

    recorded = steer_lm(tiny_folders[0], engine_kwargs={"trust_remote_code": False}, cache=False)
    assert recorded.engine.dump_state()["source"]["trust_remote_code"] is False  # a True would be refused
    recorded.engine.engine.close()
    state = {
        **_saved_with_source(tiny_folders, trust_remote_code=True),
        "engine_name": "pair-with-remote-code",
    }
    with pytest.raises(ValueError, match="register_engine"):
        SteerDSPyEngine.load_state(state)
    mine = SteerEngine(tiny_folders[0], tiny_folders[1])  # built by the user, who read the code
    register_engine(mine, "pair-with-remote-code")
    assert SteerDSPyEngine.load_state(state).engine is mine
    mine.close()
