"""What a call returns: `SteerResult` per prompt and `StreamEvent` text deltas."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .config import SteerConfig

__all__ = ["SteerResult", "StreamEvent"]


@dataclass
class SteerResult:
    """One prompt's output.

    Attributes:
        text: the generated text (no prompt, cut before any stop string).
        token_ids: every generated token id (an EOS that ended generation included).
        finish_reason: "stop" (EOS, stop token or stop string), "length", or "cancelled".
        negatives_used: the negative examples in this prompt's negative context.
        negatives_dropped: drawn or given, but dropped to fit the token budget.
        prompt_tokens / completion_tokens: token counts (the prompt after any truncation).
        prompt_truncated_tokens: tokens cut from the left of a prompt longer than the context window.
        fallback_steps: steps whose combined scores were unusable (NaN/inf/all masked) and fell back
            to the expert's distribution.
        scores: with `return_scores=True`, `(completion_tokens, vocab)` fp32 combined scores s_t,
            log-softmax normalised, before temperature/top-k/top-p.
        seed: the seed this prompt sampled (and drew negatives) with; reuse it to reproduce.
        config: the resolved settings.
        parsed: with a `constraint=` (structured output), the output parsed: a dict/list/... for a
            JSON schema, a model instance for a pydantic model, the text for a regex or choices. Only
            when the constrained output finished ("stop" with the grammar complete); None when the
            row was cut by the length limit (finish_reason "length"), a stop string, or cancelled.
            `text` always holds the raw output.
    """

    text: str
    token_ids: list[int]
    finish_reason: str
    negatives_used: list[str]
    negatives_dropped: list[str]
    prompt_tokens: int
    completion_tokens: int
    prompt_truncated_tokens: int
    fallback_steps: int
    seed: int
    config: SteerConfig
    scores: torch.Tensor | None = None
    parsed: Any = None

    @property
    def warnings(self) -> list[str]:
        """Human-readable notes on what was adjusted (truncation, dropped negatives, fallbacks)."""
        notes = []
        if self.prompt_truncated_tokens:
            notes.append(
                f"prompt truncated by {self.prompt_truncated_tokens} tokens to fit the context window"
            )
        if self.negatives_dropped:
            notes.append(f"{len(self.negatives_dropped)} negative example(s) dropped to fit the token budget")
        if self.fallback_steps:
            notes.append(f"{self.fallback_steps} step(s) fell back to the expert's distribution")
        return notes


@dataclass
class StreamEvent:
    """A text delta of one prompt. `index` is the prompt's position in its request; the final event
    of a prompt has `finish_reason` set and carries the full `result`."""

    index: int
    delta: str
    token_id: int | None = None
    finish_reason: str | None = None
    result: SteerResult | None = None
