"""Known words (`SteerConfig.known_words`): the lexicon, the per-prompt word state, and the guard
inside the decoder, the `LogitsProcessor` and a batch (the exact scores are checked against the
no-cache reference in test_reference.py)."""

from __future__ import annotations

import torch

from steer_plugins import SteerConfig, SteerEngine
from steer_plugins.core.lexicon import (
    CANDIDATES,
    KnownWords,
    WordGuard,
    english_words,
    guard_bias,
    known_words_for,
    token_texts,
)
from steer_plugins.core.negatives import NegativePool
from steer_plugins.testing import tiny_model

PROMPTS = ["Does dark matter", "Write a question about astronomy: Could the quick brown fox", "Is"]
NEGS = [["Is the Hubble tension a sign of new physics?"], ["What is the capital of France?"], ["Stars."]]


def test_known_words_answer_words_and_starts_through_their_parent():
    english = KnownWords(["galaxy", "galaxies", "star"])
    pool = KnownWords(["Exomoons", "x-ray", "h2o"], english)  # only letter runs count
    assert pool.is_word("exomoons") and pool.is_word("galaxy") and not pool.is_word("galax")
    assert pool.is_prefix("exo") and pool.is_prefix("galax") and not pool.is_prefix("galaxz")
    assert not pool.is_word("ray") and not pool.is_prefix("h2")  # "x-ray", "h2o" are not letter runs
    assert pool.is_word("q")  # one-letter words are not scored, so always allowed
    assert len(pool) == 4


def test_english_list_is_wordfreqs_and_knows_the_domain_but_not_inventions():
    english = english_words()
    assert english.is_word("supernova") and english.is_word("magnetars") and english.is_word("seyfert")
    assert not english.is_word("supernovova") and not english.is_word("magnetohydreuses")
    assert english.is_prefix("magnetohydrodynam") and not english.is_prefix("supernovov")
    assert english_words() is english  # loaded once


def test_pool_and_prompt_words_are_known_and_synthetic_rows_are_not():
    pool = NegativePool(["Do exomoonlets host zorblax clouds?"])
    pool.add(["Do fakewordium stars shine?"])  # synthetic: an invented word must not become known
    known = known_words_for(pool, "About quuxian winds:")
    assert known.is_word("zorblax") and known.is_word("exomoonlets") and known.is_word("quuxian")
    assert not known.is_word("fakewordium")
    assert known_words_for(pool, "About quuxian winds:") is known  # built once per (pool, prompt)
    assert known.parent is english_words() and not known_words_for(pool).is_word("quuxian")
    pool.add(["Do quarkleons exist?"], real=True)
    assert known_words_for(pool, "About quuxian winds:").is_word("quarkleons")  # a new real example


def test_word_guard_spells_into_known_words_and_ends_only_finished_ones():
    texts = [" Sey", "f", "ert", "ren", "?", "", " galaxies", "-", "ies", " X"]
    guard = WordGuard(KnownWords(["seyfert", "galaxies", "galaxy"]), texts)
    assert guard.allows(0) and not guard.allows(3)  # " ren": "ren" starts no known word here
    guard.advance(0)
    assert guard.word == "sey" and not guard.allows(4) and not guard.allows(5)  # "Sey?" / EOS after "Sey"
    guard.advance(1)
    assert [guard.allows(t) for t in (2, 3, 4)] == [True, False, False]
    guard.advance(2)
    assert guard.word == "seyfert" and guard.allows(4) and guard.allows(5) and guard.allows(6)
    guard.advance(4)
    assert guard.word == "" and guard.allows(9)  # one-letter words are always allowed
    guard.advance(6)
    assert guard.allows(7) and not guard.allows(8)  # "galaxies-" ends a word; "galaxiesies" is none
    assert not guard.allows(len(texts))  # ids past the tokenizer have no text
    assert guard.allowed([2, 7, 8]) == [7]


def test_word_guard_never_writes_the_same_word_twice_in_a_row():
    texts = [" deficit", " def", "icit", " deficits", ",", " the", "", " a"]
    guard = WordGuard(KnownWords(["deficit", "deficits", "the"]), texts)
    guard.advance(0)
    assert guard.last == "" and guard.word == "deficit"  # not finished yet: "deficits" may follow
    assert guard.allows(4) and guard.allows(5) and guard.allows(2) is False  # "deficiticit": no word
    assert not guard.allows(0)  # " deficit" finishes "deficit" and writes it again
    guard.advance(4)
    assert guard.last == "deficit" and guard.word == ""
    assert not guard.allows(0) and guard.allows(1) and guard.allows(3)  # ", deficit" again: no
    guard.advance(1)
    assert not guard.allows(2)  # nor spelled in two pieces
    guard = WordGuard(KnownWords(["deficit", "the"]), texts)
    for t in (5, 6):  # EOS finishes the word in progress
        guard.advance(t)
    assert guard.last == "the" and not guard.allows(5) and guard.allows(7)


