"""What LangChain and HuggingFacePipeline users write, on SteerLLM / ChatSteer over the tiny pair:
standard parameters, LangSmith fields, HuggingFacePipeline's arguments, pickling, token counts,
timeouts."""

from __future__ import annotations

import asyncio
import copy
import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_steer import ChatSteer, SteerLLM

MESSAGES = [SystemMessage("You write short questions."), HumanMessage("One about comets.")]
MISSING = "no-such-org/no-such-model"  # loading it would fail: errors naming arguments prove nothing loaded


class Tokens(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token, **kwargs) -> None:
        self.tokens.append(token)


# ---------------------------------------------------------------------- standard parameters
def test_standard_parameters_are_accepted_and_mean_what_they_say(tiny_engine):
    chat = ChatSteer(engine=tiny_engine, max_tokens=100, timeout=60, max_retries=2, stop=[], temperature=0)
    assert chat.max_new_tokens == chat.max_tokens == 100 and chat.temperature == 0.0
    assert chat.timeout == 60 and chat.max_retries == 2 and chat.stop == []
    msg = chat.bind(max_tokens=3).invoke("Hi")  # LangChain's name per call too
    assert msg.usage_metadata["output_tokens"] <= 3
    llm = SteerLLM(engine=tiny_engine, max_tokens=4)
    assert llm.max_new_tokens == 4
    assert llm.generate(["Hi"], max_tokens=2).generations[0][0].generation_info["completion_tokens"] <= 2
    with pytest.raises(ValueError, match="max_tokens"):
        ChatSteer(engine=tiny_engine, max_tokens=5, max_new_tokens=6)
    with pytest.raises(ValueError, match="alias"):
        chat.invoke("Hi", max_tokens=5, max_new_tokens=6)


def test_streaming_true_decodes_through_the_stream(tiny_engine, monkeypatch):
    streamed = []
    real = tiny_engine.stream
    monkeypatch.setattr(tiny_engine, "stream", lambda *a, **k: streamed.append(1) or real(*a, **k))
    cb = Tokens()
    msg = ChatSteer(engine=tiny_engine, streaming=True, max_tokens=6).invoke("Hi", config={"callbacks": [cb]})
    assert streamed and "".join(cb.tokens) == msg.content


def test_ls_params_name_the_model_for_both_classes(tiny_engine):
    chat = ChatSteer(engine=tiny_engine, max_tokens=10, stop=["?"], temperature=0.5)
    ls = chat._get_ls_params()
    assert ls["ls_provider"] == "steer" and ls["ls_model_type"] == "chat"
    assert ls["ls_model_name"] == tiny_engine.name and ls["ls_max_tokens"] == 10
    assert ls["ls_temperature"] == 0.5 and ls["ls_stop"] == ["?"]
    assert chat._get_ls_params(stop=["!"])["ls_stop"] == ["?", "!"]
    assert chat._get_ls_params(model="other")["ls_model_name"] == "other"
    llm_ls = SteerLLM(engine=tiny_engine)._get_ls_params()
    assert llm_ls["ls_model_name"] == tiny_engine.name and llm_ls["ls_model_type"] == "llm"


# ---------------------------------------------------------------------- HuggingFacePipeline's arguments
def test_from_model_id_maps_pipeline_arguments_onto_the_engine(tiny_folders):
    expert, base = tiny_folders
    llm = SteerLLM.from_model_id(
        expert,
        task="text-generation",
        device=-1,
        batch_size=4,
        model_kwargs={"torch_dtype": "float32", "trust_remote_code": False},
        pipeline_kwargs={"max_new_tokens": 5, "do_sample": False},
        base_model_id=base,
        eta=0.0,
    )
    try:
        assert llm.engine.device.type == "cpu" and llm.engine.max_batch_size == 4
        assert llm.max_new_tokens == 5 and llm.temperature == 0.0
        assert next(llm.engine.models.expert.parameters()).dtype == torch.float32
        assert isinstance(llm.invoke("Write:"), str)
    finally:
        llm.engine.close()
    chat = ChatSteer.from_model_id(expert, device_map="cpu", base_model_id=base, eta=0.0)
    try:
        assert chat.engine.device.type == "cpu" and isinstance(chat.invoke("Hi").content, str)
    finally:
        chat.engine.close()


