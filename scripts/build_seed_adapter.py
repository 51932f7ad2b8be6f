"""Rebuild the shipped expert `steer_plugins/assets/adapters/hypotheses-lora/` from the seed set.

Trains a LoRA adapter on SmolLM2-135M-Instruct (the embedded GGUF) over 90% of
`steer_plugins/assets/seed_hypotheses.jsonl` and records, in `steer_recipe.json`, the perplexity of
base vs adapter on the held-out 10% (a seeded split). Each example is trained as the assistant's
answer to one chat-formatted instruction (`INSTRUCTION`; loss on the answer only); the recipe
records the instruction and the exact prompt string, which is what to decode from. A few minutes on 2 CPU cores.

Run:  HF_HUB_OFFLINE=1 python scripts/build_seed_adapter.py [--steps 60]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from steer_plugins import DEFAULT_MODEL
from steer_plugins.apps.data_io import read_texts
from steer_plugins.apps.finetune import finetune_lora, load_model_spec
from steer_plugins.apps.recipe import RECIPE_FILE

ASSETS = Path(__file__).resolve().parents[1] / "steer_plugins" / "assets"
SEED_SET = ASSETS / "seed_hypotheses.jsonl"
OUT_DIR = ASSETS / "adapters" / "hypotheses-lora"
HOLDOUT_FRACTION = 0.1
SPLIT_SEED = 0
INSTRUCTION = "Write a research hypothesis in astronomy, phrased as a question."
"""The user turn the expert is trained to answer; `steer_recipe.json` records it and the exact prompt."""


def chat_prompt(tokenizer) -> str:
    """The instruction rendered with the model's chat template, ready for the assistant's answer."""
    messages = [{"role": "user", "content": INSTRUCTION}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args()

    texts = read_texts(SEED_SET)
    order = list(range(len(texts)))
    random.Random(SPLIT_SEED).shuffle(order)
    n_hold = max(1, round(HOLDOUT_FRACTION * len(texts)))
    held, train = [texts[i] for i in order[:n_hold]], [texts[i] for i in order[n_hold:]]
    model, tokenizer, base_name = load_model_spec(DEFAULT_MODEL)
    prompt = chat_prompt(tokenizer)
    path = finetune_lora(
        (model, tokenizer),
        train,
        args.out,
        r=8,
        alpha=16,
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        max_length=64,
        seed=0,
        prompt=prompt,
        eval_texts=held,
        base_name=base_name,
        extra_recipe={
            "instruction": INSTRUCTION,
            "seed_set": "steer_plugins/assets/seed_hypotheses.jsonl",
            "split": {"holdout_fraction": HOLDOUT_FRACTION, "seed": SPLIT_SEED, "heldout_texts": held},
            "command": "HF_HUB_OFFLINE=1 python scripts/build_seed_adapter.py "
            f"--steps {args.steps} --lr {args.lr} --batch-size {args.batch_size}",
        },
    )
    print((path / RECIPE_FILE).read_text())


if __name__ == "__main__":
    main()
