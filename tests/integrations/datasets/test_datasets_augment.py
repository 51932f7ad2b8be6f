"""SteerAugmenter through the real `datasets.map` on tiny models loaded from safetensors folders."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter

import datasets
import pytest
from datasets.fingerprint import Hasher
from datasets_steer import ADDED_COLUMNS, SteerAugmenter

from steer_plugins import SteerConfig

SETTINGS = dict(max_new_tokens=6, num_negatives=3, progress=False)


def make_aug(folders, tmp_path=None, **kw):
    expert, base = folders
    kw = {
        **SETTINGS,
        "prompt": "Write about {topic}:",
        "checkpoint_dir": None if tmp_path is None else tmp_path / "ckpt",
        **kw,
    }
    return SteerAugmenter(expert, base, **kw)


def check_complete(out, ds, n, keep_original=True):
    """Every input row once as an original (if kept) and exactly n synthetic rows each."""
    syn = Counter(t for t, s in zip(out["topic"], out["synthetic"], strict=True) if s)
    orig = Counter(t for t, s in zip(out["topic"], out["synthetic"], strict=True) if not s)
    assert syn == Counter({t: n for t in ds["topic"]})
    assert orig == (Counter(ds["topic"]) if keep_original else Counter())
    seeds = [s for s in out["steer_seed"] if s is not None]
    assert len(seeds) == len(set(seeds)) == n * len(ds)


def test_batched_map_grows_each_row_into_n_plus_original(tiny_folders, topics_ds):
    aug = make_aug(tiny_folders, n=3).fit(topics_ds)
    out = topics_ds.map(aug, batched=True, batch_size=3)
    assert len(out) == 4 * len(topics_ds)
    assert out.column_names == ["topic", "text", *ADDED_COLUMNS]
    check_complete(out, topics_ds, 3)
    real = set(topics_ds["text"])
    for row in out:
        if not row["synthetic"]:
            assert row["text"] in real and row["steer_config"] is None and row["steer_negatives"] == []
            continue
        assert isinstance(row["text"], str)
        settings = json.loads(row["steer_config"])
        assert settings["max_new_tokens"] == 6 and settings["num_negatives"] == 3
        defaults = SteerConfig()  # every field not set is recorded at the product default
        assert (settings["eta"], settings["alpha"], settings["whole_words"]) == (
            defaults.eta,
            defaults.alpha,
            defaults.whole_words,
        )
        assert len(row["steer_negatives"]) == 3  # K drawn from the pool (real texts + earlier outputs)
        assert row["steer_seed"] == settings["seed"]
    # seeds are derived from the row, not from batching
    first = out.filter(lambda r: r["synthetic"] and r["topic"] == "comets")["steer_seed"]
    key = aug.row_key({"topic": "comets", "text": topics_ds["text"][0]})
    assert first == [aug.row_seed(key, j) for j in range(3)]
    assert aug.stats["generated_rows"] == len(topics_ds)


def test_new_output_column_without_originals(tiny_folders, topics_ds):
    aug = make_aug(tiny_folders, n=2, output_column="generated", keep_original=False).fit(topics_ds)
    out = topics_ds.map(aug, batched=True, batch_size=4, remove_columns=None)
    assert len(out) == 2 * len(topics_ds) and all(out["synthetic"])
    assert out["text"] == [t for t in topics_ds["text"] for _ in range(2)]  # source text kept alongside
    assert all(isinstance(g, str) for g in out["generated"])


def test_fingerprint_is_fast_stable_and_follows_settings(tiny_folders, topics_ds):
    aug = make_aug(tiny_folders).fit(topics_ds)
    _ = aug.engine  # model loaded: it must still not be hashed or pickled
    t0 = time.perf_counter()
    h = Hasher.hash(aug)
    ms = (time.perf_counter() - t0) * 1000
    print(
        f"\nfingerprint of a loaded SteerAugmenter: {ms:.2f} ms, pickled size {len(pickle.dumps(aug))} bytes"
    )
    assert ms < 50
    assert len(pickle.dumps(aug)) < 20_000
    assert Hasher.hash(make_aug(tiny_folders).fit(topics_ds)) == h  # same settings, fresh object
    assert Hasher.hash(pickle.loads(pickle.dumps(aug))) == h
    for change in (dict(gamma=0.5), dict(n=3), dict(prompt="Describe {topic}:"), dict(seed=7)):
        assert Hasher.hash(make_aug(tiny_folders, **change).fit(topics_ds)) != h, change
    other = topics_ds.select(range(4))
    assert Hasher.hash(make_aug(tiny_folders).fit(other)) != h  # another real pool
    fp1 = topics_ds.map(aug, batched=True, batch_size=4)._fingerprint
    fp2 = topics_ds.map(make_aug(tiny_folders).fit(topics_ds), batched=True, batch_size=4)._fingerprint
    assert fp1 == fp2


def test_num_proc_2_with_rank_matches_one_process(tiny_folders, topics_ds):
    # eta=0 makes every output a pure function of (prompt, seed): sharding must not change a single token
    single = make_aug(tiny_folders, eta=0.0)
    one = topics_ds.map(single, batched=True, batch_size=2)
    multi = make_aug(tiny_folders, eta=0.0)
    two = topics_ds.map(multi, batched=True, batch_size=2, num_proc=2, with_rank=True)
    assert one["text"] == two["text"] and one["steer_seed"] == two["steer_seed"]
    # with negatives on, each process seeds its pool from the whole dataset
    aug = make_aug(tiny_folders).fit(topics_ds)
    out = topics_ds.map(aug, batched=True, batch_size=2, num_proc=2)
    check_complete(out, topics_ds, 2)
    assert aug.stats["generated_rows"] == 0  # the parent generated nothing: the workers did


def test_interrupted_by_a_hook_then_resumed_every_row_exactly_once(tiny_folders, topics_ds, tmp_path):
    class Stop(Exception):
        pass

    seen: list[str] = []

    def crash_after_3(key, outputs):
        seen.append(key)
        if len(seen) == 3:
            raise Stop

    aug = make_aug(tiny_folders, tmp_path, on_row=crash_after_3).fit(topics_ds)
    with pytest.raises(Stop):
        topics_ds.map(aug, batched=True, batch_size=4)
    lines = [
        json.loads(x) for p in aug.checkpoint_path.glob("part-*.jsonl") for x in p.read_text().splitlines()
    ]
    assert [r["key"] for r in lines] == seen  # written before the hook ran: nothing finished is lost
    before = {r["key"]: r["outputs"] for r in lines}

    regenerated: list[str] = []
    resumed = make_aug(tiny_folders, tmp_path, on_row=lambda k, o: regenerated.append(k)).fit(topics_ds)
    out = topics_ds.map(resumed, batched=True, batch_size=4)
    check_complete(out, topics_ds, 2)
    assert not set(regenerated) & set(before) and len(regenerated) == len(topics_ds) - 3
    assert resumed.stats["reused_rows"] == 3
    by_key = {}
    for row in out.filter(lambda r: r["synthetic"]):
        by_key.setdefault(
            resumed.row_key(
                {"topic": row["topic"], "text": topics_ds["text"][topics_ds["topic"].index(row["topic"])]}
            ),
            [],
        ).append(row["text"])
    for key, outs in before.items():
        assert by_key[key] == [o["text"] for o in outs]  # finished rows come back unchanged
    all_keys = [
        json.loads(x)["key"]
        for p in resumed.checkpoint_path.glob("*.jsonl")
        for x in p.read_text().splitlines()
    ]
    assert len(all_keys) == len(set(all_keys)) == len(topics_ds)  # nothing duplicated on disk either


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, datasets
    from datasets_steer import SteerAugmenter
    expert, base, ckpt, data = sys.argv[1:5]
    ds = datasets.load_from_disk(data)
    aug = SteerAugmenter(expert, base, prompt="Write about {topic}:", n=2, max_new_tokens=12, num_negatives=3,
                         engine_batch_size=1, checkpoint_dir=ckpt, progress=False).fit(ds)
    ds.map(aug, batched=True, batch_size=2)
    """
)


