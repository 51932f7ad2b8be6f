"""The prompt template: checked once when the augmenter is built, filled once per input row."""

from __future__ import annotations

import string
from typing import Any

__all__ = ["fill_prompt", "template_columns"]


def template_columns(prompt: Any) -> list[str]:
    """The columns a `str.format` template names, sorted (`{meta[lang]}` names `meta`).

    Raises:
        ValueError: not a non-empty string, not a valid template, or a positional field (`{}`, `{0}`).
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(
            f"`prompt` must be a non-empty template string such as 'Write about {{topic}}:', got {prompt!r}"
        )
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(prompt) if f is not None]
    except ValueError as err:
        raise ValueError(f"`prompt` is not a valid str.format template ({err}): {prompt!r}") from err
    if any(f == "" or f.isdigit() for f in fields):
        raise ValueError(f"`prompt` must name its columns, e.g. '{{topic}}', not '{{}}': {prompt!r}")
    return sorted({f.split(".")[0].split("[")[0] for f in fields})


def fill_prompt(prompt: str, row: dict[str, Any]) -> str:
    """`prompt` filled from `row`'s columns.

    Raises:
        ValueError: the row lacks a value the template needs, or the result is blank.
    """
    try:
        text = prompt.format(**row)
    except (KeyError, IndexError, AttributeError) as err:
        raise ValueError(f"`prompt` {prompt!r} could not be filled from row {row!r}: {err}") from err
    if not text.strip():
        raise ValueError(f"`prompt` {prompt!r} renders to empty text for row {row!r}")
    return text
