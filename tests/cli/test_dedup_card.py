"""Deduplication of outputs (exact and MinHash) and the Hugging Face dataset card `steer generate` writes."""

from __future__ import annotations

import json

import pytest

from steer_plugins import SteerConfig, SteerEngine
from steer_plugins.apps.card import CARD_MARKER, card_path, size_category, write_card
from steer_plugins.apps.cli import main
from steer_plugins.apps.data_io import read_jsonl
from steer_plugins.apps.dedup import Deduper, normalise
from steer_plugins.apps.pipeline import generate_to_file
from steer_plugins.testing import TINY_CORPUS, tiny_model

yaml = pytest.importorskip("yaml")


# ------------------------------------------------------------------ Deduper


def test_exact_dedup_normalises_case_and_whitespace():
    d = Deduper("exact")
    assert normalise("  Is\tDARK  matter cold? ") == "is dark matter cold?"
    assert [d.seen(t) for t in ("Is dark matter cold?", "is dark  matter COLD?", "Is it hot?")] == [
        False,
        True,
        False,
    ]
    assert d.counts() == {"mode": "exact", "threshold": None, "checked": 3, "kept": 2, "duplicates": 1}
    d.add(["Known already?"])  # remembered, not counted
    assert d.seen("known already?") and d.counts()["checked"] == 4 and len(d) == 3


def test_minhash_dedup_finds_near_duplicates_only():
    pytest.importorskip("datasketch")
    d = Deduper("minhash", 0.7)
    a = "Could the Hubble tension come from a systematic error in the distance ladder?"
    assert not d.seen(a)
    assert d.seen(a.replace("Could", "Can"))  # one word changed: near-duplicate
    assert not d.seen("Do primordial black holes make up a fraction of the dark matter?")
    assert Deduper("exact").seen(a) is False and not Deduper("exact").seen(a.replace("Could", "Can"))
    strict = Deduper("minhash", 1.0)  # the LSH cannot band at 1.0; the check still works
    assert not strict.seen(a) and strict.seen(a) and not strict.seen(a + " Or not?")


@pytest.mark.parametrize(
    ("mode", "threshold"), [("fuzzy", None), ("minhash", 0), ("minhash", 1.5), ("exact", 0.5)]
)
def test_dedup_rejects_bad_settings(mode, threshold):
    with pytest.raises(ValueError):
        Deduper(mode, threshold)


def test_duplicates_are_dropped_and_join_the_pool_once(tiny_tok, tmp_path):
    """Greedy decoding without guidance or negatives repeats one text: dedup keeps it once, draws
    again up to the budget, says the run is short, and the pool grows by the kept rows only."""
    cfg = SteerConfig(gamma=0.0, eta=0.0, temperature=0.0, max_new_tokens=5, num_negatives=2)
    engine = SteerEngine(
        tiny_model("llama", tiny_tok, seed=1), tokenizer=tiny_tok, config=cfg, pool=list(TINY_CORPUS)
    )
    try:
        before = len(engine.pool)
        dedup = Deduper("exact")
        stats = generate_to_file(
            engine, "Write a question:", 3, tmp_path / "d.jsonl", chunk_size=3, dedup=dedup, seed=0
        )
        rows = read_jsonl(tmp_path / "d.jsonl")
        assert len(rows) == 1 and stats.total == 1 and not stats.complete
        assert stats.draws == 12 and stats.duplicates == 11  # 4 draws per wanted row at most
        assert len(engine.pool) == before + 1  # the duplicates never joined the pool

        plain = generate_to_file(engine, "Write a question:", 3, tmp_path / "p.jsonl", chunk_size=3, seed=0)
        assert plain.total == 3 and len(engine.pool) == before + 1 + 3  # without dedup every output joins
        meta = json.loads((tmp_path / "d.jsonl.meta.json").read_text())
        assert meta["counts"] == {"rows": 1, "draws": 12, "duplicates": 11}
        assert meta["settings"]["dedup"] == {"mode": "exact", "threshold": None}
    finally:
        engine.close()


def test_generate_dedup_reports_counts_and_the_card_records_them(tmp_path, gen_args, capsys):
    out = tmp_path / "data" / "synth.jsonl"
    code = main(["generate", *gen_args, "--n", "2", "--chunk-size", "2", "--out", str(out), "--dedup", "exact",
                 "--gamma", "0", "--eta", "0", "--temperature", "0", "--license", "cc-by-4.0"])  # fmt: skip
    assert code == 0
    captured = capsys.readouterr()
    stats = json.loads(captured.out.strip().splitlines()[-1])
    assert stats["total"] == 1 and stats["duplicates"] == 7 and stats["complete"] is False
    assert (
        "dedup (exact): 7 duplicates dropped of 8 drawn" in captured.err
        and "only 1 of 2 rows" in captured.err
    )

    card = (out.parent / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["license"] == "cc-by-4.0" and front["size_categories"] == ["n<1K"]
    assert front["task_categories"] == ["text-generation"]
    assert front["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": ["synth.jsonl"]}]}
    ]
    meta = json.loads((out.parent / "synth.jsonl.meta.json").read_text())
    for needle in (CARD_MARKER, "| duplicates dropped | `7` |", "| mode | `exact` |", meta["settings"]["model"],
                   meta["settings"]["fingerprint"], "| gamma | `0.0` |", "Seed: `0`", "steer generate --expert"):  # fmt: skip
        assert needle in card, needle


def test_generate_minhash_flag(tmp_path, gen_args, capsys):
    pytest.importorskip("datasketch")
    out = tmp_path / "m.jsonl"
    code = main(
        [
            "generate",
            *gen_args,
            "--n",
            "3",
            "--out",
            str(out),
            "--dedup",
            "minhash",
            "--dedup-threshold",
            "0.9",
        ]
    )
    assert code == 0 and len(read_jsonl(out)) <= 3
    assert "dedup (minhash)" in capsys.readouterr().err
    assert main(["generate", *gen_args, "--n", "3", "--out", str(out), "--dedup-threshold", "0.9"]) == 2
    assert "--dedup minhash only" in capsys.readouterr().err


# ------------------------------------------------------------------ the card


def test_card_never_overwrites_a_readme_it_did_not_write(tmp_path):
    (tmp_path / "README.md").write_text("# my project\n")
    out = tmp_path / "synth.jsonl"
    path = write_card(card_path(out), data_files=out, num_rows=5)
    assert path.name == "synth.jsonl.README.md" and (tmp_path / "README.md").read_text() == "# my project\n"
    own = tmp_path / "sub" / "a.jsonl"
    own.parent.mkdir()
    first = write_card(card_path(own), data_files=own, num_rows=2, metrics={"distinct_2": 0.81})
    assert first.name == "README.md" and card_path(own) == first  # its own card is rewritten in place
    assert "| distinct_2 | `0.81` |" in first.read_text()
    assert card_path(own.with_name("b.jsonl")).name == "b.jsonl.README.md"  # another file's card stays


@pytest.mark.parametrize(
    ("n", "category"), [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (250_000, "100K<n<1M")]
)
def test_size_categories(n, category):
    assert size_category(n) == category
