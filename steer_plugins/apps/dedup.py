"""Deduplication of generated texts: exact (after normalisation) or near-duplicate (MinHash LSH).

`Deduper(mode, threshold).seen(text)` answers "is this a duplicate of a text seen before?" and
remembers `text` when it is not, so a generation loop keeps a row only when `seen` is False. The
same object serves `steer generate --dedup` and can serve the `datasets` augmenter.

- **exact**: two texts are duplicates when they are equal after Unicode NFKC normalisation, case
  folding and collapsing whitespace (so `"Is it?"` and `"is  it?"` are one text).
- **minhash**: two texts are duplicates when the Jaccard similarity of their character 5-gram sets
  (of the normalised text), estimated with MinHash, is at least `threshold`. Candidates come from
  `datasketch.MinHashLSH` and are confirmed with the MinHash estimate. Needs `datasketch`
  (`pip install 'steer-plugins[dedup]'`).

Example:
    >>> d = Deduper("exact")
    >>> d.seen("Is dark matter cold?"), d.seen("is dark  matter cold?"), d.seen("Is it hot?")
    (False, True, False)
    >>> d.counts()
    {'mode': 'exact', 'threshold': None, 'checked': 3, 'kept': 2, 'duplicates': 1}
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable
from typing import Any

__all__ = ["DEDUP_MODES", "DEFAULT_THRESHOLD", "DEFAULT_NUM_PERM", "SHINGLE_CHARS", "Deduper", "normalise"]

DEDUP_MODES: tuple[str, ...] = ("exact", "minhash")
"""The deduplication modes `Deduper` accepts."""
DEFAULT_THRESHOLD = 0.8
"""Default Jaccard similarity (of character 5-gram sets) at which `minhash` calls two texts duplicates."""
DEFAULT_NUM_PERM = 128
"""MinHash permutations: more is a finer similarity estimate, slower."""
SHINGLE_CHARS = 5
"""Characters per shingle of the `minhash` mode."""

_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """`text` in NFKC, case-folded, whitespace collapsed to single spaces and stripped."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def _shingles(text: str, k: int = SHINGLE_CHARS) -> set[str]:
    """The character k-grams of `text` (the whole text when shorter than k)."""
    if len(text) <= k:
        return {text}
    return {text[i : i + k] for i in range(len(text) - k + 1)}


class Deduper:
    """Remembers texts and tells whether a new one duplicates any of them.

    Args:
        mode: `"exact"` or `"minhash"` (see the module docstring).
        threshold: for `minhash`, the Jaccard similarity in (0, 1] at or above which two texts are
            duplicates (default `DEFAULT_THRESHOLD`); must be None (or unset) for `exact`.
        num_perm: MinHash permutations (`minhash` only).

    Raises:
        ValueError: an unknown mode or a threshold outside (0, 1].
        ImportError: `minhash` without `datasketch` installed (the message says how to install it).
    """

    def __init__(
        self, mode: str = "exact", threshold: float | None = None, *, num_perm: int = DEFAULT_NUM_PERM
    ) -> None:
        if mode not in DEDUP_MODES:
            raise ValueError(f"unknown dedup mode {mode!r}; choose one of {list(DEDUP_MODES)}")
        if mode == "exact" and threshold is not None:
            raise ValueError("a dedup threshold applies to `minhash` only; exact dedup has none")
        if threshold is None and mode == "minhash":
            threshold = DEFAULT_THRESHOLD
        if threshold is not None and (
            isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1
        ):
            raise ValueError(f"dedup threshold must be a number in (0, 1], got {threshold!r}")
        self.mode = mode
        self.threshold = None if threshold is None else float(threshold)
        self.num_perm = int(num_perm)
        self.checked = 0
        self.duplicates = 0
        self._hashes: set[bytes] = set()
        self._lsh: Any = None
        self._signatures: dict[str, Any] = {}
        if mode == "minhash":
            self._lsh = _minhash_lsh(self.threshold, self.num_perm)

    def __len__(self) -> int:
        """How many distinct texts are remembered."""
        return len(self._hashes) if self.mode == "exact" else len(self._signatures)

    def seen(self, text: str) -> bool:
        """True if `text` duplicates a remembered text; otherwise remember it and return False."""
        self.checked += 1
        duplicate = self._check(text, remember=True)
        self.duplicates += duplicate
        return duplicate

    def add(self, texts: Iterable[str]) -> None:
        """Remember `texts` (e.g. the rows of a resumed file) without counting them as checked."""
        for text in texts:
            self._check(text, remember=True)

    def settings(self) -> dict[str, Any]:
        """`{"mode", "threshold"}`: what decides which texts count as duplicates."""
        return {"mode": self.mode, "threshold": self.threshold}

    def counts(self) -> dict[str, Any]:
        """`{"mode", "threshold", "checked", "kept", "duplicates"}` of the `seen` calls so far."""
        return {
            "mode": self.mode,
            "threshold": self.threshold,
            "checked": self.checked,
            "kept": self.checked - self.duplicates,
            "duplicates": self.duplicates,
        }

    def _check(self, text: str, *, remember: bool) -> bool:
        if not isinstance(text, str):
            raise TypeError(f"Deduper checks strings, got {type(text).__name__}")
        norm = normalise(text)
        if self.mode == "exact":
            key = hashlib.blake2b(norm.encode("utf-8", "surrogatepass"), digest_size=16).digest()
            if key in self._hashes:
                return True
            if remember:
                self._hashes.add(key)
            return False
        return self._check_minhash(norm, remember)

    def _check_minhash(self, norm: str, remember: bool) -> bool:
        from datasketch import MinHash

        sig = MinHash(num_perm=self.num_perm)
        sig.update_batch([s.encode("utf-8", "surrogatepass") for s in _shingles(norm)])
        for key in self._lsh.query(sig):
            if self._signatures[key].jaccard(sig) >= self.threshold:
                return True
        if remember:
            key = str(len(self._signatures))
            self._signatures[key] = sig
            self._lsh.insert(key, sig)
        return False


def _minhash_lsh(threshold: float, num_perm: int) -> Any:
    try:
        from datasketch import MinHashLSH
    except ImportError as e:
        raise ImportError(
            "near-duplicate dedup (`minhash`) needs datasketch: pip install 'steer-plugins[dedup]' "
            "(or pip install datasketch), or use exact dedup"
        ) from e
    # the LSH finds candidates (its banding cannot reach 1.0); `seen` confirms them at `threshold`
    return MinHashLSH(threshold=min(threshold, 0.9), num_perm=num_perm)
