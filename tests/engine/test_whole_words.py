"""`whole_words`: inside a word the engine samples from the expert alone."""

from __future__ import annotations

import torch

from steer_plugins.core.combine import continuation_tokens


def test_mid_word_steps_score_as_the_expert(tiny_engine, tiny_tok):
    prompt = "the negatives"
    kw = dict(seed=3, gamma=0.5, eta=4.0, max_new_tokens=12, ignore_eos=True, add_to_pool=False)
    guarded = tiny_engine.generate([prompt], return_scores=True, whole_words=True, **kw)[0]
    plain = tiny_engine.generate([prompt], return_scores=True, **kw)[0]
    flags = continuation_tokens(tiny_tok, guarded.scores[0].shape[-1])
    expert = tiny_engine.models.expert
    context = tiny_tok(prompt, add_special_tokens=False)["input_ids"]
    mid = 0
    for step, token in enumerate(guarded.token_ids):
        with torch.inference_mode():
            logits = expert(torch.tensor([context])).logits[0, -1].float()
        ref = logits.log_softmax(-1)
        if flags[ref.argmax()]:  # mid-word: the expert's own distribution
            mid += 1
            torch.testing.assert_close(guarded.scores[step], ref, atol=1e-4, rtol=0)
        else:  # a word starts: steered, not the expert's
            assert (guarded.scores[step] - ref).abs().max() > 1e-2
        context.append(token)
    assert 0 < mid < len(guarded.token_ids)  # both kinds of step occurred
    assert guarded.token_ids != plain.token_ids  # and the guard changed the output
