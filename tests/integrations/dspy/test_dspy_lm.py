"""The STEER LM through real dspy.LM calls: settings, usage, n, cache keys, per-call options, errors."""

from __future__ import annotations

import dspy
import pytest
from dspy.lm15 import Message, Request
from dspy.utils.exceptions import LMInvalidRequestError, LMUnsupportedFeatureError
from dspy_steer import AsyncSteerDSPyEngine, SteerDSPyEngine, steer_call_config, steer_lm, steer_options


def recording(engine):
    """Wrap engine.generate/stream/agenerate to record what the integration passed down (outputs stay real)."""
    calls = []
    for name in ("generate", "stream", "agenerate", "astream"):
        real = getattr(engine, name)

        def wrapper(prompts, negatives=None, *a, _real=real, _name=name, **kw):
            calls.append({"method": _name, "prompts": list(prompts), **as_keywords(negatives, kw)})
            return _real(prompts, negatives, *a, **kw)

        setattr(engine, name, wrapper)
    return calls


def as_keywords(negatives, kw):
    """A call's settings as keywords: `options=` (a CallOptions) spelled out as its config fields,
    `negatives` (lists) and `add_to_pool`."""
    opts = kw.get("options")
    if opts is None:
        return {"negatives": negatives, **kw}
    negatives = None if opts.negatives is None else [list(n) for n in opts.negatives]
    return {**opts.config.model_dump(), "negatives": negatives, "add_to_pool": opts.add_to_pool}


def test_steer_lm_is_a_dspy_lm_with_custom_engines(lm):
    assert isinstance(lm, dspy.LM)
    assert isinstance(lm.engine, SteerDSPyEngine)
    assert isinstance(lm._async_engine_spec, AsyncSteerDSPyEngine)
    assert lm.model.startswith("steer/") and lm.model == lm.engine.model
    out = lm("Write a question:")
    assert isinstance(out, list) and len(out) == 1 and isinstance(out[0], str)


def test_request_settings_reach_the_engine(tiny_engine):
    calls = recording(tiny_engine)
    lm = steer_lm(engine=tiny_engine, cache=False, gamma=0.5)
    lm("Hi there", temperature=0.0, max_tokens=5, top_p=0.9, stop=["zz"], seed=11)
    call = calls[-1]
    assert call["temperature"] == 0.0 and call["max_new_tokens"] == 5 and call["top_p"] == 0.9
    assert call["seed"] == 11 and call["stop"] == ["zz"] and call["gamma"] == 0.5
    # the prompt went through the chat template, the text is not echoed back
    assert call["prompts"][0] == tiny_engine.apply_chat_template([{"role": "user", "content": "Hi there"}])


def test_messages_render_through_the_chat_template(tiny_engine):
    calls = recording(tiny_engine)
    lm = steer_lm(engine=tiny_engine, cache=False)
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
    ]
    lm(
        Request(
            model=lm.model,
            system="Be brief.",
            messages=(Message.user("Q1"), Message.assistant("A1"), Message.user("Q2")),
        )
    )
    assert calls[-1]["prompts"][0] == tiny_engine.apply_chat_template(msgs)


def test_a_trailing_assistant_turn_is_continued(tiny_engine):
    calls = recording(tiny_engine)
    lm = steer_lm(engine=tiny_engine, cache=False)
    lm(Request(model=lm.model, messages=(Message.user("Q"), Message.assistant("[[ ## answer ## ]]\n"))))
    head = tiny_engine.apply_chat_template([{"role": "user", "content": "Q"}])
    assert calls[-1]["prompts"][0] == head + "[[ ## answer ## ]]\n"


def test_usage_is_tracked(lm, adapter):
    with dspy.context(track_usage=True, lm=lm, adapter=adapter):
        pred = dspy.Predict("topic -> question")(topic="stars")
    usage = pred.get_lm_usage()[lm.model]
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_n_fans_out(tiny_engine):
    lm = steer_lm(engine=tiny_engine, cache=False, max_new_tokens=8, add_to_pool=False)
    outs = lm("Write:", n=3)
    assert len(outs) == 3 and all(isinstance(o, str) for o in outs)


def test_seed_makes_calls_reproducible(lm):
    assert lm("Write:", seed=5) == lm("Write:", seed=5)


def test_model_string_hashes_every_output_changing_setting(tiny_engine):
    base = steer_lm(engine=tiny_engine).model
    assert steer_lm(engine=tiny_engine).model == base
    for change in (
        {"gamma": 0.9},
        {"eta": 0.1},
        {"num_negatives": 2},
        {"max_new_tokens": 5},
        {"temperature": 0.0},
        {"form": "cfg"},
        {"stop": ["x"]},
    ):
        assert steer_lm(engine=tiny_engine, **change).model != base, change
    assert steer_lm(engine=tiny_engine, add_to_pool=False).model != base


