"""`finetune_lora` on a tiny in-code model: a few steps give a loadable adapter that changes outputs."""

from __future__ import annotations

import json

import pytest
import torch

from steer_plugins.apps import finetune as ft
from steer_plugins.testing import TINY_CORPUS, tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _logits(model, tok):
    ids = tok("Does dark matter shape", return_tensors="pt").input_ids
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_few_steps_give_loadable_adapter_that_changes_outputs(tmp_path, tok):
    from peft import PeftModel

    model = tiny_model("llama", tok, seed=1)
    before = _logits(model, tok)
    out = ft.finetune_lora(
        (model, tok),
        list(TINY_CORPUS),
        tmp_path / "lora",
        steps=6,
        batch_size=4,
        lr=1e-2,
        eval_texts=list(TINY_CORPUS[:3]),
        progress=False,
    )
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    # the caller's model is handed back unchanged (LoRA layers removed)
    assert torch.equal(_logits(model, tok), before)
    assert not any("lora" in name for name, _ in model.named_modules())

    loaded = PeftModel.from_pretrained(tiny_model("llama", tok, seed=1), out).eval()
    assert not torch.allclose(_logits(loaded, tok), before, atol=1e-4)

    recipe = json.loads((out / ft.RECIPE_FILENAME).read_text())
    assert recipe["lora"]["r"] == 8 and recipe["training"]["steps"] == 6
    assert recipe["data"]["num_texts"] == len(TINY_CORPUS)
    held = recipe["heldout"]
    assert held["perplexity_adapter"] < held["perplexity_base"]


def test_gpt2_and_tokenizer_kwarg(tmp_path, tok):
    model = tiny_model("gpt2", tok, seed=2)
    out = ft.finetune_lora(
        model, list(TINY_CORPUS), tmp_path / "g", tokenizer=tok, steps=2, batch_size=2, progress=False
    )
    assert json.loads((out / ft.RECIPE_FILENAME).read_text())["lora"]["target_modules"] == [
        "c_attn",
        "c_proj",
    ]


def test_alias_records_base_name_in_adapter_config(tmp_path, tok, monkeypatch):
    calls = []

    def fake_load(spec):
        calls.append(spec)
        return tiny_model("llama", tok, seed=3), tok, ft.DEFAULT_MODEL_ALIAS

    monkeypatch.setattr(ft, "load_model_spec", fake_load)
    out = ft.finetune_lora("smollm2-135m-instruct", ["Is it?"], tmp_path / "a", steps=1, progress=False)
    assert calls == ["smollm2-135m-instruct"]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "smollm2-135m-instruct"


def test_perplexity_and_bad_arguments(tmp_path, tok):
    model = tiny_model("llama", tok, seed=1)
    assert ft.perplexity(model, tok, ["Is the Hubble tension real?"]) > 1.0
    with pytest.raises(ValueError, match="`texts` is empty"):
        ft.finetune_lora((model, tok), [], tmp_path / "x", steps=1, progress=False)
    with pytest.raises(ValueError, match="`steps` must be a positive integer"):
        ft.finetune_lora((model, tok), ["a"], tmp_path / "x", steps=0, progress=False)
    with pytest.raises(TypeError, match="pass its tokenizer"):
        ft.finetune_lora(model, ["a"], tmp_path / "x", steps=1, progress=False)


def test_base_name_overrides_recorded_base(tmp_path, tok):
    model = tiny_model("llama", tok, seed=1)
    out = ft.finetune_lora(
        (model, tok), ["Is it?"], tmp_path / "b", steps=1, base_name="my-base", progress=False
    )
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "my-base"
    assert json.loads((out / ft.RECIPE_FILENAME).read_text())["base"] == "my-base"