def test_killed_process_resumes_without_loss_or_duplicates(tiny_folders, tmp_path):
    import datasets

    topics = [f"star {i}" for i in range(10)]
    ds = datasets.Dataset.from_dict({"topic": topics, "text": [f"Real text on {t}." for t in topics]})
    ds.save_to_disk(tmp_path / "data")
    ckpt = tmp_path / "ckpt"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, *tiny_folders, str(ckpt), str(tmp_path / "data")],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            written = sum(len(p.read_text().splitlines()) for p in ckpt.glob("*/part-*.jsonl"))
            if written >= 3 or proc.poll() is not None:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)  # no cleanup, no flush beyond what was already written
    finally:
        proc.wait()
    written = sum(len(p.read_text().splitlines()) for p in ckpt.glob("*/part-*.jsonl"))
    assert 3 <= written < len(ds), "the kill should land mid-run"
    aug = SteerAugmenter(
        *tiny_folders,
        prompt="Write about {topic}:",
        n=2,
        max_new_tokens=12,
        num_negatives=3,
        engine_batch_size=1,
        checkpoint_dir=ckpt,
        progress=False,
    ).fit(ds)
    out = ds.map(aug, batched=True, batch_size=2)
    check_complete(out, ds, 2)
    assert aug.stats["reused_rows"] >= 3
    assert aug.stats["generated_rows"] + aug.stats["reused_rows"] == len(ds)


