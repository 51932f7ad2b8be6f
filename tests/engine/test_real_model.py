"""End to end on the real offline model: SmolLM2-135M-Instruct (GGUF) with the shipped LoRA expert."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from steer_plugins import SteerConfig, SteerEngine

ASSETS = Path(__file__).resolve().parents[2] / "steer_plugins" / "assets"


@pytest.mark.slow
def test_real_model_lora_expert_end_to_end():
    seeds = [json.loads(line)["text"] for line in (ASSETS / "seed_hypotheses.jsonl").read_text().splitlines()]
    engine = SteerEngine(
        str(ASSETS / "adapters" / "hypotheses-lora"),
        config=SteerConfig(max_new_tokens=40, stop=["?"], num_negatives=5),
        pool=seeds[:50],
    )
    assert engine.models.shared_weights, "a LoRA expert with base=None must share the base's weights"
    recipe = json.loads((ASSETS / "adapters" / "hypotheses-lora" / "steer_recipe.json").read_text())
    prompt = recipe["training"]["prompt"]
    results = engine.generate([prompt, prompt, prompt], seed=0, return_scores=True)
    for r in results:
        assert r.text.strip() and r.finish_reason in {"stop", "length"}
        assert len(r.negatives_used) == 5 and set(r.negatives_used) <= set(seeds)
        assert r.scores.shape[0] == r.completion_tokens and r.fallback_steps == 0
    assert sum(r.finish_reason == "stop" for r in results) >= 2, [r.text for r in results]
    assert len(engine.pool) == 50 + sum(bool(r.text.strip()) for r in results)
    streamed = "".join(
        ev.delta for ev in engine.stream([prompt], seed=0, negatives=[results[0].negatives_used])
    )
    again = engine.generate([prompt], seed=0, negatives=[results[0].negatives_used])[0]
    assert streamed == again.text
    engine.close()
