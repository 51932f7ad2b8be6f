"""The decoding rule as one pure function: a weighted sum of branch log-probs.

STEER (O'Neill et al., arXiv 2308.07645), classifier-free guidance, contrastive decoding
(Li et al., arXiv 2210.15097) and expert-only sampling are all `combine` with different weights;
`SteerConfig.branch_weights` produces them. No model, no cache, no mutation of inputs.
"""

from __future__ import annotations

import math

import torch

__all__ = ["combine", "head_mask", "guard_non_finite"]


def head_mask(head_logprobs: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """Plausibility mask V_head = {v : p(v) >= α · max_w p(w)} of the head branch.

    Args:
        head_logprobs: `(num_prompts, vocab)` log-probs of the head (expert on the prompt).
        alpha: a float in (0, 1], or a `(num_prompts,)` tensor (NaN = no mask for that row).

    Returns:
        `(num_prompts, vocab)` bool tensor, True where the token is kept.
    """
    alpha_t = torch.as_tensor(alpha, dtype=torch.float32, device=head_logprobs.device)
    threshold = head_logprobs.max(dim=-1, keepdim=True).values + torch.log(alpha_t).reshape(-1, 1)
    keep = head_logprobs >= threshold
    return keep | torch.isnan(threshold)


def combine(
    branch_logprobs: torch.Tensor,
    weights: torch.Tensor,
    *,
    alpha: float | torch.Tensor | None = None,
    head_index: int = 0,
) -> torch.Tensor:
    """s = Σᵢ wᵢ·ℓᵢ over branches, optionally restricted to the head branch's plausible tokens.

    Args:
        branch_logprobs: `(num_prompts, num_branches, vocab)` log-softmax outputs, any float dtype.
        weights: `(num_branches,)` or `(num_prompts, num_branches)`. A zero weight ignores its branch
            entirely (even where that branch is −inf), which is how absent branches are padded.
        alpha: plausibility head mask (see `head_mask`); None = off, as in the paper.
        head_index: which branch is the head (the expert on the prompt).

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
    if (
        bool(active[:, head_index].all())
        and int(active.sum()) == lp.shape[0]
        and bool((w[:, head_index] == 1).all())
    ):
        scores = lp[:, head_index].clone()  # single branch of weight 1: nothing to combine
    else:
        terms = torch.where(active.unsqueeze(-1), w.unsqueeze(-1) * lp, torch.zeros((), device=lp.device))
        scores = terms.sum(dim=1)
    if alpha is not None and not (isinstance(alpha, float) and math.isnan(alpha)):
        scores = scores.masked_fill(~head_mask(lp[:, head_index], alpha), float("-inf"))
    return scores


def guard_non_finite(scores: torch.Tensor, fallback: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace rows that cannot be sampled from (NaN, +inf, or all −inf) with `fallback` rows.

    Args:
        scores: `(num_prompts, vocab)` combined scores.
        fallback: `(num_prompts, vocab)` log-probs to use instead (the expert's).

    Returns:
        `(scores, fell_back)`: the repaired scores and a `(num_prompts,)` bool tensor of rows replaced.
    """
    bad = torch.isnan(scores).any(-1) | torch.isposinf(scores).any(-1) | torch.isneginf(scores).all(-1)
    if not bool(bad.any()):
        return scores, bad
    return torch.where(bad.unsqueeze(-1), fallback.float(), scores), bad
