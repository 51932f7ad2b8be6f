"""Preparing one prompt for the decoder: tokenise, draw negatives, fit the token budgets.

`prepare_job` is a pure function of its inputs (the tokenizer facts in `TokenContext`, the prompt,
its resolved options and the pool as it stands): the scheduler calls it when a prompt enters the
decoder, and the `LogitsProcessor` form reuses `draw_negatives` and `negative_contexts`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .config import SteerConfig
from .constraints import Constraint
from .grammar import Grammar
from .lexicon import WordGuard, known_words_for, token_texts
from .negatives import NegativeContext, NegativePool, fit_negatives

__all__ = ["PromptJob", "TokenContext", "draw_negatives", "negative_contexts", "prepare_job"]


@dataclass
class PromptJob:
    """One prompt, ready to decode (tokenised, negatives chosen, seed fixed)."""

    prompt_ids: list[int]
    negative_contexts: list[list[int]]
    config: SteerConfig
    seed: int
    stop_token_ids: frozenset[int]
    negatives_used: list[str] = field(default_factory=list)
    negatives_dropped: list[str] = field(default_factory=list)
    prompt_truncated_tokens: int = 0
    return_scores: bool = False
    index: int = 0  # position in the caller's request
    base_prompt_ids: list[int] | None = None  # the base branch's own prompt (prompted experts)
    constraint: Constraint | None = None  # per-prompt grammar/regex/choices state (constraints.py)
    guard: WordGuard | None = None  # per-prompt word state with `known_words` (lexicon.py)


@dataclass(frozen=True)
class TokenContext:
    """What job preparation needs to know about the model pair: its tokenizer, context window and
    end-of-sequence ids."""

    tokenizer: Callable
    context_window: int
    eos: frozenset[int]

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text).input_ids)

    def count(self, text: str) -> int:
        return len(self.encode(text))


def draw_negatives(
    config: SteerConfig, pool: NegativePool, rng: random.Random | None, given: Sequence[str] | None = None
) -> list[str]:
    """The negatives of one prompt: `given`, else K drawn from `pool` (none when η = 0 or the pool is
    empty)."""
    if given is not None:
        return list(given)
    if config.eta > 0 and len(pool) > 0:
        return pool.draw(config.num_negatives, rng, source=config.negatives_from)
    return []


def negative_contexts(
    tokens: TokenContext, drawn: Sequence[str], config: SteerConfig, budget: int
) -> tuple[list[list[int]], NegativeContext]:
    """Token ids of the negative context(s) within `budget` tokens, and which examples were used or
    dropped. Empty or blank examples carry nothing to move away from and are dropped (reported).

    `concat` (the paper): one context of the examples joined by `negative_separator`, whole examples
    dropped to fit; `per_example`: one context per example, examples over the budget dropped.
    """
    blank = [t for t in drawn if not t.strip()]
    drawn = [t for t in drawn if t.strip()]
    contexts: list[list[int]] = []
    if config.negative_form == "concat":
        fit = fit_negatives(drawn, tokens.count, budget, config.negative_separator)
        ids = tokens.encode(config.negative_separator.join(fit.used)) if fit.used else []
        if ids:
            contexts.append(ids)
        return contexts, NegativeContext(fit.used, fit.dropped + blank)
    used, dropped = [], list(blank)
    for text in drawn:
        ids = tokens.encode(text)
        if 0 < len(ids) <= budget:
            contexts.append(ids)
            used.append(text)
        else:
            dropped.append(text)
    return contexts, NegativeContext(used, dropped)


def prepare_job(
    tokens: TokenContext,
    prompt: str,
    config: SteerConfig,
    *,
    seed: int,
    pool: NegativePool,
    negatives: Sequence[str] | None = None,
    base_prompt: str | None = None,
    return_scores: bool = False,
    index: int = 0,
    constraint: Grammar | None = None,
) -> PromptJob:
    """Tokenise `prompt` (cut from the left to fit the context window), draw and fit its negatives
    (seeded by `seed`), resolve its stop ids, and start a fresh per-prompt state of `constraint`.

    Raises:
        ValueError: `max_new_tokens` leaves no room for a prompt, or the prompt tokenises to nothing.
        GrammarError (a ValueError): `constraint`'s shortest output cannot finish within
            `max_new_tokens`, or the tokenizer cannot drive it.
    """
    limit = tokens.context_window - config.max_new_tokens
    if limit < 1:
        raise ValueError(
            f"`max_new_tokens` ({config.max_new_tokens}) leaves no room for the prompt in the model's "
            f"{tokens.context_window}-token context window: lower max_new_tokens"
        )
    state = (
        None if constraint is None else constraint.start(tokens.tokenizer, tokens.eos, config.max_new_tokens)
    )
    ids = tokens.encode(prompt)
    truncated = max(0, len(ids) - limit)
    ids = ids[truncated:]
    if not ids:
        raise ValueError(f"prompt #{index} tokenises to nothing: pass text the tokenizer can encode")
    drawn = draw_negatives(config, pool, random.Random(seed), negatives)
    budget = min(config.negative_max_tokens or limit, limit)
    contexts, fit = negative_contexts(tokens, drawn, config, budget)
    return PromptJob(
        prompt_ids=ids,
        negative_contexts=contexts,
        config=config,
        seed=seed,
        stop_token_ids=(frozenset() if config.ignore_eos else tokens.eos) | frozenset(config.stop_token_ids),
        negatives_used=fit.used,
        negatives_dropped=fit.dropped,
        prompt_truncated_tokens=truncated,
        base_prompt_ids=tokens.encode(base_prompt)[-limit:] if base_prompt is not None else None,
        return_scores=return_scores,
        index=index,
        constraint=state,
        guard=word_guard(tokens.tokenizer, config, pool, prompt),
    )


def word_guard(
    tokenizer: Callable, config: SteerConfig, pool: NegativePool | None, prompt: str
) -> WordGuard | None:
    """A fresh `WordGuard` when `config.known_words` is on and something is steered (γ or η > 0);
    the decoder leaves it off for rows that still sample the expert as it is (no negatives)."""
    if not config.known_words or (config.gamma == 0 and config.eta == 0):
        return None
    return WordGuard(known_words_for(pool, prompt), token_texts(tokenizer))
