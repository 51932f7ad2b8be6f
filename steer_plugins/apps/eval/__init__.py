"""Diversity and fidelity metrics for synthetic text (extra `[eval]`): see `steer_plugins.apps.eval.metrics`.

`REGISTRY` holds one `Metric` record per metric (name, function, whether it needs embeddings,
direction); `METRICS`, `TEXT_METRICS` and `EMBEDDING_METRICS` are its names.
"""

from .metrics import (
    EMBEDDING_METRICS,
    METRICS,
    REGISTRY,
    TEXT_METRICS,
    Metric,
    MetricInput,
    adversarial_auroc,
    cosine_centroid,
    cosine_pairwise,
    distinct_n,
    diversity,
    embed,
    evaluate,
    format_table,
    higher_is_better,
    load_embedding_model,
    mauve,
    normalised_ngrams,
    self_bleu,
    tokenize,
    vendi,
)

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
