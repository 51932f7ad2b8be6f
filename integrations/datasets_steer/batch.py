"""One `map(batched=True)` batch in and out: its columns checked and cut into rows, and the output
columns (every input column, `output_column` and `ADDED_COLUMNS`) filled row by row."""

from __future__ import annotations

from typing import Any

__all__ = ["ADDED_COLUMNS", "OutputColumns", "batch_rows", "check_output_values"]

#: Columns every output row gets (besides `output_column`).
ADDED_COLUMNS = ("synthetic", "steer_config", "steer_negatives", "steer_seed")


def batch_rows(batch: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """The column names of a `map(batched=True)` batch (a dict of column lists or datasets'
    `LazyBatch`) and its rows.

    Raises:
        TypeError: not a batch of columns (e.g. `map` without `batched=True`), or columns of unequal
            length.
    """
    if not isinstance(batch, dict) and hasattr(batch, "keys"):
        batch = {k: batch[k] for k in batch}  # datasets LazyBatch
    if not isinstance(batch, dict):
        raise TypeError(
            f"SteerAugmenter expects a batch dict of column lists (use ds.map(aug, batched=True)), got "
            f"{type(batch).__name__}"
        )
    if any(isinstance(v, (str, bytes)) or not hasattr(v, "__len__") for v in batch.values()):
        raise TypeError(
            "SteerAugmenter needs ds.map(aug, batched=True): it got one row, not a batch of columns"
        )
    batch = {k: list(v) for k, v in batch.items()}
    lengths = {len(v) for v in batch.values()}
    if len(lengths) > 1:
        raise TypeError(f"every column of a batch must have the same length, got lengths {sorted(lengths)}")
    num = lengths.pop() if lengths else 0
    columns = list(batch)
    return columns, [{c: batch[c][i] for c in columns} for i in range(num)]


def check_output_values(rows: list[dict[str, Any]], output_column: str) -> None:
    """An existing `output_column` must hold text (or None): generated text replaces it."""
    bad = next(
        (
            r[output_column]
            for r in rows
            if r.get(output_column) is not None and not isinstance(r[output_column], str)
        ),
        None,
    )
    if bad is not None:
        raise TypeError(
            f"`output_column` {output_column!r} holds {type(bad).__name__} values ({bad!r}), not "
            "text: generated text cannot go there; pick a text column or a new column name"
        )


class OutputColumns:
    """The columns a batch returns, filled one output row at a time.

    Args:
        columns: the input batch's columns (kept, in order).
        output_column: where generated text goes (an input column, or a new one appended).
    """

    def __init__(self, columns: list[str], output_column: str) -> None:
        self.output_column = output_column
        names = columns + [c for c in (output_column, *ADDED_COLUMNS) if c not in columns]
        self.data: dict[str, list[Any]] = {c: [] for c in names}

    def add_original(self, row: dict[str, Any]) -> None:
        """`row` as it came in, marked `synthetic=False`."""
        self._add(row, {self.output_column: row.get(self.output_column)}, (False, None, [], None))

    def add_synthetic(self, row: dict[str, Any], record: dict[str, Any]) -> None:
        """`row` with `output_column` set to one generated output (`record`, see `output_record`)."""
        added = (True, record["config"], list(record["negatives"]), record["seed"])
        self._add(row, {self.output_column: record["text"]}, added)

    def _add(self, row: dict[str, Any], output: dict[str, Any], added: tuple) -> None:
        values = {**row, **output, **dict(zip(ADDED_COLUMNS, added, strict=True))}
        for c, col in self.data.items():
            col.append(values[c])
