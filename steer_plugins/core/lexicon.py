"""Known words: a steered row writes only words that exist (`SteerConfig.known_words`).

STEER's negative push can start a word with a piece the expert finds unlikely; the expert then
spells on from there into a word no one uses ("magnetospherical", "Seyfren"). A spelling floor on
the expert's pieces cannot stop it when the right piece is itself rare in that context (the expert
gives "ert" of "Seyfert" 0.024 times its best piece). A lexicon can: with `known_words`, a steered
row may only take a token after which every word it has finished is a known word and the word it
is in is the start of one, and never writes the same word twice in a row (`WordGuard`). Known words are wordfreq's English list (the list the invented-word rate
of `steer evaluate` uses) and the words of the real examples and the prompt, so domain terms the
list lacks stay allowed.

The check runs on the expert's `CANDIDATES` most likely tokens of each steered row (the head mask and
top-k keep far fewer), in Python, before the branches are combined: the spelling floor and the
head mask then measure from the best *allowed* token. A row with no allowed candidate (a word that
is already unknown, e.g. after a fallback step) is left unguarded for that step. Words are runs of
letters, lower-cased, as `steer_plugins.apps.eval.lexicon.words` scores them; one-letter words
are always allowed. Each token's text is decoded alone, so a character split across byte-level
tokens reads as U+FFFD (a word break); rows under a grammar (`constraint`) are left to it.

Example:
    >>> known = KnownWords(["supernova", "seyfert"])
    >>> known.is_word("supernova"), known.is_prefix("seyf"), known.is_prefix("seyfr")
    (True, True, False)
    >>> guard = WordGuard(known, [" Sey", "f", "ert", "ren", "?"])
    >>> guard.advance(0); guard.advance(1)
    >>> [guard.allows(t) for t in (2, 3, 4)]  # "Seyfert" goes on; "Seyfren" and "Seyf?" do not
    [True, False, False]
"""

from __future__ import annotations

import bisect
import functools
import re
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import torch

__all__ = [
    "CANDIDATES",
    "KnownWords",
    "WordGuard",
    "english_words",
    "guard_bias",
    "known_words_for",
    "token_texts",
]

CANDIDATES = 64
"""How many of the expert's most likely tokens the guard checks per step (α 0.05 keeps at most 20)."""

MIN_WORD_LENGTH = 2
"""Shorter words are always allowed (initials, symbols), as the invented-word rate does not score them."""

MEMO_SIZE = 200_000
"""Answers `KnownWords.takes` keeps per word list (about 30 MB), cleared when full."""

_INSTALL = "pip install wordfreq (a dependency of steer-plugins), or set known_words=False"


class KnownWords:
    """A set of lower-cased words that answers "is this a word", "does a word start so" and "may a
    word in progress take this text" (memoised: every prompt sharing these words shares the answers).

    Args:
        words: words (any case; only letter runs are kept, lower-cased).
        parent: another `KnownWords` whose words count too (the English list under a pool's words).
    """

    def __init__(self, words: Iterable[str], parent: KnownWords | None = None) -> None:
        own = {w.lower() for w in words if w and w.isalpha()}
        if parent is not None:
            own = {w for w in own if not parent.is_word(w)}
        self._set = frozenset(own)
        self._sorted = sorted(own)
        self.parent = parent
        self._takes: dict[tuple[str, str], bool] = {}

    def __len__(self) -> int:
        return len(self._set) + (len(self.parent) if self.parent is not None else 0)

    def is_word(self, word: str) -> bool:
        """True for a known word (lower case) or one shorter than `MIN_WORD_LENGTH`."""
        if len(word) < MIN_WORD_LENGTH or word in self._set:
            return True
        return self.parent is not None and self.parent.is_word(word)

    def is_prefix(self, start: str) -> bool:
        """True when some known word starts with `start` (lower case)."""
        i = bisect.bisect_left(self._sorted, start)
        if i < len(self._sorted) and self._sorted[i].startswith(start):
            return True
        return self.parent is not None and self.parent.is_prefix(start)

    def takes(self, word: str, text: str) -> bool:
        """True when `text` may follow the word in progress `word` (lower-case letters, "" between
        words): every word the text finishes is known, and the word it leaves open starts one (or has
        one letter). An empty text (EOS, a special token) finishes the word in progress."""
        key = (word, text)
        hit = self._takes.get(key)
        if hit is None:
            if len(self._takes) > MEMO_SIZE:
                self._takes.clear()
            hit = self._takes[key] = self._check(word, text)
        return hit

    def _check(self, cur: str, text: str) -> bool:
        if not text:
            return self.is_word(cur)
        for ch in text:
            if ch.isalpha():
                cur += ch.lower()
            elif cur:
                if not self.is_word(cur):
                    return False
                cur = ""
        return len(cur) < MIN_WORD_LENGTH or self.is_prefix(cur)


@functools.lru_cache(maxsize=1)
def english_words() -> KnownWords:
    """wordfreq's English list (its `large` list: every word with a Zipf frequency above 0), once.

    Raises:
        ImportError: wordfreq is not installed; the message says how to install it or turn the guard off.
    """
    try:
        import wordfreq
    except ImportError as e:
        raise ImportError(
            f"`known_words` needs the wordfreq English list, which is not installed: {_INSTALL}"
        ) from e
    # the raw buckets, not `get_frequency_dict`: that one keeps a 35 MB dict (and its list) cached
    buckets = wordfreq.read_cBpack(wordfreq.available_languages("large")["en"])
    return KnownWords(word for bucket in buckets for word in bucket)


