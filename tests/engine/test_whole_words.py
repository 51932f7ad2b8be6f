"""`whole_words`: the expert alone decides whether a word goes on and how it is spelled."""

from __future__ import annotations

import torch

from steer_plugins.core.combine import continuation_tokens


def test_word_continuations_keep_the_experts_probabilities(tiny_engine, tiny_tok):
    prompt = "the negatives"
    kw = dict(seed=3, gamma=0.5, eta=4.0, max_new_tokens=12, ignore_eos=True, add_to_pool=False)
    guarded = tiny_engine.generate([prompt], return_scores=True, whole_words=True, **kw)[0]
    plain = tiny_engine.generate([prompt], return_scores=True, **kw)[0]
    flags = continuation_tokens(tiny_tok, guarded.scores[0].shape[-1])
    context = tiny_tok(prompt, add_special_tokens=False)["input_ids"]
    for step, token in enumerate(guarded.token_ids):
        with torch.inference_mode():
            ref = tiny_engine.models.expert(torch.tensor([context])).logits[0, -1].float().log_softmax(-1)
        got = guarded.scores[step]
        torch.testing.assert_close(got[flags], ref[flags], atol=1e-4, rtol=0)
        torch.testing.assert_close(got[~flags].exp().sum(), ref[~flags].exp().sum(), atol=1e-4, rtol=0)
        assert (got[~flags] - ref[~flags]).abs().max() > 1e-2  # new words are steered
        context.append(token)
    assert guarded.token_ids != plain.token_ids
