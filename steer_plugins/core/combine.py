"""The decoding rule as one pure function: a weighted sum of branch log-probs.

STEER (O'Neill et al., arXiv 2308.07645), classifier-free guidance, contrastive decoding
(Li et al., arXiv 2210.15097) and expert-only sampling are all `combine` with different weights;
`SteerConfig.branch_weights` produces them. No model, no cache, no mutation of inputs.
"""

from __future__ import annotations

import math
import weakref

import torch

__all__ = ["combine", "head_mask", "guard_non_finite", "continuation_tokens"]


def head_mask(head_logprobs: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """Plausibility mask V_head = {v : p(v) >= α · max_w p(w)} of the head branch.

    Args:
        head_logprobs: `(num_prompts, vocab)` log-probs of the head (expert on the prompt).
        alpha: a float in (0, 1], or a `(num_prompts,)` tensor (NaN = no mask for that row).

    Returns:
        `(num_prompts, vocab)` bool tensor, True where the token is kept.
    """
    return head_logprobs >= _head_floor(head_logprobs, alpha)


def _head_floor(head: torch.Tensor, share: float | torch.Tensor) -> torch.Tensor:
    """`(rows, 1)` log-prob of `share` times each row's best token: the line `head_mask` keeps
    tokens above. A NaN share gives −inf (the row keeps everything)."""
    share_t = torch.as_tensor(share, dtype=head.dtype, device=head.device)
    floor = head.amax(dim=-1, keepdim=True) + torch.log(share_t).reshape(-1, 1)
    return floor.nan_to_num(nan=-math.inf, posinf=math.inf, neginf=-math.inf)


_SPACE_MARKERS = frozenset("Ġ▁Ċĉ")
"""Leading characters that mean "space, newline or tab before this token" (byte-level BPE: Ġ Ċ ĉ;
SentencePiece: ▁). Ġ and Ċ are letters to `str.isalnum`, so they are checked first."""


_CONTINUATIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> {vocab: flags}


def cached_continuation_tokens(tokenizer, vocab_size: int) -> torch.Tensor:
    """`continuation_tokens`, computed once per (tokenizer, vocab size) for the decoder and the
    `LogitsProcessor` alike (it decodes every vocabulary entry)."""
    per_vocab = _CONTINUATIONS.setdefault(tokenizer, {})
    if vocab_size not in per_vocab:
        per_vocab[vocab_size] = continuation_tokens(tokenizer, vocab_size)
    return per_vocab[vocab_size]


def continuation_tokens(tokenizer, vocab_size: int) -> torch.Tensor:
    """`(vocab_size,)` bool: True for tokens that continue the word before them (their text starts
    with a letter or digit, no leading space marker). Byte-level BPE marks a leading space with "Ġ",
    SentencePiece with "▁"; neither is alphanumeric. Ids past the tokenizer's vocabulary are False.

    Example:
        >>> class Tok:  # a GPT-2 style vocabulary: "Ġsuper", "nova", "?"
        ...     def convert_ids_to_tokens(self, ids): return ["Ġsuper", "nova", "?"][: len(ids)]
        >>> continuation_tokens(Tok(), 4).tolist()
        [False, True, False, False]
    """
    names = tokenizer.convert_ids_to_tokens(list(range(vocab_size)))
    flags = [isinstance(n, str) and n[:1] not in _SPACE_MARKERS and n[:1].isalnum() for n in names]
    return torch.tensor(flags + [False] * (vocab_size - len(names)))


def combine(
    branch_logprobs: torch.Tensor,
    weights: torch.Tensor,
    *,
    alpha: float | torch.Tensor | None = None,
    head_index: int = 0,
    continuation: torch.Tensor | None = None,
    whole_words: torch.Tensor | bool = False,
    head_top_k: torch.Tensor | int | None = None,
    spelling_min_p: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """s = Σᵢ wᵢ·ℓᵢ over branches, optionally restricted to the head branch's plausible tokens.

    Args:
        branch_logprobs: `(num_prompts, num_branches, vocab)` log-softmax outputs, any float dtype.
        weights: `(num_branches,)` or `(num_prompts, num_branches)`. A zero weight ignores its branch
            entirely (even where that branch is −inf), which is how absent branches are padded.
        alpha: plausibility head mask (see `head_mask`); None = off, as in the paper. Like
            `whole_words`, it guards steering: rows that sample the head alone (one active branch,
            weight 1: γ = η = 0) are returned as the head's log-probs, unmasked (plain sampling).
        head_index: which branch is the head (the expert on the prompt).
        continuation: `(vocab,)` bool of word-continuing tokens (`continuation_tokens`); needed
            with `whole_words`.
        whole_words: a bool or a `(num_prompts,)` bool tensor. Where set, the head (expert) alone
            decides whether the current word goes on and how it is spelled; the combined scores
            only choose among the tokens that start something new (see `_whole_words`). Steering
            inside a word is what fuses made-up words ("supernovova"); the quality study measures it.
        head_top_k: with `whole_words`, a word may only go on with one of the head's own `k` most
            likely tokens (an int, or a `(num_prompts,)` tensor; the sampler's top-k): the spelling
            plain top-k sampling would allow, never a rare piece lifted into the top k because the
            steered word starts are concentrated on few tokens.
        spelling_min_p: with `whole_words`, a word may only go on with a piece the head gives at least
            this share of its most likely token's probability (a float, or a `(num_prompts,)` tensor,
            NaN = off for that row). Invented words are mostly spelled with a piece outside the head's
            top two; real words almost never are (docs/quality.md).

    Returns:
        `(num_prompts, vocab)` fp32 scores, not renormalised; masked tokens are −inf.

    Example (STEER paper form, γ=0.2, η=0.6: weights 1.2, −0.2, −0.6):
        >>> lp = torch.log(torch.tensor([[[.5, .5], [.9, .1], [.1, .9]]]))
        >>> combine(lp, torch.tensor([1.2, -0.2, -0.6])).argmax(-1)
        tensor([0])
    """
    if branch_logprobs.dim() != 3:
        raise ValueError(
            f"`branch_logprobs` must be (num_prompts, num_branches, vocab), got shape {tuple(branch_logprobs.shape)}"
        )
    lp = branch_logprobs.float()
    w = weights.to(device=lp.device, dtype=torch.float32)
    if w.dim() == 1:
        w = w.expand(lp.shape[0], -1)
    if w.shape != lp.shape[:2]:
        raise ValueError(
            f"`weights` has shape {tuple(w.shape)} but there are {lp.shape[1]} branches for {lp.shape[0]} prompts: "
            "pass one weight per branch"
        )
    active = w != 0
    # rows that sample the head as it is (γ = η = 0): nothing is steered, so nothing is guarded
    plain = active[:, head_index] & (active.sum(-1) == 1) & (w[:, head_index] == 1)
    if bool(plain.all()):
        return lp[:, head_index].clone()
    scores = _weighted_sum(lp, w, active)
    if bool(plain.any()):
        scores = torch.where(plain.unsqueeze(-1), lp[:, head_index], scores)
    if continuation is not None and (torch.is_tensor(whole_words) or whole_words):
        rows = ~plain if not torch.is_tensor(whole_words) else whole_words.to(plain.device) & ~plain
        scores = _whole_words(
            lp[:, head_index], scores, continuation.to(lp.device), rows, head_top_k, spelling_min_p
        )
    if alpha is not None and not (isinstance(alpha, float) and math.isnan(alpha)):
        alpha_t = torch.as_tensor(alpha, dtype=torch.float32, device=lp.device).expand(lp.shape[0])
        alpha_t = torch.where(plain, torch.full_like(alpha_t, math.nan), alpha_t)
        head = lp[:, head_index]
        scores = scores.masked_fill(head < _head_floor(head, alpha_t), float("-inf"))  # ~head_mask
    return scores


def _weighted_sum(lp: torch.Tensor, w: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Σᵢ wᵢ·ℓᵢ per row: one batched product (about 10x faster than a masked sum at batch 8). A row
    with a zero weight must ignore that branch even where it is -inf (0 * -inf is NaN): those rows,
    and only they, take the masked sum, so a row's scores never depend on its neighbours."""
    scores = torch.bmm(w.unsqueeze(1), lp).squeeze(1)
    partial = ~active.all(-1)
    if bool(partial.any()):
        a, lp_p = active[partial].unsqueeze(-1), lp[partial]
        terms = torch.where(a, w[partial].unsqueeze(-1) * lp_p, torch.zeros((), device=lp.device))
        scores[partial] = terms.sum(dim=1)
    return scores


def _whole_words(
    head: torch.Tensor,
    scores: torch.Tensor,
    continuation: torch.Tensor,
    rows: torch.Tensor | bool,
    head_top_k: torch.Tensor | int | None,
    spelling_min_p: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Log-probs of a two-level choice: with the head's probability of continuing the word, a
    continuation token drawn from the head (among its `head_top_k` best, and at least
    `spelling_min_p` times as likely as its best token); otherwise a word-starting
    token (space-led, punctuation, EOS) drawn from the combined scores renormalised over those
    tokens. Rows where `rows` is False keep `scores`. Not renormalised when `head_top_k` drops mass.

    Every vocabulary-wide step is float arithmetic (adding a 0/−inf bias, `amax`, `maximum`): on
    CPU a `where` or `masked_fill` with a broadcast bool mask costs about 10x an add (1.5 ms against
    0.13 ms at 8 × 49 152), and this runs once per decode step."""
    head = head.log_softmax(-1)
    off_starts, off_pieces, is_start = _word_biases(continuation)  # −inf on pieces / on starts; 1.0 on starts
    # log P(new word) as a product with the start tokens' indicator: `logsumexp` over a row with −inf
    # (or underflowing) entries takes exp's slow path on CPU (2.4 ms against 0.3 ms); within 4e-7
    start_mass = torch.log(head.exp() @ is_start).unsqueeze(-1)
    starts = (scores + off_starts).log_softmax(-1)
    floor = _spelling_floor(head, head_top_k, spelling_min_p)  # (rows, 1): the least likely piece allowed
    spelled = head if floor is None else head.masked_fill(head < floor, float("-inf"))
    # each position is finite on one side only (a piece, or a word start), so the max picks that side
    pieces = spelled + off_pieces
    mixed = torch.maximum(pieces, start_mass + starts)
    # a row with no word start left at all (`known_words` can leave only pieces: "microl" goes on as
    # "ensing") has a NaN start side (log-softmax of nothing): it takes the pieces. NaN scores from a
    # broken branch still reach `guard_non_finite`, which falls back for that row.
    none = torch.isneginf(start_mass).squeeze(-1)
    if bool(none.any()):
        mixed[none] = pieces[none]
    if torch.is_tensor(rows):
        if bool(rows.all()):
            return mixed
        return torch.where(rows.to(head.device).unsqueeze(-1), mixed, scores)
    return mixed


def _spelling_floor(
    head: torch.Tensor, head_top_k: torch.Tensor | int | None, spelling_min_p: float | torch.Tensor | None
) -> torch.Tensor | None:
    """`(rows, 1)` log-prob a spelling piece needs: the head's k-th best (top-k) and its best plus
    log(min-p), whichever is higher; −inf where neither applies. None when both are off."""
    floors = []
    if head_top_k is not None:  # k >= vocab (top-k off) keeps every piece; no full sort per step
        vocab = head.shape[-1]
        k = torch.as_tensor(head_top_k, device=head.device).expand(head.shape[0]).reshape(-1, 1)
        limited = k < vocab
        if bool(limited.any()):
            top = head.topk(int(k[limited].max()), dim=-1).values
            kth = top.gather(-1, (k.clamp(1, top.shape[-1]) - 1))
            floors.append(torch.where(limited, kth, torch.full_like(kth, float("-inf"))))
    if spelling_min_p is not None:  # the head mask's rule at the floor (NaN rows: off)
        min_p = torch.as_tensor(spelling_min_p, dtype=head.dtype, device=head.device).expand(head.shape[0])
        floors.append(_head_floor(head, min_p))
    if not floors:
        return None
    return floors[0] if len(floors) == 1 else torch.maximum(*floors)


_BIASES: dict[int, tuple[weakref.ref, tuple[torch.Tensor, ...]]] = {}  # id(mask) -> (mask, biases)


def _word_biases(continuation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(vocab,)` float masks, once per continuation mask object: −inf on continuation pieces (0 on
    word starts), the reverse, and 1.0 on word starts (0 on pieces). Keyed by identity (a tensor's
    `==` is elementwise, so tensors cannot be dict keys), checked through a weak reference so a
    reused id never hits."""
    key = id(continuation)
    hit = _BIASES.get(key)
    if hit is not None and hit[0]() is continuation:
        return hit[1]
    zeros = torch.zeros(continuation.shape, dtype=torch.float32, device=continuation.device)
    biases = (
        zeros.masked_fill(continuation, float("-inf")),
        zeros.masked_fill(~continuation, float("-inf")),
        (~continuation).float(),
    )
    _BIASES[key] = (weakref.ref(continuation, lambda _, key=key: _BIASES.pop(key, None)), biases)
    return biases


def guard_non_finite(scores: torch.Tensor, fallback: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace rows that cannot be sampled from (NaN, +inf, or all −inf) with `fallback` rows.

    Args:
        scores: `(num_prompts, vocab)` combined scores.
        fallback: `(num_prompts, vocab)` log-probs to use instead (the expert's).

    Returns:
        `(scores, fell_back)`: the repaired scores and a `(num_prompts,)` bool tensor of rows replaced.
    """
    # the row's max is NaN with any NaN, +inf with any +inf, −inf when all are −inf: one reduction
    bad = ~torch.isfinite(scores.amax(-1))
    if not bool(bad.any()):
        return scores, bad
    return torch.where(bad.unsqueeze(-1), fallback.float(), scores), bad
