"""The negative pool: real examples plus every synthetic output, drawn from as the paper does.

Policy (STEER §2): the pool starts as all real examples; for each generated example K examples are
drawn uniformly without replacement; the output is appended, so earlier outputs become negatives.
A batch draws from the pool as it stood when the batch started. Thread-safe.

`draw(k, source="synthetic")` (`SteerConfig.negatives_from="synthetic"`, the product default) draws
from the outputs alone, topped up with real examples while fewer than K exist: generation then moves
away from what it already made, not from the real data it should resemble (docs/quality.md: the
centroid cosine to the real data stays inside plain sampling's interval, which the paper's draw
does not). `source="pool"` is the paper's draw.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["NEGATIVE_SOURCES", "NegativePool", "NegativeContext", "fit_negatives", "valid_text"]

#: Where `NegativePool.draw` takes its K examples from (see the module docstring).
NEGATIVE_SOURCES = ("pool", "synthetic")


@dataclass(frozen=True)
class NegativeContext:
    """The negatives chosen for one prompt after the token budget: `used` are in the context,
    `dropped` were drawn but did not fit."""

    used: list[str]
    dropped: list[str] = field(default_factory=list)


class NegativePool:
    """A seedable, growable pool of negative examples.

    Example:
        >>> pool = NegativePool(["a real example", "another one", "a third"], seed=0)
        >>> len(pool.draw(2))
        2
        >>> pool.add(["a synthetic output"]); len(pool)
        4
    """

    def __init__(self, texts: Iterable[str] = (), *, seed: int | None = None) -> None:
        self._lock = threading.Lock()
        self._texts: list[str] = []
        self._num_real = 0
        self._rng = random.Random(seed)
        self.seed = seed
        self.add(texts, real=True)

    def __len__(self) -> int:
        return len(self._texts)

    @property
    def texts(self) -> list[str]:
        """A copy of every example in the pool, real first, in insertion order."""
        with self._lock:
            return list(self._texts)

    @property
    def num_real(self) -> int:
        """How many examples were added as real (the rest are synthetic outputs)."""
        return self._num_real

    def add(self, texts: Iterable[str], *, real: bool = False) -> None:
        """Append examples; empty or whitespace-only strings are skipped, non-strings rejected."""
        if isinstance(texts, str):
            raise TypeError("`texts` must be an iterable of strings, got one str: wrap it in a list")
        batch = []
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"negative example #{i} must be a str, got {type(t).__name__}")
            if t.strip():
                batch.append(valid_text(t))
        with self._lock:
            if real:  # real examples stay first, so `num_real` splits the pool however adds interleave
                self._texts[self._num_real : self._num_real] = batch
                self._num_real += len(batch)
            else:
                self._texts.extend(batch)

    @property
    def num_synthetic(self) -> int:
        """How many examples were added as synthetic outputs."""
        return len(self._texts) - self._num_real

    def draw(self, k: int, rng: random.Random | None = None, *, source: str = "pool") -> list[str]:
        """K examples without replacement: `source="pool"` uniformly from every example (the paper);
        `"synthetic"` from the synthetic outputs, topped up with real examples while fewer than K exist.

        Raises:
            ValueError: if the pool is non-empty but holds fewer than `k` examples, or `source` is unknown.
        """
        if source not in NEGATIVE_SOURCES:
            raise ValueError(f"negative source must be one of {NEGATIVE_SOURCES}, got {source!r}")
        rng = rng or self._rng
        with self._lock:
            if len(self._texts) < k:
                raise ValueError(
                    f"`num_negatives` (K={k}) is larger than the negative pool ({len(self._texts)} examples): "
                    "add real examples (engine.pool.add([...], real=True)) or lower num_negatives"
                )
            if source == "pool":
                return rng.sample(self._texts, k)
            synthetic = self._texts[self._num_real :]
            if len(synthetic) >= k:
                return rng.sample(synthetic, k)
            return rng.sample(synthetic, len(synthetic)) + rng.sample(
                self._texts[: self._num_real], k - len(synthetic)
            )

    def to_json(self) -> str:
        """Serialise the pool (texts, how many are real, seed)."""
        with self._lock:
            return json.dumps({"texts": self._texts, "num_real": self._num_real, "seed": self.seed})

    @classmethod
    def from_json(cls, blob: str) -> NegativePool:
        """Rebuild a pool written by `to_json`."""
        data = json.loads(blob)
        if not isinstance(data, dict) or not isinstance(data.get("texts"), list):
            raise ValueError("negative pool JSON must be an object with a `texts` list (written by to_json)")
        n_real = int(data.get("num_real", len(data["texts"])))
        pool = cls(data["texts"][:n_real], seed=data.get("seed"))
        pool.add(data["texts"][n_real:])
        return pool

    def save(self, path: str | Path) -> None:
        """Write `to_json()` to `path`."""
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> NegativePool:
        """Read a pool saved with `save`."""
        return cls.from_json(Path(path).read_text(encoding="utf-8"))


def valid_text(text: str) -> str:
    """`text` with unpaired surrogates (valid JSON, not valid Unicode text; the tokenizer rejects them)
    replaced by U+FFFD, so one bad line in a pool file cannot break later calls."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:  # pairs become their character, lone halves U+FFFD
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def fit_negatives(
    negatives: Sequence[str],
    count_tokens: Callable[[str], int],
    budget: int | None,
    separator: str = " ",
) -> NegativeContext:
    """Keep whole examples, in order, while the joined context fits in `budget` tokens.

    An example that does not fit is dropped (a later, shorter one may still fit); nothing is cut
    mid-example. `budget=None` keeps everything.
    """
    if budget is None:
        return NegativeContext(list(negatives))
    used: list[str] = []
    dropped: list[str] = []
    for text in negatives:
        candidate = separator.join([*used, text])
        if count_tokens(candidate) <= budget:
            used.append(text)
        else:
            dropped.append(text)
    return NegativeContext(used, dropped)
