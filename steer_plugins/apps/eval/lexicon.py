"""Invented words and completed outputs: two failure signals of over-steered decoding.

- `invented_word_rate`: the share of generated words that are neither English words nor words of
  the real examples. A word is English when `wordfreq.zipf_frequency(word, "en") > 0` (wordfreq's
  English list, a maintained package in the `[eval]` extra); the real examples' vocabulary keeps
  domain terms the list lacks ("exomoons", "Zeldovich") from counting as invented. STEER pushed
  too far makes up words ("supernovova", "magnetohydreuses"); plain sampling from the expert rarely does.
- `own_invented_word_rate`: the same rate for the real examples themselves, each scored against
  the vocabulary of the *other* real examples (leave-one-out), so the reference gets the baseline
  it would get as a held-out set: rare but real words that occur in one example only count.
- `completion_rate`: the share of outputs that ended at a stop (EOS, a stop string) rather than at
  the length limit; from the `finish_reason` of each generated row ("stop" vs "length").

Words are lower-cased runs of letters (`[^\\W\\d_]+`, so "H2O" gives "h" and "o"); words of one
letter are not scored (initials, symbols, variables).

Example:
    >>> invented_word_rate(["Do supernovova explode?"], ["Stars explode."])
    0.3333333333333333
    >>> completion_rate(["stop", "length", "stop", "stop"])
    0.75
"""

from __future__ import annotations

import functools
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = [
    "words",
    "is_english",
    "vocabulary",
    "invented_words",
    "invented_word_rate",
    "own_invented_word_rate",
    "completion_rate",
    "read_finish_reasons",
]

_WORD_RE = re.compile(r"[^\W\d_]+")
_EXTRA = "pip install 'steer-plugins[eval]'"
MIN_WORD_LENGTH = 2
"""Words shorter than this are not scored."""


def words(text: str) -> list[str]:
    """The scored words of `text`: lower-cased letter runs of at least `MIN_WORD_LENGTH` letters.

    Example:
        >>> words("Is H-alpha emission from Be-stars variable?")
        ['is', 'alpha', 'emission', 'from', 'be', 'stars', 'variable']
    """
    return [w for w in _WORD_RE.findall(text.lower()) if len(w) >= MIN_WORD_LENGTH]


@functools.lru_cache(maxsize=200_000)
def is_english(word: str) -> bool:
    """True when `word` is in wordfreq's English list (Zipf frequency above 0).

    Raises:
        ImportError: wordfreq is not installed (it is in the `[eval]` extra).
    """
    try:
        from wordfreq import zipf_frequency
    except ImportError as e:
        raise ImportError(f"the invented-word rate needs `wordfreq`, which is not installed: {_EXTRA}") from e
    return zipf_frequency(word, "en") > 0


def vocabulary(texts: Iterable[str]) -> frozenset[str]:
    """Every scored word of `texts` (see `words`)."""
    return frozenset(w for text in texts for w in words(text))


@functools.lru_cache(maxsize=8)
def _cached_vocabulary(texts: tuple[str, ...]) -> frozenset[str]:
    """`vocabulary` of the same reference, once (the bootstrap asks for it hundreds of times)."""
    return vocabulary(texts)


def invented_words(text: str, known: frozenset[str] | set[str]) -> list[str]:
    """The words of `text` that are neither English (`is_english`) nor in `known`, in order.

    Example:
        >>> invented_words("Do magnetohydreuses host exomoons?", frozenset({"exomoons"}))
        ['magnetohydreuses']
    """
    return [w for w in words(text) if w not in known and not is_english(w)]


def _rate(invented: int, total: int) -> float:
    return invented / total if total else float("nan")


def invented_word_rate(texts: Sequence[str], reference: Sequence[str] | frozenset[str]) -> float:
    """Share of the words of `texts` that are neither English nor in the reference's vocabulary.

    Args:
        texts: the generated texts.
        reference: the real examples (their words are known), or a ready `vocabulary(...)`.

    Returns:
        invented words / scored words over all texts (word-weighted); NaN when there are no words.
    """
    known = reference if isinstance(reference, frozenset) else _cached_vocabulary(tuple(reference))
    total = invented = 0
    for text in texts:
        ws = words(text)
        total += len(ws)
        invented += sum(1 for w in ws if w not in known and not is_english(w))
    return _rate(invented, total)


def own_invented_word_rate(texts: Sequence[str], corpus: Sequence[str] | None = None) -> float:
    """The invented-word rate of real examples, each scored against the other examples' vocabulary.

    A word of a text counts as invented when wordfreq does not know it and no other text of
    `corpus` uses it (leave-one-out), which is what the text would score as a held-out set.

    Args:
        texts: real examples to score, each one of `corpus`.
        corpus: every real example (the vocabulary); default `texts` itself.
    """
    doc_freq = Counter(w for t in (texts if corpus is None else corpus) for w in set(words(t)))
    total = invented = 0
    for text in texts:
        ws = words(text)
        total += len(ws)
        # a word used by this text alone is unknown once the text is left out
        invented += sum(1 for w in ws if doc_freq[w] <= 1 and not is_english(w))
    return _rate(invented, total)


def completion_rate(finish_reasons: Sequence[str | None] | None) -> float:
    """Share of outputs whose `finish_reason` is "stop" (ended at EOS or a stop string).

    Returns NaN when no finish reason is known (None, empty, or every entry None): plain text files
    do not record how each output ended.
    """
    known = [r for r in (finish_reasons or ()) if r is not None]
    if not known:
        return float("nan")
    return sum(1 for r in known if r == "stop") / len(known)


def read_finish_reasons(path: str | os.PathLike[str]) -> list[str | None] | None:
    """Each row's `finish_reason` in a JSONL file of generated rows (aligned with `read_texts`).

    Returns None for a plain-text file or a JSONL file none of whose rows has the field.
    """
    from ..data_io import read_jsonl, read_lines

    first = next((line for _, line in read_lines(path) if line.strip()), "")
    if Path(path).suffix.lower() not in (".jsonl", ".ndjson") and not first.lstrip().startswith("{"):
        return None
    reasons = [row.get("finish_reason") for row in read_jsonl(path)]
    return reasons if any(r is not None for r in reasons) else None
