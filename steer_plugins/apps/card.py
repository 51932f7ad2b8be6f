"""Dataset cards: a `README.md` next to generated data, in the Hugging Face dataset-card format.

The card has YAML front matter (`license`, `task_categories`, `size_categories`, `tags`, and
`configs` whose `data_files` name the data file, so the Hub's viewer and `load_dataset(folder)` find
it) and a Markdown body with the provenance: settings, seed, model names and weight fingerprints,
row counts, deduplication counts and metrics when computed. `huggingface-cli upload` or
`push_to_hub` of the folder publishes the data with it; nothing here calls the Hub.

`card_path(out)` picks where the card of data file `out` goes: `README.md` in its folder, unless a
README that steer-plugins did not write (or the card of another data file) is already there, in
which case `<out>.README.md` (a card is never written over somebody's README).

Example:
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "synth.jsonl"
    >>> path = write_card(card_path(out), data_files=out, num_rows=12, seed=0,
    ...                   settings={"gamma": 0.2, "eta": 0.6}, models={"expert": {"name": "tiny"}})
    >>> path.name, 'size_categories:\\n- "n<1K"' in path.read_text()
    ('README.md', True)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["CARD_MARKER", "card_path", "render_card", "size_category", "write_card"]

CARD_MARKER = "<!-- dataset card written by steer-plugins (steer_plugins.apps.card) -->"
"""A line every card written here carries: such a README may be rewritten, no other."""
_SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"))


def size_category(num_rows: int) -> str:
    """The Hub's `size_categories` value for `num_rows` rows (`n<1K`, `1K<n<10K`, ...)."""
    for limit, name in _SIZES:
        if num_rows < limit:
            return name
    return "1M<n<10M" if num_rows < 10_000_000 else "n>10M"


def card_path(out: str | os.PathLike[str]) -> Path:
    """Where the card of data file `out` goes: `README.md` beside it, or `<out>.README.md` when that
    README was not written by steer-plugins or describes another data file."""
    out = Path(out)
    readme = out.parent / "README.md"
    if not readme.exists():
        return readme
    try:
        text = readme.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return out.with_name(out.name + ".README.md")
    if CARD_MARKER in text and f"    - {json.dumps(out.name)}\n" in text:
        return readme
    return out.with_name(out.name + ".README.md")


def _yaml_list(key: str, values: Sequence[str]) -> list[str]:
    return [f"{key}:"] + [f"- {json.dumps(str(v))}" for v in values]


def _front_matter(
    data_files: Sequence[str],
    num_rows: int,
    license: str,
    task_categories: Sequence[str],
    tags: Sequence[str],
) -> list[str]:
    lines = ["---", f"license: {json.dumps(license)}"]
    lines += _yaml_list("task_categories", task_categories)
    lines += _yaml_list("size_categories", [size_category(num_rows)])
    lines += _yaml_list("tags", tags)
    lines += ["configs:", '- config_name: "default"', "  data_files:", '  - split: "train"']
    lines += ["    path:"] + [f"    - {json.dumps(f)}" for f in data_files]
    return [*lines, "---"]


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return "`" + text.replace("|", "\\|").replace("`", "'").replace("\n", " ") + "`"


def _table(title: str, rows: Mapping[str, Any] | None) -> list[str]:
    if not rows:
        return []
    return ["", f"## {title}", "", "| name | value |", "| --- | --- |"] + [
        f"| {k} | {_cell(v)} |" for k, v in rows.items()
    ]


def _models_section(models: Mapping[str, Mapping[str, Any]] | None) -> list[str]:
    if not models:
        return []
    lines = ["", "## Models", "", "| role | name | weights fingerprint |", "| --- | --- | --- |"]
    for role, info in models.items():
        lines.append(f"| {role} | {_cell(info.get('name', ''))} | {_cell(info.get('fingerprint', 'n/a'))} |")
    return lines


def render_card(
    *,
    data_files: Sequence[str],
    num_rows: int,
    title: str = "Synthetic data generated with STEER",
    description: str | None = None,
    license: str = "other",
    task_categories: Sequence[str] = ("text-generation",),
    tags: Sequence[str] = ("synthetic", "steer"),
    settings: Mapping[str, Any] | None = None,
    seed: int | None = None,
    models: Mapping[str, Mapping[str, Any]] | None = None,
    counts: Mapping[str, Any] | None = None,
    dedup: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    command: str | None = None,
) -> str:
    """The card's text (front matter and body); see `write_card` for the arguments."""
    lines = _front_matter(data_files, num_rows, license, task_categories, tags)
    lines += ["", CARD_MARKER, "", f"# {title}", ""]
    lines.append(
        description
        or "Synthetic examples generated with STEER decoding (arXiv 2308.07645: contrastive expert "
        "guidance and negative prompting) by steer-plugins."
    )
    lines += ["", f"Rows: **{num_rows}** in {', '.join(f'`{f}`' for f in data_files)}. "]
    lines[-1] += f"Seed: `{seed}`." if seed is not None else "Seed: none (fresh entropy; not reproducible)."
    if command:
        lines += ["", "Made with:", "", "```bash", command, "```"]
    lines += _models_section(models)
    lines += _table("Settings", settings)
    lines += _table("Counts", counts)
    lines += _table("Deduplication", dedup)
    lines += _table("Metrics", metrics)
    first = data_files[0] if data_files else "data.jsonl"
    kind = "parquet" if first.endswith(".parquet") else "csv" if first.endswith(".csv") else "json"
    lines += ["", "## Loading", "", "```python", "from datasets import load_dataset", ""]
    lines += [f'ds = load_dataset("{kind}", data_files="{first}", split="train")', "```", ""]
    return "\n".join(lines)


def write_card(
    path: str | os.PathLike[str],
    *,
    data_files: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    num_rows: int,
    **fields: Any,
) -> Path:
    """Write a Hugging Face dataset card to `path` (usually `card_path(out)`).

    Args:
        path: the card file; its folder is the dataset's root.
        data_files: the data file(s) the card describes; named relative to the card's folder.
        num_rows: rows in the data (sets `size_categories`).
        **fields: `title`, `description`, `license` (default `"other"`), `task_categories`
            (default text-generation), `tags`, `settings` (name → value), `seed`, `models`
            (role → `{"name", "fingerprint"}`), `counts`, `dedup`, `metrics` (name → value) and
            `command` (the command line that made the data); see `render_card`.

    Returns:
        The card's path.

    Raises:
        OSError: the card could not be written.
    """
    path = Path(path)
    files = [data_files] if isinstance(data_files, (str, os.PathLike)) else list(data_files)
    rel = [os.path.relpath(Path(f).resolve(), path.parent.resolve()) for f in files]
    text = render_card(data_files=[r.replace(os.sep, "/") for r in rel], num_rows=num_rows, **fields)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