def test_guard_bias_keeps_allowed_candidates_and_leaves_stuck_rows_alone():
    texts = ["star", "zzq", "?", " x"]
    known = KnownWords(["star"])
    stuck = WordGuard(known, texts)
    stuck.word = "zzqq"  # already unknown: no candidate can fix it
    head = torch.log(torch.tensor([[0.1, 0.6, 0.2, 0.1], [0.1, 0.6, 0.2, 0.1]]))
    bias = guard_bias(head, [WordGuard(known, texts), stuck])
    assert bias[0].tolist() == [0.0, float("-inf"), 0.0, 0.0]
    assert bias[1].tolist() == [0.0] * 4
    assert CANDIDATES >= 20  # the head mask's default α 0.05 keeps at most 20 tokens


def test_token_texts_put_the_space_back_and_blank_special_tokens(tiny_tok):
    texts = token_texts(tiny_tok)
    assert len(texts) == len(tiny_tok) and token_texts(tiny_tok) is texts
    spaced = tiny_tok.convert_tokens_to_ids("Ġthe")
    assert texts[spaced] == " the"
    assert all(texts[i] == "" for i in tiny_tok.all_special_ids)


def guarded_engine(tok, **cfg) -> SteerEngine:
    expert, base = tiny_model("llama", tok, seed=1), tiny_model("llama", tok, seed=2)
    config = SteerConfig(**{"max_new_tokens": 10, "known_words": True, **cfg})
    return SteerEngine(expert, base, tok, config=config, pool=["Is the quick brown fox a star?"])


def test_known_words_change_steered_rows_and_leave_plain_ones(tiny_tok):
    engine = guarded_engine(tiny_tok)
    on = engine.generate(PROMPTS, negatives=NEGS, seed=4)
    off = engine.generate(PROMPTS, negatives=NEGS, seed=4, known_words=False)
    assert [r.token_ids for r in on] != [r.token_ids for r in off]
    plain_on = engine.generate(PROMPTS, negatives=NEGS, seed=4, gamma=0.0, eta=0.0)
    plain_off = engine.generate(PROMPTS, negatives=NEGS, seed=4, gamma=0.0, eta=0.0, known_words=False)
    assert [r.token_ids for r in plain_on] == [r.token_ids for r in plain_off]
    engine.close()


def test_each_row_keeps_its_own_word_state_in_a_batch(tiny_tok):
    engine = guarded_engine(tiny_tok)
    batch = engine.generate(PROMPTS, negatives=NEGS, seeds=[7, 8, 9], return_scores=True)
    for i, r in enumerate(batch):
        single = engine.generate([PROMPTS[i]], negatives=[NEGS[i]], seed=7 + i, return_scores=True)[0]
        assert single.token_ids == r.token_ids
        assert torch.equal(torch.isinf(single.scores), torch.isinf(r.scores))
    engine.close()


def test_logits_processor_guards_like_the_engine(tiny_tok):
    engine = guarded_engine(tiny_tok, temperature=0, top_k=None)
    negs = ["The quick brown fox jumps over the lazy dog."]
    want = engine.generate([PROMPTS[0]], negatives=[negs], seed=1)[0]
    unguarded = engine.generate([PROMPTS[0]], negatives=[negs], seed=1, known_words=False)[0]
    assert want.token_ids != unguarded.token_ids  # the guard changes the greedy path here
    ids = torch.tensor([tiny_tok(PROMPTS[0]).input_ids])
    proc = engine.logits_processor(negatives=negs, temperature=0)
    out = engine.models.expert.generate(
        ids, logits_processor=[proc], do_sample=False, max_new_tokens=10, pad_token_id=tiny_tok.pad_token_id
    )
    assert out[0, ids.shape[1] :].tolist() == want.token_ids[: out.shape[1] - ids.shape[1]]
    engine.close()


def test_constrained_rows_are_left_to_their_grammar(tiny_tok):
    engine = guarded_engine(tiny_tok, max_new_tokens=12)
    choices = ["zqx", "qqz"]  # neither is a word: the guard would forbid both
    r = engine.generate([PROMPTS[0]], negatives=[NEGS[0]], seed=2, constraint=choices)[0]
    assert r.text in {"zqx", "qqz"} and r.parsed == r.text and r.finish_reason == "stop"
    engine.close()
