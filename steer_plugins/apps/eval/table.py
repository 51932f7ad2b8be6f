"""Plain-text and Markdown tables of `evaluate` results, with intervals when the rows carry them.

Example:
    >>> print(format_table({"s": {"sample_size": 2, "distinct_2": 0.5}}))
    set  sample_size  distinct_2
    s              2       0.500
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .metrics import METRICS

__all__ = ["format_value", "format_table", "markdown_table", "table_columns"]


def table_columns(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The metric columns present in any row, in registry order."""
    return [m for m in METRICS if any(m in r for r in results.values())]


def format_value(row: Mapping[str, Any], metric: str, *, digits: int = 3) -> str:
    """`0.912`, or `0.912 [0.901, 0.925]` when `row["ci"]` has the metric; `-` when absent or NaN."""
    value = row.get(metric)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{value:.{digits}f}"
    lo, hi = (row.get("ci") or {}).get(metric, (float("nan"), float("nan")))
    if math.isfinite(lo) and math.isfinite(hi):
        text += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return text


def format_table(results: Mapping[str, Mapping[str, Any]], *, digits: int = 3) -> str:
    """A plain-text table: one row per set, one column per metric present (intervals in brackets)."""
    columns = ["sample_size", *table_columns(results)]
    names = list(results)
    cells = {
        name: [
            str(int(results[name]["sample_size"]))
            if col == "sample_size" and "sample_size" in results[name]
            else format_value(results[name], col, digits=digits)
            for col in columns
        ]
        for name in names
    }
    widths = [max([len(c), *(len(cells[n][j]) for n in names)]) for j, c in enumerate(columns)]
    name_width = max([len("set"), *(len(n) for n in names)])
    header = "  ".join(["set".ljust(name_width)] + [c.rjust(w) for c, w in zip(columns, widths, strict=True)])
    lines = [header]
    for name in names:
        row = [c.rjust(w) for c, w in zip(cells[name], widths, strict=True)]
        lines.append("  ".join([name.ljust(name_width), *row]))
    return "\n".join(lines)


def markdown_table(
    results: Mapping[str, Mapping[str, Any]], *, columns: Sequence[str] | None = None, digits: int = 3
) -> str:
    """A Markdown table of `results` (intervals in brackets), columns default to every metric present."""
    cols = list(columns) if columns is not None else table_columns(results)
    lines = ["| set | n | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for name, row in results.items():
        cells = [format_value(row, c, digits=digits) for c in cols]
        lines.append(f"| {name} | {row.get('sample_size', '-')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
