"""What data-pipeline users expect of the augmenter (issue 14): dedup, a dataset card, truthful
progress bars, `remove_columns`, streaming datasets and early errors; real `datasets.map`, tiny models."""

from __future__ import annotations

import re
from collections import Counter

import datasets
import pytest
from datasets_steer import SteerAugmenter
from datasets_steer.dedup import OutputDedup
from datasets_steer.progress import Progress

from steer_plugins.apps.dedup import normalise

SETTINGS = dict(prompt="Write about {topic}:", max_new_tokens=5, num_negatives=3, progress=False)


def make_aug(folders, **kw):
    return SteerAugmenter(*folders, **{**SETTINGS, "checkpoint_dir": None, **kw})


def test_exact_dedup_drops_duplicate_rows_and_keeps_them_out_of_the_pool(tiny_folders, topics_ds, tmp_path):
    # one-token outputs from a tiny model repeat a lot: 8 rows x 4 outputs
    aug = make_aug(tiny_folders, n=4, max_new_tokens=1, dedup="exact", checkpoint_dir=tmp_path).fit(topics_ds)
    out = topics_ds.map(aug, batched=True, batch_size=3)
    texts = [t for t, s in zip(out["text"], out["synthetic"], strict=True) if s]
    stats = aug.stats
    assert stats["duplicate_outputs"] > 0, "the tiny model should repeat itself"
    assert stats["synthetic_rows"] == len(texts) == 32 - stats["duplicate_outputs"]
    assert len({normalise(t) for t in texts}) == len(texts)  # no duplicates returned
    assert not {normalise(t) for t in texts} & {normalise(t) for t in topics_ds["text"]}
    assert len(out) == len(topics_ds) + len(texts)  # originals are never dropped
    pool = aug.engine.pool.texts
    assert len({normalise(t) for t in pool}) == len(pool)  # no text joined the pool twice
    # every output stays in the checkpoint: a rerun without dedup returns all 32, nothing regenerated
    plain = make_aug(tiny_folders, n=4, max_new_tokens=1, checkpoint_dir=tmp_path).fit(topics_ds)
    full = topics_ds.map(plain, batched=True, batch_size=3)
    assert sum(full["synthetic"]) == 32 and plain.stats["generated_rows"] == 0
    # and a rerun with dedup returns the same rows as the first (rows are checked in map order)
    again = make_aug(tiny_folders, n=4, max_new_tokens=1, dedup="exact", checkpoint_dir=tmp_path).fit(
        topics_ds
    )
    assert topics_ds.map(again, batched=True, batch_size=3)["text"] == out["text"]
    card = (aug.checkpoint_path / "README.md").read_text()
    assert "## Deduplication" in card


def test_minhash_dedup_catches_near_duplicates_exact_does_not():
    a = "The quick brown fox jumps over the lazy dog near the river bank today."
    b = "The quick brown fox jumps over the lazy dog near the river bank today!"
    near = OutputDedup("minhash", 0.7, real_texts=["Is dark matter cold?"])
    exact = OutputDedup("exact", None, real_texts=["Is dark matter cold?"])
    assert [near.keep_row(t) for t in (a, b, "is dark  MATTER cold?")] == [True, False, False]
    assert [exact.keep_row(t) for t in (a, b, "is dark  MATTER cold?")] == [True, True, False]
    assert near.counts()["duplicates"] == 2 and near.counts()["mode"] == "minhash"
    assert near.new_for_pool([a, b, "Something else entirely, about comets."]) == [
        a,
        "Something else entirely, about comets.",
    ]


def test_minhash_dedup_through_map(tiny_folders, topics_ds):
    aug = make_aug(tiny_folders, n=3, max_new_tokens=1, dedup="minhash", dedup_threshold=0.9).fit(topics_ds)
    out = topics_ds.map(aug, batched=True, batch_size=4)
    assert aug.stats["synthetic_rows"] + aug.stats["duplicate_outputs"] == 24
    assert aug.stats["synthetic_rows"] == sum(out["synthetic"])


