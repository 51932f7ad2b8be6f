"""`whole_words`: the expert alone decides whether a word goes on and how it is spelled."""

from __future__ import annotations

import torch

from steer_plugins.core.combine import continuation_tokens


def test_word_continuations_keep_the_experts_probabilities(tiny_engine, tiny_tok):
    prompt = "the negatives"
    kw = dict(
        seed=3,
        gamma=0.5,
        eta=4.0,
        alpha=None,
        spelling_min_p=None,
        known_words=False,
        max_new_tokens=12,
        ignore_eos=True,
        add_to_pool=False,
    )
    guarded = tiny_engine.generate([prompt], return_scores=True, whole_words=True, **kw)[0]
    plain = tiny_engine.generate([prompt], return_scores=True, whole_words=False, **kw)[0]
    flags = continuation_tokens(tiny_tok, guarded.scores[0].shape[-1])
    context = tiny_tok(prompt, add_special_tokens=False)["input_ids"]
    for step, token in enumerate(guarded.token_ids):
        with torch.inference_mode():
            ref = tiny_engine.models.expert(torch.tensor([context])).logits[0, -1].float().log_softmax(-1)
        got = guarded.scores[step]
        top = torch.zeros_like(flags)
        top[ref.topk(10).indices] = True  # the engine's top_k: how plain sampling could spell
        spelled, dropped = flags & top, flags & ~top
        assert torch.isneginf(got[dropped]).all()
        if spelled.any():  # the expert's own odds between the word's continuations ...
            shift = got[spelled] - ref[spelled]
            torch.testing.assert_close(shift, shift[:1].expand_as(shift), atol=1e-4, rtol=0)
            # ... and between going on and starting a new word
            kept = lambda lp, m: lp[m].logsumexp(0)  # noqa: E731
            torch.testing.assert_close(
                kept(got, ~flags) - kept(got, spelled),
                kept(ref, ~flags) - kept(ref, spelled),
                atol=1e-4,
                rtol=0,
            )
        assert (got[~flags] - ref[~flags]).abs().max() > 1e-2  # new words are steered
        context.append(token)
    assert guarded.token_ids != plain.token_ids
