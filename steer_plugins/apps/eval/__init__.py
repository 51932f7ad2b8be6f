"""Diversity and fidelity metrics for synthetic text (extra `[eval]`): see `steer_plugins.apps.eval.metrics`.

`REGISTRY` holds one `Metric` record per metric (name, function, whether it needs embeddings,
direction); `METRICS`, `TEXT_METRICS` and `EMBEDDING_METRICS` are its names. Modules: `metrics`
(registry, n-gram metrics, `evaluate`), `embedding` (MiniLM metrics), `lexicon` (invented words,
completion), `bootstrap` (95 % intervals, `evaluate_with_ci`), `table` (text and Markdown tables).
"""

from .bootstrap import DEFAULT_RESAMPLES, evaluate_with_ci, interval, replicates
from .lexicon import (
    completion_rate,
    invented_word_rate,
    invented_words,
    own_invented_word_rate,
    read_finish_reasons,
)
from .metrics import (
    EMBEDDING_METRICS,
    METRICS,
    REGISTRY,
    TEXT_METRICS,
    Metric,
    MetricInput,
    adversarial_auroc,
    compute,
    cosine_centroid,
    cosine_pairwise,
    distinct_n,
    diversity,
    embed,
    evaluate,
    higher_is_better,
    load_embedding_model,
    mauve,
    normalised_ngrams,
    prepare,
    self_bleu,
    tokenize,
    vendi,
)
from .table import format_table, format_value, markdown_table

__all__ = [
    "Metric",
    "MetricInput",
    "REGISTRY",
    "METRICS",
    "TEXT_METRICS",
    "EMBEDDING_METRICS",
    "DEFAULT_RESAMPLES",
    "higher_is_better",
    "evaluate",
    "evaluate_with_ci",
    "prepare",
    "compute",
    "replicates",
    "interval",
    "format_table",
    "format_value",
    "markdown_table",
    "tokenize",
    "normalised_ngrams",
    "diversity",
    "distinct_n",
    "self_bleu",
    "invented_word_rate",
    "invented_words",
    "own_invented_word_rate",
    "completion_rate",
    "read_finish_reasons",
    "embed",
    "load_embedding_model",
    "vendi",
    "cosine_pairwise",
    "cosine_centroid",
    "mauve",
    "adversarial_auroc",
]