def test_dedup_settings_are_checked_up_front(tiny_folders):
    with pytest.raises(ValueError, match="`dedup` must be None or one of"):
        make_aug(tiny_folders, dedup="fuzzy")
    with pytest.raises(ValueError, match="threshold"):
        make_aug(tiny_folders, dedup="exact", dedup_threshold=0.5)
    with pytest.raises(ValueError, match="needs `dedup='minhash'`"):
        make_aug(tiny_folders, dedup_threshold=0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        make_aug(tiny_folders, dedup="minhash", dedup_threshold=1.5)


def test_dataset_card_next_to_checkpoint_and_output(tiny_folders, topics_ds, tmp_path):
    aug = make_aug(tiny_folders, n=1, checkpoint_dir=tmp_path / "ck", seed=5).fit(topics_ds)
    out = topics_ds.map(aug, batched=True, batch_size=4)
    card = (aug.checkpoint_path / "README.md").read_text()
    assert card.startswith("---\n") and 'license: "other"' in card and '- "part-*.jsonl"' in card
    fingerprint = aug.engine.fingerprint(**aug.config_fields)
    assert fingerprint in card and aug.engine.name.split("|")[0] in card  # weights fingerprints
    row = next(line for line in card.splitlines() if line.startswith("| expert + base |"))
    assert row.replace("\\|", "").count("|") == 4  # role, name, fingerprint: a 3-cell table row
    assert "| rows_in_checkpoint | `8` |" in card and "| last worker's generated_rows | `8` |" in card
    assert "Seed: `5`" in card and "Write about {topic}:" in card
    out.to_parquet(tmp_path / "out" / "train.parquet")
    path = aug.write_card(tmp_path / "out" / "README.md", data_files=["train.parquet"], num_rows=len(out))
    text = path.read_text()
    assert '- "train.parquet"' in text and "| generated_rows | `8` |" in text
    loaded = datasets.load_dataset(str(tmp_path / "out"), split="train")  # the card's config finds the data
    assert len(loaded) == len(out)


def test_card_off(tiny_folders, topics_ds, tmp_path):
    aug = make_aug(tiny_folders, n=1, checkpoint_dir=tmp_path, card=False).fit(topics_ds)
    topics_ds.map(aug, batched=True, batch_size=8)
    assert not (aug.checkpoint_path / "README.md").exists()


def final_bars(err: str) -> dict[str, tuple[int, int]]:
    """The last `done/total` each progress bar printed, by its description."""
    last = {}
    for desc, done, total in re.findall(r"(steer augment(?: #\d)?): [^\r\n]*?(\d+)/(\d+)", err):
        last[desc] = (int(done), int(total))
    return last


def test_each_num_proc_worker_bar_counts_its_own_shard(tiny_folders, topics_ds, capfd):
    aug = make_aug(tiny_folders, n=1, eta=0.0, progress=True)
    topics_ds.map(aug, batched=True, batch_size=2, num_proc=2, with_rank=True)
    bars = final_bars(capfd.readouterr().err)
    assert bars == {"steer augment #0": (4, 4), "steer augment #1": (4, 4)}, bars


def test_bar_total_is_the_mapped_rows_and_reused_rows_count(tiny_folders, topics_ds, tmp_path, capfd):
    aug = make_aug(tiny_folders, n=1, checkpoint_dir=tmp_path, progress=True).fit(topics_ds)
    topics_ds.select(range(3)).map(aug, batched=True, batch_size=2)  # fitted on 8, maps 3
    assert final_bars(capfd.readouterr().err) == {"steer augment": (3, 3)}
    again = make_aug(tiny_folders, n=1, checkpoint_dir=tmp_path, progress=True).fit(topics_ds)
    topics_ds.map(again, batched=True, batch_size=4)  # 3 from the checkpoint, 5 generated
    assert final_bars(capfd.readouterr().err) == {"steer augment": (8, 8)}
    assert again.stats["reused_rows"] == 3


def test_progress_without_a_known_share_counts_what_it_received():
    p = Progress(show=True)
    p.begin_batch(3, None, None)
    p.row_done([{"completion_tokens": 2}])
    assert p.end_batch(3) is False  # a Ray actor does not know its share: the total grows
    p.begin_batch(2, None, None)
    p.end_batch(2)
    bar = p._bar  # noqa: SLF001 - the bar's own state is what the user sees
    assert (bar.n, bar.total) == (p.done, p.total) == (5, 5)
    p.close()
    assert bar.disable  # closed
    known = Progress(show=False)
    known.begin_batch(2, (1, 3), None)
    assert known.end_batch(2) is False
    known.begin_batch(1, (1, 3), None)
    assert known.end_batch(1) is True and (known.done, known.total) == (3, 3)


def test_map_remove_columns_is_honoured(tiny_folders, topics_ds):
    aug = make_aug(tiny_folders, n=2, output_column="generated", eta=0.0)
    out = topics_ds.map(aug, batched=True, batch_size=4, remove_columns=["text"])
    assert "text" not in out.column_names and len(out) == 3 * len(topics_ds)
    assert out.column_names[:2] == ["topic", "generated"]
    streaming = topics_ds.to_iterable_dataset().map(aug, batched=True, batch_size=4, remove_columns=["text"])
    rows = list(streaming)
    assert len(rows) == 3 * len(topics_ds) and all("text" not in r for r in rows)
    assert Counter(r["topic"] for r in rows if r["synthetic"]) == Counter({t: 2 for t in topics_ds["topic"]})


def test_streaming_dataset_needs_real_texts_or_a_bounded_sample(tiny_folders, topics_ds):
    streaming = topics_ds.to_iterable_dataset()
    with pytest.raises(TypeError, match=r"streaming IterableDataset has no length.*real_texts=.*max_rows"):
        SteerAugmenter.from_dataset(streaming, *tiny_folders, **SETTINGS)
    aug = SteerAugmenter.from_dataset(
        streaming, *tiny_folders, max_rows=5, n=1, checkpoint_dir=None, **SETTINGS
    )
    assert aug.real_texts == topics_ds["text"][:5]
    rows = list(streaming.map(aug, batched=True, batch_size=4))
    assert sum(r["synthetic"] for r in rows) == len(topics_ds)
    with pytest.raises(ValueError, match="`max_rows` must be an integer >= 1"):
        make_aug(tiny_folders).fit(topics_ds, max_rows=0)


def test_k_larger_than_the_real_pool_fails_at_fit(tiny_folders, topics_ds):
    with pytest.raises(
        ValueError, match=r"`num_negatives` \(K=9\) is larger than the real negative pool \(8"
    ):
        make_aug(tiny_folders, num_negatives=9).fit(topics_ds)
    make_aug(tiny_folders, num_negatives=9, eta=0.0).fit(topics_ds)  # negatives off: nothing to draw