def test_a_ready_pipeline_is_the_expert(tiny_pair_models):
    from transformers import pipeline

    expert, base, tok = tiny_pair_models
    pipe = pipeline("text-generation", model=expert, tokenizer=tok, device="cpu")
    chat = ChatSteer(pipeline=pipe, base=base, eta=0.0, max_tokens=4)
    try:
        assert chat.engine.models.expert is expert and chat.engine.tokenizer is tok
        assert isinstance(chat.invoke("Hi").content, str)
    finally:
        chat.engine.close()
    with pytest.raises(TypeError, match="text-generation pipeline"):
        SteerLLM(pipeline=object())


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"device_map": "auto"}, "device_map='auto'"),
        ({"device_map": {"model.layers.0": 0, "lm_head": 1}}, "several devices"),
        ({"model_kwargs": {"device_map": "balanced"}}, r"model_kwargs\['device_map'\]"),
        ({"device": 0, "device_map": "cpu"}, "not both"),
        ({"model_kwargs": {"load_in_8bit": True, "revision": "main"}}, r"\['load_in_8bit', 'revision'\]"),
        ({"model_kwargs": {"torch_dtype": "float17"}}, "torch_dtype"),
        ({"pipeline_kwargs": {"num_beams": 4}}, r"\['num_beams'\]"),
        ({"pipeline_kwargs": {"return_full_text": True}}, "return_full_text"),
        ({"batch_size": 0}, "batch_size"),
        ({"backend": "openvino"}, "backend='openvino'"),
        ({"task": "summarization"}, "task"),
        ({"device": -2}, "device"),
        ({"verbose_loading": True}, r"unknown argument\(s\) \['verbose_loading'\]"),
    ],
)
def test_unsupported_arguments_are_refused_by_name_before_loading(kwargs, named):
    for cls in (SteerLLM, ChatSteer):
        with pytest.raises(ValueError, match=named):
            cls(model_id=MISSING, **kwargs)  # a load would raise OSError about the missing model instead
    if "verbose_loading" not in kwargs:
        with pytest.raises(ValueError, match=named):
            SteerLLM.from_model_id(MISSING, **kwargs)


# ---------------------------------------------------------------------- token counts
def test_num_tokens_from_messages_counts_the_chat_template(tiny_engine):
    chat = ChatSteer(engine=tiny_engine, max_tokens=2, eta=0.0)
    counted = chat.get_num_tokens_from_messages(MESSAGES)
    sent = chat.invoke(MESSAGES).usage_metadata["input_tokens"]
    assert counted == sent > sum(chat.get_num_tokens(m.content) for m in MESSAGES)
    with pytest.raises(ValueError, match="tool"):
        chat.get_num_tokens_from_messages(MESSAGES, tools=[{"name": "x"}])


# ---------------------------------------------------------------------- pickle / deepcopy
def test_deepcopy_shares_the_engine_and_copies_settings(tiny_engine):
    chat = ChatSteer(engine=tiny_engine, gamma=0.3, negatives=["Is it?"])
    twin = copy.deepcopy(chat)
    assert twin.engine is tiny_engine and twin.gamma == 0.3 and twin.negatives == ["Is it?"]
    assert twin.negatives is not chat.negatives  # settings are copied, the engine shared
    assert chat.model_copy(deep=True).engine is tiny_engine


def test_pickle_in_process_finds_the_same_engine(tiny_engine):
    for model in (SteerLLM(engine=tiny_engine, gamma=0.4), ChatSteer(engine=tiny_engine, seed=2)):
        back = pickle.loads(pickle.dumps(model))
        assert back.engine is tiny_engine and back.steer_config == model.steer_config


