"""Checks on what the augmenter is given: the dataset's columns, its real texts, and whether the
negative pool can serve K negatives, all before any model loads or any worker starts."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from steer_plugins import SteerConfig, SteerEngine

__all__ = ["check_args", "check_columns", "check_pool_size", "check_texts", "read_real_texts"]


def check_args(n: Any, expert: Any, engine: Any, engine_batch_size: Any) -> None:
    """The augmenter's `n`, model source (`expert` xor `engine`) and `engine_batch_size`.

    Raises:
        ValueError: `n` or `engine_batch_size` below 1, or not exactly one of `expert`/`engine`.
        TypeError: `engine` is not a `SteerEngine`.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` (synthetic rows per input row) must be an integer >= 1, got {n!r}")
    if (expert is None) == (engine is None):
        raise ValueError(
            "pass exactly one of `expert` (a model id, folder or factory, loaded lazily per process) "
            f"or `engine` (a SteerEngine already in memory); got expert={expert!r}, engine={engine!r}"
        )
    if engine is not None and not isinstance(engine, SteerEngine):
        raise TypeError(f"`engine` must be a SteerEngine, got {type(engine).__name__}")
    if isinstance(engine_batch_size, bool) or not isinstance(engine_batch_size, int) or engine_batch_size < 1:
        raise ValueError(f"`engine_batch_size` must be an integer >= 1, got {engine_batch_size!r}")


def check_texts(texts: list[Any], what: str) -> list[str]:
    """The non-blank strings of `texts` (`what` names them in the error for a non-string).

    Raises:
        TypeError: a value that is neither a string nor None.
    """
    for i, t in enumerate(texts):
        if t is not None and not isinstance(t, str):
            raise TypeError(
                f"{what} must hold text, but row {i} is a {type(t).__name__} ({t!r}): pick a text "
                "column as `real_column`"
            )
    return [t for t in texts if t and t.strip()]


def check_columns(
    names: Sequence[str],
    *,
    prompt: str,
    prompt_fields: Sequence[str],
    real_column: str,
    key_column: str | None,
    need_real: bool,
) -> None:
    """Every column the prompt (and `key_column`, and with `need_real` the `real_column`) names is
    in `names`, or a `ValueError` listing the available ones."""
    missing = [c for c in prompt_fields if c not in names]
    if missing:
        raise ValueError(
            f"`prompt` {prompt!r} uses column(s) {missing} that the dataset does not have; "
            f"available columns: {sorted(names)}"
        )
    if need_real and real_column not in names:
        raise ValueError(
            f"`real_column` {real_column!r} is not a column of the dataset; available columns: "
            f"{sorted(names)}. Name the column of real texts that seeds the negative pool"
        )
    if key_column is not None and key_column not in names:
        raise ValueError(f"`key_column` {key_column!r} is missing; available columns: {sorted(names)}")


def _check_text_features(dataset: Any, columns: set[str], real_column: str) -> None:
    features = getattr(dataset, "features", None) or {}
    for col in columns:
        dtype = getattr(features.get(col), "dtype", None)
        if features and col in features and dtype not in ("string", "large_string"):
            raise TypeError(
                f"column {col!r} must hold text (a string column) to be used as "
                f"{'`real_column`' if col == real_column else '`output_column`'}, but its type is "
                f"{features.get(col)}: pick a text column or cast it first (ds.cast_column)"
            )


def read_real_texts(
    dataset: Any, *, real_column: str, output_column: str, max_rows: int | None
) -> tuple[list[str], list[Any], int]:
    """The columns, rows read and real texts of `dataset` (a `Dataset`, or a streaming
    `IterableDataset` read up to `max_rows` rows): `(columns, real_texts, rows_read)`.

    Raises:
        TypeError: not a dataset; a streaming dataset without `max_rows`; a non-text column.
        ValueError: an empty dataset.
    """
    if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1):
        raise ValueError(f"`max_rows` must be an integer >= 1, got {max_rows!r}")
    if not hasattr(dataset, "__len__"):  # a streaming IterableDataset: no length, maybe no schema
        if max_rows is None or not hasattr(dataset, "__iter__"):
            raise TypeError(
                f"a streaming {type(dataset).__name__} has no length and cannot be read whole: pass "
                "real_texts=[...] (e.g. [r['text'] for r in ds.take(1000)]) to the augmenter, or read a "
                "bounded sample with aug.fit(ds, max_rows=1000) / from_dataset(ds, ..., max_rows=1000)"
            )
        rows = list(itertools.islice(iter(dataset), max_rows))
        names = list(getattr(dataset, "column_names", None) or (rows[0] if rows else []))
        texts = [r.get(real_column) for r in rows] if real_column in names else []
        num = len(rows)
    else:
        names = list(getattr(dataset, "column_names", None) or [])
        num = len(dataset) if names else 0
        if names and num and real_column in names:
            part = dataset if max_rows is None or max_rows >= num else dataset.select(range(max_rows))
            texts = list(part[real_column])
        else:
            texts = []
    if not names:
        raise TypeError(f"`fit` expects a datasets.Dataset with columns, got {type(dataset).__name__}")
    if num == 0:
        raise ValueError(
            "the dataset is empty (0 rows): there is nothing to augment and no real text to seed "
            "the negative pool; check the split/filter that produced it"
        )
    _check_text_features(dataset, {real_column, output_column} & set(names), real_column)
    return names, texts, num


def check_pool_size(real_texts: Sequence[str], config_fields: Mapping[str, Any]) -> None:
    """With negatives on, the real pool must hold at least K (`num_negatives`) examples: the first
    prompt draws K from it.

    Raises:
        ValueError: K larger than the pool, naming both numbers and the fixes.
    """
    cfg = SteerConfig().merged(**config_fields)
    if cfg.eta > 0 and 0 < len(real_texts) < cfg.num_negatives:
        raise ValueError(
            f"`num_negatives` (K={cfg.num_negatives}) is larger than the real negative pool "
            f"({len(real_texts)} non-blank texts): lower num_negatives, give more real examples "
            "(real_texts=... or fit on a bigger dataset), or set eta=0"
        )
