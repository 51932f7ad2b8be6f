"""`CallOptions`: everything one generate/stream call asks for, validated once.

Every adapter (LangChain, DSPy, datasets, Ray, the CLI) translates its framework's call into one
`CallOptions` through `CallOptions.build` and hands it to the engine; nothing downstream validates
again. What every integration needs is written here once: splitting per-call keywords into config
overrides and call options (with an error naming the unknown ones), merging stop strings, checking
negatives (one shared list, or one list per prompt), seeds, base prompts and the pool; and a
result's token usage (`usage`).

Example:
    >>> opts = CallOptions.build(SteerConfig(), 2, {"gamma": 0.5, "negatives": [["avoid"]] * 2}, stop=["?"])
    >>> opts.config.gamma, opts.negatives, opts.config.stop
    (0.5, (('avoid',), ('avoid',)), ['?'])
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .config import MAX_SEED, SteerConfig
from .grammar import Grammar, compile_grammar
from .negatives import NegativePool

__all__ = ["CALL_KEYS", "CallOptions", "merge_stops", "shared_negatives", "usage"]

#: Per-call keywords that are not `SteerConfig` fields.
CALL_KEYS: tuple[str, ...] = (
    "negatives",
    "add_to_pool",
    "seeds",
    "base_prompts",
    "pool",
    "return_scores",
    "constraint",
)


@dataclass(frozen=True)
class CallOptions:
    """The resolved settings of one call over `n` prompts.

    Attributes:
        config: the merged `SteerConfig` (engine defaults, then the adapter's fields, then per-call
            overrides; stop strings merged).
        seeds: one seed per prompt (given, or `seed, seed+1, ...`, or fresh entropy).
        negatives: one tuple of negative texts per prompt, or None to draw K from the pool.
        base_prompts: one prompt per prompt for the base branch (the prompted expert), or None.
        pool: the pool to draw from and grow (None: the engine's).
        add_to_pool: append outputs to the pool (None: when negatives come from a seeded pool).
        return_scores: keep the combined per-step scores in each result.
        constraint: the compiled structured-output spec every prompt's output must follow (a JSON
            schema, pydantic model, TypedDict, regex or list of choices; see `grammar.py`), or None.
    """

    config: SteerConfig
    seeds: tuple[int, ...]
    negatives: tuple[tuple[str, ...], ...] | None = None
    base_prompts: tuple[str, ...] | None = None
    pool: NegativePool | None = None
    add_to_pool: bool | None = None
    return_scores: bool = False
    constraint: Grammar | None = None

    @property
    def num_prompts(self) -> int:
        return len(self.seeds)

    @classmethod
    def build(
        cls,
        config: SteerConfig,
        n: int,
        kwargs: Mapping[str, Any] | None = None,
        *,
        stop: Sequence[str] | str | None = None,
    ) -> CallOptions:
        """Resolve `kwargs` (any `SteerConfig` field plus `CALL_KEYS`) over `config` for `n` prompts.

        `negatives` is one list of strings per prompt (adapters holding one shared list pass
        `[negs] * n`, see `shared_negatives`); `stop` (LangChain's and DSPy's call argument) is merged
        after the config's own stop strings.

        Raises:
            ValueError / TypeError: an unknown keyword (the message lists the valid ones) or a value
                of the wrong shape, naming the argument and the fix.
            GrammarError (a ValueError): a `constraint` that cannot be enforced (compiled here, once).
        """
        kwargs = dict(kwargs or {})
        fields = type(config).model_fields
        unknown = sorted(set(kwargs) - set(fields) - set(CALL_KEYS))
        if unknown:
            raise ValueError(
                f"unknown keyword argument(s) {unknown}; per-call options are the SteerConfig fields "
                f"{list(fields)} and {list(CALL_KEYS)} (e.g. negatives=['...'], gamma=0.5)"
            )
        overrides = {k: v for k, v in kwargs.items() if k in fields}
        cfg = config.merged(**overrides)
        if stop:
            cfg = cfg.merged(stop=merge_stops(cfg.stop, stop))
        pool = kwargs.get("pool")
        if pool is not None and not isinstance(pool, NegativePool):
            raise TypeError(f"`pool` must be a NegativePool, got {type(pool).__name__}: NegativePool(texts)")
        add_to_pool = kwargs.get("add_to_pool")
        if add_to_pool is not None and not isinstance(add_to_pool, bool):
            raise TypeError(f"`add_to_pool` must be True, False or None, got {add_to_pool!r}")
        base_prompts = kwargs.get("base_prompts")
        return cls(
            config=cfg,
            seeds=_seeds(kwargs.get("seeds"), cfg.seed, n),
            negatives=_per_prompt_negatives(kwargs.get("negatives"), n),
            base_prompts=None
            if base_prompts is None
            else tuple(check_prompts(base_prompts, "base_prompts", n)),
            pool=pool,
            add_to_pool=add_to_pool,
            return_scores=bool(kwargs.get("return_scores", False)),
            constraint=None if kwargs.get("constraint") is None else compile_grammar(kwargs["constraint"]),
        )


def check_prompts(prompts: Any, name: str = "prompts", expected: int | None = None) -> list[str]:
    """`prompts` as a list of non-empty strings (with `expected` entries when given), or an error
    naming the argument, the offending entry and the fix."""
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise TypeError(
            f"`{name}` must be a list of strings, got {type(prompts).__name__}: wrap one prompt in a list"
        )
    if len(prompts) == 0:
        raise ValueError(f"`{name}` is empty: pass at least one prompt")
    if expected is not None and len(prompts) != expected:
        raise ValueError(f"`{name}` must have one entry per prompt ({expected}), got {len(prompts)}")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"{name.removesuffix('s')} #{i} must be a str, got {type(p).__name__}")
        if not p:
            raise ValueError(
                f"{name.removesuffix('s')} #{i} is empty: STEER conditions expert and base on the prompt; "
                "pass text"
            )
        check_text(p, f"{name.removesuffix('s')} #{i}")
    return list(prompts)


def check_text(text: str, what: str) -> None:
    """Refuse text the tokenizer cannot encode (an unpaired surrogate, e.g. from JSON `"\\ud800"`)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"{what} contains an unpaired surrogate ({text[err.start : err.end]!r} at {err.start}): not valid "
            "text. Repair it first, e.g. text.encode('utf-16', 'surrogatepass').decode('utf-16', 'replace')"
        ) from None