def test_in_process_engine_and_unseeded_pool(tiny_engine, topics_ds):
    aug = SteerAugmenter(
        engine=tiny_engine,
        n=1,
        prompt="Write about {topic}:",
        checkpoint_dir=None,
        progress=False,
        max_new_tokens=4,
    )
    # tiny_engine's pool is already seeded with real examples: no fit needed
    out = topics_ds.map(aug, batched=True, batch_size=8)
    check_complete(out, topics_ds, 1)


def test_bad_input_errors_are_clear(tiny_folders, topics_ds):
    with pytest.raises(ValueError, match="`n`.*>= 1, got 0"):
        make_aug(tiny_folders, n=0)
    with pytest.raises(ValueError, match="`n`.*got -2"):
        make_aug(tiny_folders, n=-2)
    with pytest.raises(ValueError, match="unknown SteerConfig field.*gama"):
        make_aug(tiny_folders, gama=0.3)
    with pytest.raises(ValueError, match=r"uses column\(s\) \['subject'\].*available columns"):
        make_aug(tiny_folders, prompt="Write about {subject}:").fit(topics_ds)
    with pytest.raises(ValueError, match=r"uses column\(s\) \['subject'\]"):
        topics_ds.map(make_aug(tiny_folders, prompt="Write about {subject}:", eta=0), batched=True)
    with pytest.raises(ValueError, match="`real_column` 'body' is not a column"):
        make_aug(tiny_folders, real_column="body").fit(topics_ds)
    with pytest.raises(ValueError, match="dataset is empty"):
        make_aug(tiny_folders).fit(topics_ds.select([]))
    numbers = datasets.Dataset.from_dict({"topic": ["a", "b"], "text": [1, 2]})
    with pytest.raises(TypeError, match="column 'text' must hold text.*int64"):
        make_aug(tiny_folders).fit(numbers)
    with pytest.raises(TypeError, match="`output_column` 'text' holds int"):
        numbers.map(make_aug(tiny_folders, eta=0), batched=True)
    with pytest.raises(ValueError, match="never seeded.*aug.fit\\(ds\\)"):
        topics_ds.map(make_aug(tiny_folders), batched=True)
    with pytest.raises(TypeError, match="batched=True"):
        topics_ds.map(make_aug(tiny_folders, eta=0))
    with pytest.raises(ValueError, match="exactly one of `expert`"):
        SteerAugmenter()
    with pytest.raises(ValueError, match="name its columns"):
        make_aug(tiny_folders, prompt="Write about {}:")
    # an empty dataset maps to an empty dataset (nothing to generate), without loading the model
    assert len(topics_ds.select([]).map(make_aug(tiny_folders, eta=0), batched=True)) == 0
