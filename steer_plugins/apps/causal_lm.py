"""Examples as causal-LM batches: the encoding `finetune_lora` trains on and `perplexity` scores.

Each example is `prompt + text + EOS`; the prompt's tokens carry no loss, the text's and the EOS's do.

Example (tiny in-code model):
    >>> from steer_plugins.testing import tiny_model, tiny_tokenizer
    >>> tok = tiny_tokenizer()
    >>> perplexity(tiny_model("llama", tok), tok, ["Is the Hubble tension real?"]) > 1.0
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MAX_LENGTH",
    "collate",
    "encode_examples",
    "pad_token_id",
    "perplexity",
]

DEFAULT_BATCH_SIZE = 8
"""Examples per batch (a training step, or one forward when scoring)."""
DEFAULT_MAX_LENGTH = 128
"""Examples are truncated to this many tokens."""


def encode_examples(
    tokenizer: Any, texts: Sequence[str], prompt: str, max_length: int
) -> list[tuple[list[int], int]]:
    """Token ids of `prompt + text + EOS` and how many leading ids carry no loss (the prompt).

    Args:
        tokenizer: a Hugging Face tokenizer.
        texts: the examples.
        prompt: prefix before every example ("" for none).
        max_length: ids are truncated to this many.

    Returns:
        One `(ids, num_prompt_ids)` per text.
    """
    eos = tokenizer.eos_token_id
    n_prompt = len(tokenizer(prompt).input_ids) if prompt else 0
    out = []
    for text in texts:
        ids = list(tokenizer(prompt + text).input_ids)
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
        ids = ids[:max_length]
        out.append((ids, min(n_prompt, len(ids))))
    return out


def collate(batch: Sequence[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids`, `attention_mask` and `labels` (-100 on padding and prompt), each (B, T).

    Args:
        batch: `(ids, num_prompt_ids)` pairs from `encode_examples`.
        pad_id: the padding id (see `pad_token_id`).
    """
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for i, (ids, n_prompt) in enumerate(batch):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        labels[i, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def pad_token_id(tokenizer: Any) -> int:
    """The id used for right padding: the tokenizer's pad token, else its EOS, else 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


@torch.no_grad()
def perplexity(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    prompt: str = "",
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> float:
    """Token-level perplexity `exp(Σ NLL / Σ tokens)` of `texts` (each `prompt + text + EOS`).

    Scored exactly as `finetune_lora` trains: the prompt tokens carry no loss, the EOS does, and the
    first token of an example without a prompt has no context and is not scored.

    Args:
        model: a causal LM (a `PeftModel` scores with its adapter active).
        tokenizer: its tokenizer.
        texts: the examples; must not be empty.

    Returns:
        The perplexity, a float ≥ 1.
    """
    if not texts:
        raise ValueError("`texts` is empty: pass at least one example to score")
    encoded = encode_examples(tokenizer, texts, prompt, max_length)
    pad = pad_token_id(tokenizer)
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    try:
        for start in range(0, len(encoded), batch_size):
            batch = collate(encoded[start : start + batch_size], pad)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            targets = batch["labels"][:, 1:]
            mask = targets != -100
            picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            total_nll -= float(picked[mask].sum())
            total_tokens += int(mask.sum())
    finally:
        model.train(was_training)
    return math.exp(total_nll / max(total_tokens, 1))
