"""The recipe file an adapter folder carries: how the expert was made, and the prompt to decode from.

`finetune_lora` writes `RECIPE_FILE` (JSON, format `RECIPE_FORMAT`) and a short model card next to
the adapter; `steer generate` and `steer demo` read the recorded training prompt back with
`read_recipe_prompt`. This module is the one place that names the file.

Example:
    >>> read_recipe_prompt("/nonexistent") is None
    True
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["RECIPE_FILE", "RECIPE_FORMAT", "read_recipe", "read_recipe_prompt", "write_recipe", "model_card"]

RECIPE_FILE = "steer_recipe.json"
"""File name of the recipe inside an adapter folder."""
RECIPE_FORMAT = "steer-recipe/1"
"""Value of the recipe's `format` key."""
MODEL_CARD_FILE = "README.md"


def read_recipe(adapter_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The recipe of the adapter in `adapter_dir`, or None when the folder has no recipe file."""
    path = Path(adapter_dir) / RECIPE_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def read_recipe_prompt(adapter_dir: str | os.PathLike[str]) -> str | None:
    """The exact prompt string an adapter was trained with (from its recipe), or None."""
    recipe = read_recipe(adapter_dir)
    prompt = (recipe or {}).get("training", {}).get("prompt")
    return prompt or None


def model_card(recipe: dict[str, Any]) -> str:
    """A short README replacing PEFT's empty template: what this adapter is and how it was made."""
    lora, train, held = recipe["lora"], recipe["training"], recipe.get("heldout")
    lines = [
        f"# LoRA expert for STEER (base: `{recipe['base']}`)",
        "",
        f"Trained by `steer_plugins.apps.finetune.finetune_lora` on {recipe['data']['num_texts']} examples: "
        f"r={lora['r']}, alpha={lora['alpha']}, targets {', '.join(lora['target_modules'])}; "
        f"{train['steps']} steps of batch {train['batch_size']} at lr {train['lr']} "
        f"({train['seconds']} s on CPU). Full recipe: `{RECIPE_FILE}`.",
    ]
    if held:
        lines += [
            "",
            f"Held-out perplexity ({held['num_texts']} examples): base {held['perplexity_base']}, "
            f"adapter {held['perplexity_adapter']}.",
        ]
    return "\n".join(lines) + "\n"


def write_recipe(out_dir: str | os.PathLike[str], recipe: dict[str, Any]) -> Path:
    """Write `recipe` as `RECIPE_FILE` and its model card as `README.md` in `out_dir`; returns the recipe path."""
    out = Path(out_dir)
    path = out / RECIPE_FILE
    path.write_text(json.dumps(recipe, indent=2) + "\n", encoding="utf-8")
    (out / MODEL_CARD_FILE).write_text(model_card(recipe), encoding="utf-8")
    return path