_LETTERS = re.compile(r"[^\W\d_]+")  # letter runs, as the invented-word rate splits words
_KNOWN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # pool -> {(num_real, prompt): KnownWords}
_NO_POOL = type("_NoPool", (), {})()  # the key for "no pool" (weak keys need an object)


def known_words_for(pool: Any, prompt: str = "") -> KnownWords:
    """English words plus the words of `pool`'s real examples and of `prompt`: one layer over the
    English list, built once per (pool, its number of real examples, prompt) and shared by every
    prompt that matches, with its memo of answers."""
    english = english_words()
    per_pool = _KNOWN.setdefault(_NO_POOL if pool is None else pool, {})
    num_real = getattr(pool, "num_real", 0) if pool is not None else 0
    key = (num_real, prompt)
    known = per_pool.get(key)
    if known is None:
        if len(per_pool) >= 64:
            per_pool.clear()
        real = pool.texts[:num_real] if num_real else []
        known = per_pool[key] = KnownWords(_letter_runs([*real, prompt]), english)
    return known


def _letter_runs(texts: Sequence[str]) -> set[str]:
    """Every lower-cased run of letters in `texts` (the words `KnownWords` keeps)."""
    return {w for text in texts for w in _LETTERS.findall(text.lower())}


_TEXTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> texts


def token_texts(tokenizer: Any) -> list[str]:
    """The text each token id of `tokenizer` adds to the output, once per tokenizer: with a leading
    space where the token marks one, "" for special tokens (EOS ends the word it cuts)."""
    texts = _TEXTS.get(tokenizer)
    if texts is None:
        names = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        special = set(getattr(tokenizer, "all_special_ids", ()))
        texts = []
        for i, name in enumerate(names):
            if name is None or i in special:
                texts.append("")
                continue
            text = tokenizer.convert_tokens_to_string([name])
            if name.startswith("▁") and not text.startswith(" "):  # SentencePiece drops it alone
                text = " " + text
            texts.append(text)
        _TEXTS[tokenizer] = texts
    return texts


class WordGuard:
    """One steered prompt's word state: the letters of the word it is in and the last word it
    finished, and which tokens keep every word known and no word repeated.

    Besides known words it refuses the same word twice in a row ("deficit deficit"): contrastive
    scores can fall into that loop (once a row repeats, every branch predicts the repeat), and one
    such row of 48 repeated tokens is a sixth of a 48-row sample's 3-grams.

    Args:
        known: the known words.
        texts: each token id's text (`token_texts`).
    """

    def __init__(self, known: KnownWords, texts: Sequence[str]) -> None:
        self.known, self.texts = known, texts
        self.word = ""  # the word in progress ("" between words)
        self.last = ""  # the last word finished

    def allows(self, token_id: int) -> bool:
        """True when taking `token_id` finishes only known words, leaves a known word's start, and
        does not write the last finished word again as the next word."""
        if token_id >= len(self.texts):  # logits past the tokenizer's vocabulary: no text
            return False
        text = self.texts[token_id]
        return self.known.takes(self.word, text) and not self._repeats(text)

    def _repeats(self, text: str) -> bool:
        """True when taking `text` writes a word equal to the word finished just before it (the
        word in progress counts once the text finishes it; an open word counts as written)."""
        previous, cur = self.last, self.word
        for ch in text:
            if ch.isalpha():
                cur += ch.lower()
            elif cur:
                if cur == previous:
                    return True
                previous, cur = cur, ""
        return bool(cur) and cur == previous

    def advance(self, token_id: int) -> None:
        """Take `token_id`: the word state moves past its text."""
        text = self.texts[token_id] if token_id < len(self.texts) else ""
        cur = self.word
        for ch in text or " ":  # EOS or a special token finishes the word in progress
            if ch.isalpha():
                cur += ch.lower()
            elif cur:
                self.last, cur = cur, ""
        self.word = cur

    def allowed(self, candidates: Sequence[int]) -> list[int]:
        """The ids of `candidates` this guard allows now."""
        return [t for t in candidates if self.allows(t)]


def guard_bias(head: torch.Tensor, guards: Sequence[WordGuard]) -> torch.Tensor:
    """`(len(guards), vocab)` additive bias for the head log-probs of the guarded rows (`head` is
    `(len(guards), vocab)`): 0 on each row's allowed tokens among its `CANDIDATES` best, −inf
    elsewhere; all 0 for a row with no allowed candidate (left unguarded this step)."""
    k = min(CANDIDATES, head.shape[-1])
    top = head.topk(k, dim=-1).indices
    allowed = [[guard.allows(t) for t in ids] for guard, ids in zip(guards, top.tolist(), strict=True)]
    keep = torch.tensor(allowed, dtype=torch.bool, device=head.device)
    bias = torch.full(head.shape, float("-inf"), dtype=torch.float32, device=head.device)
    bias.scatter_(-1, top, torch.zeros(top.shape, device=head.device).masked_fill(~keep, float("-inf")))
    stuck = ~keep.any(-1)  # nothing allowed: the row is left unguarded this step
    if bool(stuck.any()):
        bias[stuck] = 0.0
    return bias
