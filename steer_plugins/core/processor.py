"""STEER as a `transformers.LogitsProcessor`, for users who keep calling `model.generate()`.

The model running `generate()` is the expert on the prompt (the head branch); this processor
runs the base rows and the negative-context rows itself, each with its own KV cache, and returns
the combined scores. It holds no maths of its own: `combine` and `guard_non_finite` do the work.
Use one processor per `generate()` call.

Example:
    >>> proc = engine.logits_processor(negatives=["an example to move away from"])
    >>> out = engine.models.expert.generate(**inputs, logits_processor=[proc], do_sample=True, top_k=10)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import LogitsProcessor

from .combine import cached_continuation_tokens, combine, guard_non_finite
from .decode import head_weight
from .jobs import draw_negatives, negative_contexts, word_guard
from .lexicon import WordGuard, guard_bias
from .rows import RowBatch

__all__ = ["SteerLogitsProcessor"]


class SteerLogitsProcessor(LogitsProcessor):
    """Combine the expert's scores with base and negative branches inside `generate()`.

    Args:
        engine: a `SteerEngine` (gives the models, tokenizer and default config).
        negatives: negative examples, shared by every row of the batch (joined with the separator);
            None draws `num_negatives` from `engine.pool`.
        prompt_attention_mask: the `attention_mask` passed to `generate()` when the batch is
            left-padded (else padding is inferred from leading pad tokens).
        **overrides: `SteerConfig` fields (temperature/top-k are `generate()`'s own arguments).
    """

    def __init__(
        self,
        engine: Any,
        negatives: Sequence[str] | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        **overrides: Any,
    ) -> None:
        self.config = engine.config.merged(**overrides)
        self.models = engine.models
        self.pad_id = engine.pad_id
        self.weights = self.config.branch_weights()
        self.head_w = head_weight(self.weights, fold_base=self.models.base is self.models.expert)
        drawn = draw_negatives(self.config, engine.pool, None, negatives)
        budget = min(self.config.negative_max_tokens or engine.context_window, engine.context_window)
        config = self.config.model_copy(update={"negative_form": "concat"})  # one shared context
        contexts, self.fit = negative_contexts(engine.token_context, drawn, config, budget)
        self.negative_ids = contexts[0] if contexts else []
        self.prompt_attention_mask = prompt_attention_mask
        self._pool = engine.pool
        self._guards: list[WordGuard] = []
        self.fallback_steps = 0
        self._base: RowBatch | None = None
        self._neg: RowBatch | None = None
        self._started = False

    def _contexts(self, input_ids: torch.Tensor) -> list[list[int]]:
        if self.prompt_attention_mask is not None:
            mask = self.prompt_attention_mask.bool()
        else:
            is_pad = input_ids == self.pad_id
            mask = ~(is_pad.cumprod(-1).bool())  # leading pads only
        return [row[m].tolist() for row, m in zip(input_ids, mask, strict=True)]

    def _start(self, input_ids: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        self._started = True
        base_lp = neg_lp = None
        if self.weights.base != 0 and self.models.base is not self.models.expert:
            shared = self.models.shared_weights
            self._base = RowBatch(
                self.models.expert if shared else self.models.base, pad_id=self.pad_id, disable_adapter=shared
            )
            base_lp = self._base.prefill(self._contexts(input_ids))
        if self.weights.negative != 0 and self.negative_ids:
            self._neg = RowBatch(self.models.expert, pad_id=self.pad_id)
            neg_lp = self._neg.prefill([self.negative_ids] * input_ids.shape[0])
        return base_lp, neg_lp

    def _start_guards(self, input_ids: torch.LongTensor) -> None:
        """Known words: one word state per row (each prompt's words count as known)."""
        texts = self.models.tokenizer.batch_decode(self._contexts(input_ids), skip_special_tokens=True)
        guards = [word_guard(self.models.tokenizer, self.config, self._pool, t) for t in texts]
        self._guards = [g for g in guards if g is not None]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        head = scores.float().log_softmax(-1)
        if not self._started:
            base_lp, neg_lp = self._start(input_ids)
            if base_lp is not None or neg_lp is not None or self.head_w != 1:  # steered (combine's rule)
                self._start_guards(input_ids)
        else:
            last = input_ids[:, -1]
            base_lp = self._base.step(last) if self._base is not None else None
            neg_lp = self._neg.step(last) if self._neg is not None else None
            for guard, tok in zip(self._guards, last.tolist(), strict=False):
                guard.advance(tok)
        if self._guards:  # before the branches combine, as in the decoder
            head = head + guard_bias(head, self._guards)
        branches, weights = [head], [self.head_w]
        if base_lp is not None:
            branches.append(base_lp.to(head.device))
            weights.append(self.weights.base)
        if neg_lp is not None:
            branches.append(neg_lp.to(head.device))
            weights.append(self.weights.negative)
        continuation = None
        if self.config.whole_words:
            continuation = cached_continuation_tokens(self.models.tokenizer, head.shape[-1])
        combined = combine(
            torch.stack(branches, dim=1),
            torch.tensor(weights),
            alpha=self.config.alpha,
            continuation=continuation,
            whole_words=self.config.whole_words,
            head_top_k=self.config.top_k,
            spelling_min_p=self.config.spelling_min_p,
        )
        combined, fell_back = guard_non_finite(combined, head)
        self.fallback_steps += int(fell_back.sum())
        return combined.log_softmax(-1).to(scores.dtype)
