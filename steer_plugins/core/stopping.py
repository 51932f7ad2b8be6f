"""Per-prompt stopping and detokenisation: stop tokens, stop strings, stream-safe text deltas."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["TextTracker", "eos_token_ids"]


def eos_token_ids(tokenizer, model=None) -> set[int]:
    """Every end-of-sequence id the tokenizer and the model's generation config declare."""
    ids: set[int] = set()
    candidates = [getattr(tokenizer, "eos_token_id", None)]
    gen_cfg = getattr(model, "generation_config", None)
    candidates.append(getattr(gen_cfg, "eos_token_id", None))
    for c in candidates:
        if isinstance(c, int):
            ids.add(c)
        elif isinstance(c, Iterable):
            ids.update(int(x) for x in c)
    return ids


class TextTracker:
    """Detokenises one prompt's generated ids and finds stop strings.

    `update(ids)` returns the text delta that is safe to stream: text that cannot still turn into
    a stop string, and no half-decoded UTF-8 character. When a stop string appears the text is cut
    just before it and `stopped` becomes True; the stop string itself is never returned.
    """

    def __init__(self, tokenizer, stops: Iterable[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def _held_back(self, text: str) -> int:
        """How many trailing characters might be the start of a stop string or a partial char."""
        hold = 0
        while hold < len(text) and text[len(text) - hold - 1] == "\ufffd":
            hold += 1
        body = text[: len(text) - hold]
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(body)), 0, -1):
                if body.endswith(stop[:n]):
                    hold = max(hold, n + (len(text) - len(body)))
                    break
        return hold

    def update(self, ids: list[int]) -> str:
        """Re-decode `ids` (all generated ids so far); return the new streamable text."""
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.text, self.stopped = text[:cut], True
            return self.flush()
        self.text = text
        safe = len(text) - self._held_back(text)
        if safe <= self.emitted:
            return ""
        delta, self.emitted = text[self.emitted : safe], safe
        return delta

    def flush(self) -> str:
        """Everything not yet returned (call when the prompt finishes)."""
        delta = self.text[self.emitted :]
        self.emitted = len(self.text)
        return delta.rstrip("\ufffd") if self.stopped else delta
