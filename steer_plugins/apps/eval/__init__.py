"""Diversity and fidelity metrics for synthetic text (extra `[eval]`): see `steer_plugins.apps.eval.metrics`.

`REGISTRY` holds one `Metric` record per metric (name, function, whether it needs embeddings,
direction); `METRICS`, `TEXT_METRICS` and `EMBEDDING_METRICS` are its names. Modules: `metrics`
(registry, n-gram metrics, `evaluate`), `embedding` (MiniLM metrics), `lexicon` (invented words,
completion), `bootstrap` (95 % intervals, `evaluate_with_ci`), `table` (text and Markdown tables).
"""

from . import metrics
from .bootstrap import DEFAULT_RESAMPLES, evaluate_with_ci, interval, replicates
from .lexicon import (
    completion_rate,
    invented_word_rate,
    invented_words,
    own_invented_word_rate,
    read_finish_reasons,
)
from .metrics import *  # noqa: F403  (every name of `metrics.__all__`: that list is the source)
from .table import format_table, format_value, markdown_table

__all__ = [
    *metrics.__all__,
    "DEFAULT_RESAMPLES",
    "evaluate_with_ci",
    "replicates",
    "interval",
    "format_table",
    "format_value",
    "markdown_table",
    "invented_word_rate",
    "invented_words",
    "own_invented_word_rate",
    "completion_rate",
    "read_finish_reasons",
]
