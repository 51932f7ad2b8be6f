"""One `map(batched=True)` batch in and out: its columns checked and cut into rows, and the output
columns (every input column, `output_column` and `ADDED_COLUMNS`) filled row by row.

The output goes back in the batch object `map` passed in (`return_batch`), the way a datasets map
function that edits its batch in place does: `Dataset.map` and `IterableDataset.map` then apply
their own `remove_columns=[...]` to the grown rows (a new dict would re-add the removed columns).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

__all__ = ["ADDED_COLUMNS", "OutputColumns", "batch_rows", "check_output_values", "return_batch"]

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
        schema: a `schema.SchemaColumns`: its field columns (and `steer_parsed`) are appended.
    """

    def __init__(self, columns: list[str], output_column: str, schema: Any = None) -> None:
        self.output_column = output_column
        self.schema = schema
        extra = () if schema is None else schema.columns
        names = columns + [c for c in (output_column, *ADDED_COLUMNS, *extra) if c not in columns]
        self.data: dict[str, list[Any]] = {c: [] for c in names}

    def add_original(self, row: dict[str, Any]) -> None:
        """`row` as it came in, marked `synthetic=False`."""
        fields = {} if self.schema is None else self.schema.values(None)
        self._add(row, {self.output_column: row.get(self.output_column), **fields}, (False, None, [], None))

    def add_synthetic(self, row: dict[str, Any], record: dict[str, Any]) -> None:
        """`row` with `output_column` set to one generated output (`record`, see `output_record`)."""
        added = (True, record["config"], list(record["negatives"]), record["seed"])
        fields = {} if self.schema is None else self.schema.values(record)
        self._add(row, {self.output_column: record["text"], **fields}, added)

    def _add(self, row: dict[str, Any], output: dict[str, Any], added: tuple) -> None:
        values = {**row, **output, **dict(zip(ADDED_COLUMNS, added, strict=True))}
        for c, col in self.data.items():
            col.append(values[c])


def return_batch(batch: Any, data: dict[str, list[Any]]) -> Any:
    """`data` as the map function's result: written into `batch` (every column replaced, so the
    batch now holds the grown rows) when `batch` is a mutable mapping, else `data` itself."""
    if not isinstance(batch, MutableMapping):
        return data
    for name in [c for c in batch if c not in data]:
        del batch[name]
    for name, values in data.items():
        batch[name] = values
    return batch