def test_two_configurations_do_not_share_cache_entries(tiny_engine):
    calls = recording(tiny_engine)
    # seeded and with the pool left as it is: reproducible calls, so DSPy's cache applies
    a = steer_lm(engine=tiny_engine, gamma=0.0, seed=1, max_new_tokens=6, add_to_pool=False)
    b = steer_lm(engine=tiny_engine, gamma=1.0, seed=1, max_new_tokens=6, add_to_pool=False)
    a("Same prompt")
    a("Same prompt")  # cache hit: no engine call
    assert len(calls) == 1
    b("Same prompt")  # another configuration: must reach the engine
    assert len(calls) == 2 and calls[-1]["gamma"] == 1.0
    # per-call STEER options are part of the key too
    a("Same prompt", **steer_call_config(eta=0.0))
    assert len(calls) == 3


def test_per_call_negatives_and_overrides(tiny_engine, adapter):
    calls = recording(tiny_engine)
    lm = steer_lm(engine=tiny_engine, cache=False)
    lm("Write:", **steer_call_config(negatives=["no repeats", "other"], gamma=0.7, add_to_pool=False))
    call = calls[-1]
    assert call["negatives"] == [["no repeats", "other"]] and call["gamma"] == 0.7
    assert call["add_to_pool"] is False
    with dspy.context(lm=lm, adapter=adapter), steer_options(negatives=["ctx negative"], eta=0.9):
        dspy.Predict("topic -> question")(topic="x")
    assert calls[-1]["negatives"] == [["ctx negative"]] and calls[-1]["eta"] == 0.9


def test_pool_from_real_examples_grows_with_outputs(tiny_tok):
    from steer_plugins.testing import tiny_model

    lm = steer_lm(
        tiny_model("llama", tiny_tok, seed=1),
        tiny_model("llama", tiny_tok, seed=2),
        engine_kwargs={"tokenizer": tiny_tok},
        pool=["real one", "real two", "real three"],
        num_negatives=2,
        max_new_tokens=4,
        cache=False,
    )
    pool = lm.engine.engine.pool
    assert pool.num_real == 3 and len(pool) == 3
    lm("Write:")
    assert len(pool) == 4  # the output was appended (the paper's behaviour)


async def test_lm_acall_uses_the_async_engine(tiny_engine):
    calls = recording(tiny_engine)
    lm = steer_lm(engine=tiny_engine, cache=False, seed=3, max_new_tokens=6, add_to_pool=False)
    out = await lm.acall("Write a question:")
    assert len(out) == 1 and isinstance(out[0], str)
    assert calls[-1]["method"] == "agenerate"
    assert out == lm("Write a question:")  # same seed, same text on the sync path


def test_unknown_config_field_is_a_clear_error(tiny_engine):
    with pytest.raises(ValueError, match="unknown STEER setting.*gammma"):
        steer_lm(engine=tiny_engine, gammma=0.3)
    with pytest.raises(ValueError, match="engine_kwargs"):
        steer_lm("smollm2-135m-instruct", device="cpu")
    with pytest.raises(ValueError, match="gamma"):
        steer_lm(engine=tiny_engine, gamma=-1)
    with pytest.raises(ValueError, match="unknown STEER setting"):
        steer_call_config(bogus=1)


def test_bad_per_call_option_is_an_lm_error(lm):
    with pytest.raises(LMInvalidRequestError, match="unknown per-call STEER option"):
        lm("x", metadata={"steer": {"bogus": 1}})
    with pytest.raises(LMInvalidRequestError, match="temperature"):
        lm("x", metadata={"steer": {"temperature": -3}})
    with pytest.raises(LMInvalidRequestError, match="negatives"):
        lm("x", metadata={"steer": {"negatives": "not a list"}})


def test_tools_are_refused_with_dspy_error(lm):
    tools = [
        {
            "type": "function",
            "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
        }
    ]
    with pytest.raises(LMUnsupportedFeatureError, match="tool calling"):
        lm("x", tools=tools)


def test_images_are_refused_with_dspy_error(lm):
    content = [
        {"type": "text", "text": "describe"},
        {"type": "image_url", "image_url": {"url": "https://e.x/a.png"}},
    ]
    with pytest.warns(DeprecationWarning), pytest.raises(LMUnsupportedFeatureError, match="text only"):
        lm(messages=[{"role": "user", "content": content}])
    sig = dspy.Signature("image: dspy.Image -> caption")
    with dspy.context(lm=lm), pytest.raises(LMUnsupportedFeatureError, match="text only"):
        dspy.Predict(sig)(image=dspy.Image("https://e.x/a.png"))


def test_non_string_content_is_refused(lm):
    with pytest.warns(DeprecationWarning), pytest.raises(TypeError, match="content"):
        lm(messages=[{"role": "user", "content": 5}])


def test_a_hand_written_model_string_is_refused(lm):
    wrong = dspy.LM("steer/any", engine=lm.engine, cache=False)
    with pytest.raises(dspy.utils.exceptions.LMConfigurationError, match="steer_lm"):
        wrong("x")
