"""The prompted expert: a zero-training alternative to a LoRA expert.

The paper's expert is the base model fine-tuned on the domain. Without an adapter, the same
model can play the expert when its prompt carries a domain instruction and a few real examples in
context. `prompted_prompt` renders that prompt (with the tokenizer's chat template when it has one).

The full prompted STEER rule, `(1+γ)·ℓ(c_expert) − γ·ℓ(c_plain) − η·ℓ(N)`, runs on one set of
weights: pass this prompt as the expert prompt and the plain instruction as the base prompt,
`engine.generate([prompted], base_prompts=[plain])` (`steer generate --prompted-expert FILE` does).

Example:
    >>> from steer_plugins.testing import tiny_tokenizer
    >>> p = prompted_prompt(tiny_tokenizer(), "Write a question.", ["Is it?", "Does it?"])
    >>> "Is it?" in p and "Does it?" in p
    True
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

__all__ = ["DEFAULT_NUM_SHOTS", "prompted_prompt"]

DEFAULT_NUM_SHOTS = 5


def prompted_prompt(
    tokenizer: Any,
    instruction: str,
    examples: Sequence[str],
    *,
    num_shots: int = DEFAULT_NUM_SHOTS,
    seed: int = 0,
) -> str:
    """The expert prompt: `instruction`, then `num_shots` examples (seeded draw), then the request.

    Args:
        tokenizer: the model's tokenizer; its chat template is used when it has one.
        instruction: the domain instruction, e.g. "Write a research hypothesis in astronomy, phrased
            as a question."
        examples: real examples to draw the in-context shots from (at least one).
        num_shots: how many examples to show.
        seed: seeds which examples are shown.

    Returns:
        The prompt string to pass to `SteerEngine.generate` (the model answers with one new example).
    """
    if not examples:
        raise ValueError("`examples` is empty: a prompted expert needs at least one real example in context")
    if num_shots < 1:
        raise ValueError(f"`num_shots` must be >= 1, got {num_shots}")
    shots = random.Random(seed).sample(list(examples), min(num_shots, len(examples)))
    body = "\n".join(f"- {s.strip()}" for s in shots)
    user = f"{instruction}\n\nHere are examples of the style and domain:\n{body}\n\nWrite one new one, different from these."
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
    return f"{user}\n"
