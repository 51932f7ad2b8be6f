"""From run settings to a loaded engine, its negative pool and its prompt (`generate` and `sweep`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..pipeline import DEFAULT_CHUNK_SIZE, HYPOTHESIS_INSTRUCTION
from ..recipe import read_recipe_prompt
from ._common import DEFAULT_EXPERT, DEFAULT_SEED_SET, MODEL_KINDS, CLIError, log, read_examples

__all__ = ["build_engine", "pool_for", "resolve_prompt", "wrap_instruction"]


def pool_for(settings: dict[str, Any]) -> list[str] | None:
    """The real examples seeding the negative pool: `pool`, else the seed set of the shipped expert."""
    if settings.get("pool"):
        return read_examples(settings["pool"], "pool")
    if (settings.get("expert") or DEFAULT_EXPERT) == DEFAULT_EXPERT:
        from ..data_io import read_texts

        return read_texts(DEFAULT_SEED_SET)
    return None


def build_engine(settings: dict[str, Any], config: Any, *, pool: list[str] | None) -> Any:
    """A `SteerEngine` over `settings["expert"]` (default: the shipped adapter) and `settings["base"]`."""
    from ...core.engine import SteerEngine

    expert = settings.get("expert") or DEFAULT_EXPERT
    if (
        isinstance(expert, str)
        and not Path(expert).exists()
        and (os.sep in expert or expert.endswith((".gguf", ".json", ".jsonl")))
    ):
        raise CLIError(f"expert model not found: `{expert}` ({MODEL_KINDS})")
    log(f"loading expert {expert}" + (f" over base {settings['base']}" if settings.get("base") else ""))
    return SteerEngine(
        expert,
        settings.get("base"),
        config=config,
        pool=pool,
        device=settings.get("device"),
        max_batch_size=max(1, int(settings.get("chunk_size") or DEFAULT_CHUNK_SIZE)),
    )


def wrap_instruction(engine: Any, instruction: str) -> str:
    """`instruction` in the tokenizer's chat template (as-is when the tokenizer has none)."""
    if getattr(engine.tokenizer, "chat_template", None):
        return engine.apply_chat_template([{"role": "user", "content": instruction}])
    return instruction


def resolve_prompt(engine: Any, settings: dict[str, Any]) -> str:
    """The expert's prompt: prompted-expert examples, `prompt`, `instruction`, the adapter's recorded
    training prompt, or the default instruction, in that order."""
    if settings.get("prompt") and settings.get("instruction"):
        raise CLIError("give either `prompt` (exact string) or `instruction` (chat-wrapped), not both")
    if settings.get("prompted_expert"):
        from ..prompted import DEFAULT_NUM_SHOTS, prompted_prompt

        examples = read_examples(settings["prompted_expert"], "prompted-expert examples")
        instruction = settings.get("instruction") or HYPOTHESIS_INSTRUCTION
        shots = int(settings.get("num_shots") or DEFAULT_NUM_SHOTS)
        return prompted_prompt(engine.tokenizer, instruction, examples, num_shots=shots)
    if settings.get("prompt"):
        return str(settings["prompt"])
    if settings.get("instruction"):
        return wrap_instruction(engine, settings["instruction"])
    expert = settings.get("expert") or DEFAULT_EXPERT
    if isinstance(expert, str) and (recorded := read_recipe_prompt(expert)):
        return recorded
    return wrap_instruction(engine, HYPOTHESIS_INSTRUCTION)