def merge_stops(*stops: Sequence[str] | str | None) -> list[str]:
    """Stop strings from several sources (config, call argument), in order, without repeats."""
    merged: list[str] = []
    for s in stops:
        if s is None:
            continue
        merged += [s] if isinstance(s, str) else list(s)
    return list(dict.fromkeys(merged))


def shared_negatives(negatives: Any) -> list[str] | None:
    """None, or one list of strings shared by every prompt of a call (the adapters' field form)."""
    if negatives is None:
        return None
    if isinstance(negatives, str) or not isinstance(negatives, Sequence):
        raise TypeError(
            f"`negatives` must be a list of strings (shared by every prompt), got {type(negatives).__name__}: "
            "wrap one example in a list, or pass None to draw from engine.pool"
        )
    bad = [type(n).__name__ for n in negatives if not isinstance(n, str)]
    if bad:
        raise TypeError(f"`negatives` must hold only strings, got {bad}")
    return list(negatives)


def _per_prompt_negatives(negatives: Any, n: int) -> tuple[tuple[str, ...], ...] | None:
    """One tuple of strings per prompt, or None (draw from the pool)."""
    if negatives is None:
        return None
    if (
        isinstance(negatives, str)
        or not isinstance(negatives, Sequence)
        or len(negatives) != n
        or any(isinstance(x, str) or not isinstance(x, Sequence) for x in negatives)
        or not all(isinstance(t, str) for x in negatives for t in x)
    ):
        raise ValueError(
            f"`negatives` must be one list of strings per prompt ({n} lists); for shared negatives pass "
            "[negs] * len(prompts), or None to draw from engine.pool"
        )
    for i, texts in enumerate(negatives):
        for j, text in enumerate(texts):
            check_text(text, f"negative #{j} of prompt #{i}")
    return tuple(tuple(x) for x in negatives)


def _seeds(seeds: Any, seed: int | None, n: int) -> tuple[int, ...]:
    if seeds is not None:
        seeds = list(seeds) if isinstance(seeds, Sequence) and not isinstance(seeds, str) else seeds
        if (
            not isinstance(seeds, list)
            or len(seeds) != n
            or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= MAX_SEED for x in seeds)
        ):
            raise ValueError(f"`seeds` must be one int in [0, 2**63 - 1] per prompt ({n}), got {seeds!r}")
        return tuple(seeds)
    base = seed if seed is not None else secrets.randbits(62)
    if base + n - 1 > MAX_SEED:
        raise ValueError(
            f"`seed` {base} + {n} prompts overflows the 63-bit seed range: pass a seed below {MAX_SEED - n + 1}"
        )
    return tuple(base + i for i in range(n))


def usage(result: Any) -> dict[str, int]:
    """OpenAI-style token usage of one result (or summed over a list of results)."""
    results = result if isinstance(result, Sequence) else [result]
    prompt = sum(r.prompt_tokens for r in results)
    completion = sum(r.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
