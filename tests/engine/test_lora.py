"""The lean LoRA forward (`lora.py`): same sums as PEFT's forward, only inside engine forwards."""

from __future__ import annotations

import copy
import pickle
import threading

import pytest
import torch

from steer_plugins import SteerConfig, SteerEngine
from steer_plugins.core import lora
from steer_plugins.testing import tiny_lora_expert, tiny_model

PROMPTS = ["the star", "a planet is"]
NEGS = [["gas giants orbit far out"], ["the moon has no air at all"]]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_lean_lora_forward_matches_peft_and_only_runs_when_enabled(arch, tiny_tok, monkeypatch):
    """Whole-model logits through the lean forward match PEFT's own forward (float scaling and
    per-row 0/1 scaling), adapters switched off give the base exactly, and outside `enabled()`
    (another thread included) the installed model computes exactly what PEFT computes."""
    expert = tiny_lora_expert(tiny_model(arch, tiny_tok, seed=1), seed=4)
    ids = torch.tensor([tiny_tok(p).input_ids[:3] for p in PROMPTS])
    with torch.inference_mode():
        peft_out = expert(input_ids=ids).logits
        with expert.disable_adapter():
            base_out = expert(input_ids=ids).logits
    assert lora.install(expert) > 0 and lora.install(expert) == lora.install(expert)  # idempotent
    from peft.tuners.lora import Linear as PeftLinear

    peft_calls: list[bool] = []
    peft_forward = PeftLinear.forward
    monkeypatch.setattr(
        PeftLinear, "forward", lambda *a, **k: (peft_calls.append(lora._local.on), peft_forward(*a, **k))[1]
    )
    assert all(type(m).__name__ == "FastLoraLinear" for m in lora.lora_layers(expert, "default"))
    with torch.inference_mode():
        assert torch.equal(expert(input_ids=ids).logits, peft_out)  # not enabled: PEFT's forward
        with lora.enabled():
            lean = expert(input_ids=ids).logits
            with expert.disable_adapter():
                assert torch.equal(expert(input_ids=ids).logits, base_out)
            layers = lora.lora_layers(expert, "default")
            with lora.row_scaled_lora(layers, "default", torch.tensor([1.0, 0.0])):
                mixed = expert(input_ids=ids).logits
        seen = []
        with lora.enabled():  # the switch is per thread: another thread runs PEFT's forward
            worker = threading.Thread(target=lambda: seen.append(expert(input_ids=ids).logits))
            worker.start()
            worker.join()
    assert peft_calls and not any(peft_calls)  # PEFT's forward ran only outside `enabled()`
    torch.testing.assert_close(lean, peft_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed[0], peft_out[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(mixed[1], base_out[1])  # a base row adds exactly zero
    assert torch.equal(seen[0], peft_out)


def test_lean_lora_falls_back_to_peft_where_it_does_not_apply(tiny_tok):
    """Training mode, autocast and a merged adapter run PEFT's forward; an installed model
    deep-copies and pickles (the class is found by name)."""
    expert = tiny_lora_expert(tiny_model("llama", tiny_tok, seed=1), seed=4)
    lora.install(expert)
    ids = torch.tensor([tiny_tok(PROMPTS[0]).input_ids])
    with torch.no_grad():
        reference = expert(input_ids=ids).logits
        with lora.enabled():
            expert.train()
            for module in expert.modules():  # dropout off, so train mode is comparable
                if isinstance(module, torch.nn.Dropout):
                    module.p = 0.0
            assert torch.equal(expert(input_ids=ids).logits, reference)  # PEFT's forward
            expert.eval()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                cast = expert(input_ids=ids).logits
            torch.testing.assert_close(cast.float(), reference, atol=0.1, rtol=0.1)
    clone = copy.deepcopy(expert)
    again = pickle.loads(pickle.dumps(expert))
    assert type(next(iter(lora.lora_layers(again, "default")))).__name__ == "FastLoraLinear"
    with torch.no_grad():
        assert torch.equal(clone(input_ids=ids).logits, reference)
        merged = clone.merge_and_unload()
        with lora.enabled():
            torch.testing.assert_close(merged(input_ids=ids).logits, reference, atol=1e-5, rtol=1e-5)


def test_engine_installs_the_lean_forward_and_leaves_plain_models_alone(tiny_tok):
    """An engine on a LoRA expert runs its LoRA layers through the lean forward; an engine on two
    plain models finds none to install."""
    expert = tiny_lora_expert(tiny_model("llama", tiny_tok, seed=1), seed=4)
    engine = SteerEngine(expert, tokenizer=tiny_tok, config=SteerConfig(max_new_tokens=4))
    layers = lora.lora_layers(expert, "default")
    assert all(type(m).__name__ == "FastLoraLinear" for m in layers)
    switched: list[bool] = []
    hook = layers[0].register_forward_pre_hook(lambda *_: switched.append(lora._local.on))
    engine.generate(PROMPTS, negatives=NEGS, seed=1)
    hook.remove()
    assert switched and all(switched)  # every forward of the engine ran with the lean path on
    engine.close()
    plain = tiny_model("llama", tiny_tok, seed=1)
    assert lora.install(plain) == 0
