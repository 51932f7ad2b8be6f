"""The contract between the decoder and a per-prompt decoding constraint (a grammar, a regex, a
list of choices).

The decoder asks each constrained prompt's `Constraint` for the tokens it allows at this step,
sets every other token of the combined scores to −inf (after the branches are combined and the
plausibility mask applied, so forbidden tokens stay forbidden), samples, then tells the constraint
which token was taken. A constraint that reports `is_finished` ends its prompt ("stop").

`apply_constraints` does all constrained rows of a step at once: constraints that can write a
packed bitmask (`BitmaskConstraint`, e.g. `grammar.GrammarConstraint`) fill one shared int32
bitmask (in parallel where their class offers `fill_bitmasks`), which a 256-entry lookup table
turns into an additive 0/−inf bias; any other `Constraint` gives its bool `allowed_mask`.
"""

from __future__ import annotations

import sys
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

__all__ = [
    "BitmaskConstraint",
    "Constraint",
    "apply_constraints",
    "bitmask_bias",
    "constraint_bias",
    "parsed_output",
]


@runtime_checkable
class Constraint(Protocol):
    """Per-prompt decoding state of a constraint (one object per prompt, never shared)."""

    def allowed_mask(self, vocab_size: int, device: torch.device) -> torch.Tensor:
        """`(vocab_size,)` bool tensor: True where the next token is allowed."""
        ...

    def advance(self, token_id: int) -> None:
        """Accept the sampled token (it was allowed)."""
        ...

    @property
    def is_finished(self) -> bool:
        """True once the constrained output is complete (the prompt then stops)."""
        ...


@runtime_checkable
class BitmaskConstraint(Constraint, Protocol):
    """A constraint that writes its allowed tokens as bits (bit `t % 32` of int32 word `t // 32`).
    Its class may add `fill_bitmasks(items: list[(constraint, row)], bitmask)` to fill many rows
    at once; constraints of one class with the same `bitmask_words` are filled together."""

    bitmask_words: int

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        """Write row `row` of an int32 `(n, bitmask_words)` CPU tensor."""
        ...


_LUTS: dict[torch.device, torch.Tensor] = {}


def _lut(device: torch.device) -> torch.Tensor:
    """`(256, 8)` float: entry [b, k] is 0 where bit k of byte b is set, else −inf."""
    if device not in _LUTS:
        bits = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1
        _LUTS[device] = torch.zeros(256, 8).masked_fill(bits == 0, float("-inf")).to(device)
    return _LUTS[device]


def bitmask_bias(bitmask: torch.Tensor, vocab_size: int, device: torch.device) -> torch.Tensor:
    """`(n, vocab_size)` float32 on `device`: 0 where `bitmask` (int32 `(n, words)`) has the token's
    bit set, −inf elsewhere (tokens past the bitmask are forbidden)."""
    device = torch.device(device)
    packed = bitmask.to(device).contiguous().view(torch.uint8)  # 4 bytes per word, in memory order
    if sys.byteorder == "big":
        packed = packed.view(bitmask.shape[0], -1, 4).flip(-1).reshape(bitmask.shape[0], -1)
    bias = F.embedding(packed.long(), _lut(device)).flatten(1)
    if bias.shape[1] >= vocab_size:
        return bias[:, :vocab_size]
    return F.pad(bias, (0, vocab_size - bias.shape[1]), value=float("-inf"))


def constraint_bias(constraints: list[Constraint], vocab_size: int, device: torch.device) -> torch.Tensor:
    """`(len(constraints), vocab_size)` additive bias: 0 where allowed, −inf where forbidden."""
    bias = torch.empty((len(constraints), vocab_size), device=device)
    groups: dict[tuple[type, int], list[int]] = {}
    for i, c in enumerate(constraints):
        if isinstance(c, BitmaskConstraint):
            groups.setdefault((type(c), c.bitmask_words), []).append(i)
        else:
            allowed = c.allowed_mask(vocab_size, device)
            bias[i] = torch.zeros(vocab_size, device=device).masked_fill(~allowed, float("-inf"))
    for (kind, words), members in groups.items():
        bitmask = torch.zeros((len(members), words), dtype=torch.int32)
        items = [(constraints[i], row) for row, i in enumerate(members)]
        fill_many = getattr(kind, "fill_bitmasks", None)
        if fill_many is not None:
            fill_many(items, bitmask)
        else:
            for c, row in items:
                c.fill_bitmask(bitmask, row)  # type: ignore[attr-defined]
        bias[torch.tensor(members, device=device)] = bitmask_bias(bitmask, vocab_size, device)
    return bias


def apply_constraints(
    scores: torch.Tensor, fallback: torch.Tensor, constrained: list[tuple[int, Constraint]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask forbidden tokens to −inf in rows `p` of `scores` and of `fallback` (the expert's
    log-probs, used when a row has nothing left to sample). Returns new tensors; inputs unchanged."""
    if not constrained:
        return scores, fallback
    rows = torch.tensor([p for p, _ in constrained], device=scores.device)
    bias = constraint_bias([c for _, c in constrained], scores.shape[-1], scores.device)
    return (
        scores.index_add(0, rows, bias.to(scores.dtype)),
        fallback.index_add(0, rows, bias.to(fallback.dtype)),
    )


def parsed_output(constraint: Constraint | None, text: str, finish_reason: str | None) -> Any:
    """What `SteerResult.parsed` holds: the constraint's parse of `text` when the prompt stopped
    ("stop") with its constrained output complete, else None (no constraint, cut by the length
    limit, cancelled, or cut short by a stop string or stop token)."""
    if constraint is None or finish_reason != "stop":
        return None
    parse = getattr(constraint, "parse", None)
    return None if parse is None else parse(text)
