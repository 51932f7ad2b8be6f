"""One self-contained HTML page of an evaluation: `steer evaluate --html`, `steer sweep`, `steer tune`.

The page holds, with no external file or network access (images are base64 PNG `data:` URLs):

- the metric table, with 95 % intervals when the results carry them (`evaluate --ci`);
- heat maps: a sets × metrics map (each column coloured from worst to best, by the metric's
  direction) and any extra PNGs given (the γ × η maps of a sweep);
- the diversity–fidelity Pareto plot (`normalised_3grams` vs `cosine_centroid`, or points given);
- samples of each set side by side, invented words (`steer_plugins.apps.eval.lexicon`) highlighted.

Example:
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "r.html"
    >>> _ = write_report(out, title="t", results={"s": {"sample_size": 2, "distinct_2": 1.0}},
    ...                  samples={"s": ["Is it?", "Are they?"]}, reference=["Is it real?", "Is it so?"])
    >>> "<table" in out.read_text()
    True
"""

from __future__ import annotations

import base64
import html
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .eval.metrics import higher_is_better
from .eval.table import format_value, table_columns

__all__ = ["write_report", "render_report", "png_data_url", "highlight_invented", "heatmap_png"]

MAX_SAMPLES = 12
"""Samples shown per set."""
_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table.metrics{border-collapse:collapse;font-size:12.5px}
table.metrics th,table.metrics td{border:1px solid #ccc;padding:3px 6px;text-align:right}
table.metrics td:first-child,table.metrics th:first-child{text-align:left}
.ci{color:#777;font-size:11px}.notes li{margin:2px 0}
figure{display:inline-block;margin:6px;vertical-align:top}img{max-width:640px;border:1px solid #eee}
.samples{display:grid;grid-template-columns:repeat(auto-fill,minmax(280px,1fr));gap:12px}
.set{border:1px solid #ddd;border-radius:6px;padding:8px;background:#fafafa}
.set h3{font-size:13px;margin:0 0 6px}.set ol{margin:0;padding-left:20px;font-size:12.5px}
mark{background:#ffb4a8;padding:0 1px;border-radius:2px}
"""


def png_data_url(png: bytes | str | os.PathLike[str]) -> str:
    """A `data:image/png;base64,...` URL from PNG bytes or a PNG file."""
    data = png if isinstance(png, bytes) else Path(png).read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def highlight_invented(text: str, known: frozenset[str]) -> str:
    """`text`, HTML-escaped, with each invented word (not English, not in `known`) in `<mark>`."""
    import re

    from .eval.lexicon import MIN_WORD_LENGTH, is_english

    parts = []
    last = 0
    for m in re.finditer(r"[^\W\d_]+", text):
        word = m.group().lower()
        parts.append(html.escape(text[last : m.start()]))
        if len(word) >= MIN_WORD_LENGTH and word not in known and not is_english(word):
            parts.append(f'<mark title="invented word">{html.escape(m.group())}</mark>')
        else:
            parts.append(html.escape(m.group()))
        last = m.end()
    parts.append(html.escape(text[last:]))
    return "".join(parts)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fig_png(fig: Any) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    _plt().close(fig)
    return buf.getvalue()


def heatmap_png(results: Mapping[str, Mapping[str, Any]]) -> bytes | None:
    """Sets × metrics: each column coloured from its worst (dark) to best (light) set; None if < 1 cell."""
    import numpy as np

    plt = _plt()
    cols = table_columns(results)
    names = list(results)
    raw = np.array([[float(results[n].get(c, math.nan)) for c in cols] for n in names], dtype=float)
    if not cols or not names or not np.isfinite(raw).any():
        return None
    score = np.full_like(raw, np.nan)
    for j, metric in enumerate(cols):
        col = raw[:, j]
        lo, hi = (
            np.nanmin(col) if np.isfinite(col).any() else 0,
            np.nanmax(col) if np.isfinite(col).any() else 0,
        )
        frac = (col - lo) / (hi - lo) if hi > lo else np.full_like(col, 0.5)
        score[:, j] = frac if higher_is_better(metric) else 1 - frac
    fig, ax = plt.subplots(figsize=(1.0 * len(cols) + 3.0, 0.42 * len(names) + 1.8))
    ax.imshow(score, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), [n[-38:] for n in names], fontsize=8)
    for i in range(len(names)):
        for j in range(len(cols)):
            if math.isfinite(raw[i, j]):
                ax.text(j, i, f"{raw[i, j]:.3f}", ha="center", va="center", fontsize=7)
    ax.set_title("every metric, each column from worst (red) to best (green)", fontsize=9)
    fig.tight_layout()
    return _fig_png(fig)


def _pareto_png(points: Sequence[tuple[str, float, float]], x_label: str, y_label: str) -> bytes | None:
    from .sweep import plot_pareto

    finite = [p for p in points if math.isfinite(p[1]) and math.isfinite(p[2])]
    if not finite:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = plot_pareto(finite, Path(tmp) / "pareto.png", x_label=x_label, y_label=y_label)
        return path.read_bytes()


def _table_html(results: Mapping[str, Mapping[str, Any]]) -> str:
    cols = table_columns(results)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["set", "n", *cols])
    body = []
    for name, row in results.items():
        cells = []
        for c in cols:
            text = format_value(row, c)
            value, _, ci = text.partition(" [")
            cells.append(
                f"<td>{value}" + (f' <span class="ci">[{html.escape(ci)}</span>' if ci else "") + "</td>"
            )
        n = row.get("sample_size", "-")
        body.append(f"<tr><td>{html.escape(name)}</td><td>{n}</td>{''.join(cells)}</tr>")
    arrows = ", ".join(f"{c} {'↑' if higher_is_better(c) else '↓'}" for c in cols)
    return (
        f'<table class="metrics" id="metrics"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
        f'<p class="ci">Better is: {html.escape(arrows)}. Brackets: 95 % interval.</p>'
    )


def _samples_html(samples: Mapping[str, Sequence[str]], reference: Sequence[str], per_set: int) -> str:
    from .eval.lexicon import vocabulary

    known = vocabulary(reference)
    blocks = []
    for name, texts in [*samples.items(), ("real (reference)", list(reference))]:
        items = "".join(f"<li>{highlight_invented(t, known)}</li>" for t in list(texts)[:per_set])
        blocks.append(f'<div class="set"><h3>{html.escape(name)}</h3><ol>{items}</ol></div>')
    return f'<div class="samples">{"".join(blocks)}</div>'


def render_report(
    *,
    title: str,
    results: Mapping[str, Mapping[str, Any]],
    samples: Mapping[str, Sequence[str]],
    reference: Sequence[str],
    notes: Sequence[str] = (),
    pareto: Sequence[tuple[str, float, float]] | None = None,
    images: Mapping[str, bytes | str | os.PathLike[str]] | None = None,
    x_label: str = "normalised_3grams",
    y_label: str = "cosine_centroid",
    per_set: int = MAX_SAMPLES,
) -> str:
    """The HTML page as a string (see `write_report` for the arguments)."""
    if pareto is None:
        pareto = [
            (name, float(r.get(x_label, math.nan)), float(r.get(y_label, math.nan)))
            for name, r in results.items()
            if y_label in r
        ]
    figures: list[tuple[str, bytes | str | os.PathLike[str]]] = []
    if (png := _pareto_png(pareto, x_label, y_label)) is not None:
        figures.append(("diversity vs fidelity (Pareto front in red)", png))
    if (png := heatmap_png(results)) is not None:
        figures.append(("heat map: every set and metric", png))
    figures += list((images or {}).items())
    figs = "".join(
        f'<figure><img alt="{html.escape(cap)}" src="{png_data_url(src)}"><figcaption>{html.escape(cap)}'
        "</figcaption></figure>"
        for cap, src in figures
    )
    notes_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
        f'<ul class="notes">{notes_html}</ul><h2>Metrics</h2>{_table_html(results)}'
        f"<h2>Plots</h2>{figs or '<p>No plot: no finite diversity/fidelity pair.</p>'}"
        f"<h2>Samples (invented words <mark>marked</mark>)</h2>{_samples_html(samples, reference, per_set)}"
        "</body></html>\n"
    )


def write_report(path: str | os.PathLike[str], **kwargs: Any) -> Path:
    """Write `render_report(**kwargs)` to `path` (folders created); returns the path.

    Args:
        path: the `.html` file to write.
        **kwargs: `title`; `results` (set → metric row, as `evaluate` / `evaluate_with_ci` return);
            `samples` (set → texts); `reference` (real texts: shown, and the known vocabulary of
            the highlighting); optional `notes` (lines), `pareto` ((label, x, y) points; default
            `normalised_3grams` vs `cosine_centroid` of every row), `images` (caption → PNG bytes
            or file, e.g. a sweep's heat maps), `x_label`, `y_label`, `per_set`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(**kwargs), encoding="utf-8")
    return path