_CHILD = textwrap.dedent(
    """
    import pickle, sys
    from steer_plugins import SteerConfig, SteerEngine
    from steer_plugins.testing import tiny_model, tiny_tokenizer
    from langchain_steer import register_engine

    folder_blob, memory_blob = sys.argv[1], sys.argv[2]
    llm = pickle.load(open(folder_blob, "rb"))  # built from folders: loaded again here
    print("folder:" + llm.invoke("Write a question:"))
    try:
        pickle.load(open(memory_blob, "rb"))
    except pickle.UnpicklingError as err:
        print("refused:" + ("register_engine" in str(err)) * "names-the-fix")
    tok = tiny_tokenizer()
    engine = SteerEngine(tiny_model("llama", tok, seed=1), tiny_model("llama", tok, seed=2), tok,
                         config=SteerConfig(max_new_tokens=16, num_negatives=3))
    register_engine(engine)  # held weakly: `engine` keeps it alive
    print("registered:" + pickle.load(open(memory_blob, "rb")).invoke("Write a question:"))
    """
)


def test_pickle_in_another_process(tiny_folders, tiny_engine, tmp_path):
    """Folder-built models load their engine again; in-memory ones need `register_engine` there."""
    settings = {"seed": 5, "negatives": ["Is a comet icy?"], "max_tokens": 6}
    by_folder = SteerLLM(expert=tiny_folders[0], base=tiny_folders[1], **settings)
    in_memory = SteerLLM(engine=tiny_engine, **settings)
    expected_folder, expected_memory = (
        by_folder.invoke("Write a question:"),
        in_memory.invoke("Write a question:"),
    )
    (tmp_path / "f.pkl").write_bytes(pickle.dumps(by_folder))
    (tmp_path / "m.pkl").write_bytes(pickle.dumps(in_memory))
    by_folder.engine.close()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path / "f.pkl"), str(tmp_path / "m.pkl")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert f"folder:{expected_folder}" in lines
    assert "refused:names-the-fix" in lines
    assert f"registered:{expected_memory}" in lines


# ---------------------------------------------------------------------- timeout
def test_timeout_cancels_the_call_and_spares_the_engine(tiny_engine):
    slow = ChatSteer(engine=tiny_engine, timeout=1e-9, max_tokens=200, ignore_eos=True, eta=0.0)
    with pytest.raises(TimeoutError, match="timeout"):
        slow.invoke("Hi")
    with pytest.raises(TimeoutError, match="timeout"):
        list(slow.stream("Hi"))
    with pytest.raises(TimeoutError, match="timeout"):
        asyncio.run(slow.ainvoke("Hi"))
    with pytest.raises(TimeoutError, match="timeout"):
        SteerLLM(engine=tiny_engine, timeout=1e-9, max_tokens=200, ignore_eos=True).invoke("Hi")
    ok = ChatSteer(engine=tiny_engine, timeout=60, max_tokens=4, eta=0.0).invoke("Hi")
    assert ok.usage_metadata["output_tokens"] <= 4  # the engine goes on serving


def test_max_retries_is_kept_but_nothing_is_retried(tiny_engine, monkeypatch):
    calls = []
    real = tiny_engine.generate
    monkeypatch.setattr(tiny_engine, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    chat = ChatSteer(engine=tiny_engine, max_retries=3)
    with pytest.raises(ValueError):
        chat.invoke("Hi", gamma=-1)  # a bad input fails once, the same way every time
    assert chat.max_retries == 3 and calls == []


def test_engine_is_checked_and_never_mixed_with_model_sources(tiny_engine):
    with pytest.raises(TypeError, match="SteerEngine"):
        ChatSteer(engine="not an engine")
    with pytest.raises(ValueError, match=r"\['device', 'max_batch_size'\] only build an engine"):
        ChatSteer(engine=tiny_engine, device=-1, batch_size=2)  # would be silently ignored
    with pytest.raises(ValueError, match=r"\['expert'\] only build an engine"):
        SteerLLM(engine=tiny_engine, model_id=MISSING)
