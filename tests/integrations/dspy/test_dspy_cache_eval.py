"""DSPy's response cache and evaluation runs against the negative pool, through real dspy calls."""

from __future__ import annotations

import dspy
import pytest
from dspy_steer import SteerLM, evaluation_mode, steer_lm, steer_options

NEG = ["Is a comet icy?"]


@pytest.fixture
def engine_calls(tiny_engine, monkeypatch):
    """The CallOptions of every engine call (outputs stay real)."""
    seen = []
    for name in ("generate", "agenerate"):
        real = getattr(tiny_engine, name)

        def wrapper(prompts, *a, _real=real, **kw):
            seen.append(kw.get("options"))
            return _real(prompts, *a, **kw)

        monkeypatch.setattr(tiny_engine, name, wrapper)
    return seen


def test_default_cache_gives_new_samples_for_identical_unseeded_calls(tiny_engine, engine_calls):
    lm = steer_lm(engine=tiny_engine, max_new_tokens=8)  # DSPy's default cache=True
    assert isinstance(lm, SteerLM) and lm.cache is True
    before = len(tiny_engine.pool)
    outs = [lm("Write a question:")[0] for _ in range(4)]
    assert len(engine_calls) == 4 and len(set(outs)) == 4
    assert len(tiny_engine.pool) == before + 4  # each output joined the pool
    assert lm("Write a question:", cache=True)[0] == lm("Write a question:", cache=True)[0]  # opted in
    assert len(engine_calls) == 5


def test_seeded_calls_hit_while_the_pool_is_unchanged(tiny_engine, engine_calls):
    fixed = steer_lm(engine=tiny_engine, max_new_tokens=8, seed=4)
    with steer_options(fixed, negatives=NEG) as lm:
        a = lm("Write a question:")[0]
        assert lm("Write a question:")[0] == a and len(engine_calls) == 1  # fixed seed and negatives
    grows = steer_lm(engine=tiny_engine, max_new_tokens=8, seed=4)  # draws from the pool, grows it
    grows("Write a question:")
    grows("Write a question:")
    assert len(engine_calls) == 3  # the pool grew in between: a new call, not a stale answer
    frozen = steer_lm(engine=tiny_engine, max_new_tokens=8, seed=4, add_to_pool=False)
    b = frozen("Write a question:")[0]
    assert frozen("Write a question:")[0] == b and len(engine_calls) == 4
    tiny_engine.pool.add(["A new real example?"], real=True)
    frozen("Write a question:")
    assert len(engine_calls) == 5  # the pool changed: miss


def test_unseeded_predict_calls_through_the_adapter_are_distinct(tiny_engine, adapter, engine_calls):
    lm = steer_lm(engine=tiny_engine, max_new_tokens=8)
    predict = dspy.Predict("topic -> question")
    with dspy.context(lm=lm, adapter=adapter):
        questions = [predict(topic="stars").question for _ in range(4)]
    assert len(engine_calls) >= 4 and len(set(questions)) == 4


def _qa_devset():
    pairs = [("Name a planet.", "Mars"), ("Name a star.", "Sun"), ("Name a moon.", "Io")]
    return [dspy.Example(question=q, answer=a).with_inputs("question") for q, a in pairs]


def _program(lm):
    program = dspy.Predict("question -> answer")
    program.set_lm(lm)  # a predictor with its own LM: context LMs do not reach it, the mode must
    return program


def _answered(example, pred, trace=None) -> bool:
    return isinstance(pred.answer, str)


@pytest.mark.parametrize("threads", [1, 2])
def test_evaluate_in_evaluation_mode_leaves_the_pool_alone(tiny_engine, adapter, engine_calls, threads):
    lm = steer_lm(engine=tiny_engine, max_new_tokens=6)  # default: the pool grows (generation mode)
    program = _program(lm)
    evaluate = dspy.Evaluate(devset=_qa_devset(), metric=_answered, num_threads=threads)
    before = len(tiny_engine.pool)
    with dspy.context(adapter=adapter), evaluation_mode():
        result = evaluate(program)
    assert result.score == 100.0 and len(engine_calls) >= 3
    assert len(tiny_engine.pool) == before  # frozen: no answer was pushed away from another
    assert all(o.add_to_pool is False and o.config.eta == tiny_engine.config.eta for o in engine_calls)
    with dspy.context(adapter=adapter):
        evaluate(program)
    assert len(tiny_engine.pool) > before  # outside the mode the pool grows, as the paper does


def test_frozen_with_eta_zero_turns_negatives_off(tiny_engine, adapter, engine_calls):
    lm = steer_lm(engine=tiny_engine, max_new_tokens=6, seed=2)
    program = _program(lm)
    with dspy.context(adapter=adapter), lm.frozen(eta=0.0):
        dspy.Evaluate(devset=_qa_devset(), metric=_answered, num_threads=2)(program)
    assert engine_calls and all(o.config.eta == 0.0 and o.add_to_pool is False for o in engine_calls)
    with pytest.raises(ValueError, match="eta"), evaluation_mode(eta=-1.0):
        pass


def test_seeded_evaluation_is_cached_across_runs(tiny_engine, adapter, engine_calls):
    """An optimizer re-scoring the same program in evaluation mode reuses DSPy's cache."""
    program = _program(steer_lm(engine=tiny_engine, max_new_tokens=6, seed=1))
    evaluate = dspy.Evaluate(devset=_qa_devset(), metric=_answered, num_threads=1)
    with dspy.context(adapter=adapter), evaluation_mode():
        evaluate(program)
        n = len(engine_calls)
        evaluate(program)
    assert n >= 3 and len(engine_calls) == n
