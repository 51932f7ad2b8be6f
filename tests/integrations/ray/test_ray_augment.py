"""ray_steer.augment on real Ray Data in local mode: an actor pool of tiny models loaded by path."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
from datasets_steer import SteerAugmenter
from ray_steer import SharedPool, augment

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    """One local Ray session for the module (ray.init costs seconds); leaves a CPU free for tasks."""
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        ignore_reinit_error=True,
        configure_logging=False,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def make_aug(folders, tmp_path, **kw):
    settings = dict(prompt="Write about {topic}:", n=2, max_new_tokens=6, num_negatives=3, progress=False)
    return SteerAugmenter(*folders, checkpoint_dir=tmp_path / "ckpt", **{**settings, **kw})


def parts(aug):
    """Rows each actor wrote, by part file (one part file per actor process)."""
    out = []
    for p in sorted(aug.checkpoint_path.glob("part-*.jsonl")):
        out.append([json.loads(line) for line in p.read_text().splitlines()])
    return out


def test_two_actors_complete_unique_and_sharing(tiny_folders, topics_ds, tmp_path):
    aug = make_aug(tiny_folders, tmp_path)
    out = augment(topics_ds, aug, num_actors=2, num_gpus=0, batch_size=1)
    assert isinstance(out, ray.data.Dataset)
    rows = out.take_all()
    assert len(rows) == 3 * len(topics_ds)
    assert Counter(r["topic"] for r in rows if r["synthetic"]) == Counter({t: 2 for t in topics_ds["topic"]})
    assert Counter(r["topic"] for r in rows if not r["synthetic"]) == Counter(topics_ds["topic"])
    seeds = [r["steer_seed"] for r in rows if r["synthetic"]]
    assert len(set(seeds)) == len(seeds) == 2 * len(topics_ds)

    by_actor = parts(aug.fit(topics_ds))  # same settings -> same checkpoint folder as the actors used
    assert len(by_actor) == 2, "both actors should have worked"
    keys = [r["key"] for part in by_actor for r in part]
    assert len(keys) == len(set(keys)) == len(topics_ds)
    real = set(topics_ds["text"])
    row_real = {aug.row_key(r): r["text"] for r in topics_ds}
    for part in by_actor:
        negs = {n for r in part for o in r["outputs"] for n in o["negatives"]}
        mine = {row_real[r["key"]] for r in part}
        # real examples of rows this actor never saw reached it (the whole dataset seeds every pool)
        assert negs & real - mine
    # outputs of one actor show up as negatives in the other (the shared pool), at batch granularity
    texts = [{o["text"] for r in part for o in r["outputs"]} for part in by_actor]
    negs = [{n for r in part for o in r["outputs"] for n in o["negatives"]} for part in by_actor]
    assert (negs[0] & texts[1]) or (negs[1] & texts[0])


def read_rows(path):
    return ray.data.read_parquet(str(path)).take_all()


def test_ray_dataset_in_hf_and_parquet_out(tiny_folders, topics_ds, tmp_path):
    import datasets

    src = ray.data.from_items(topics_ds.to_list())
    aug = make_aug(tiny_folders, tmp_path, keep_original=False)
    hf = augment(src, aug, num_actors=1, output="hf")
    assert isinstance(hf, datasets.Dataset) and len(hf) == 2 * len(topics_ds) and all(hf["synthetic"])
    # second and third runs with the same settings: every row from the checkpoint, none regenerated,
    # and the Parquet folder replaced, not appended to (it used to hold both runs' files)
    for _ in range(2):
        path = augment(
            src,
            make_aug(tiny_folders, tmp_path, keep_original=False),
            num_actors=1,
            output="parquet",
            path=str(tmp_path / "out"),
        )
        assert sorted(r["text"] for r in read_rows(path)) == sorted(hf["text"])
    assert len(parts(aug.fit(topics_ds))) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "out"]  # no temp folder left behind
    card = (tmp_path / "out" / "README.md").read_text()
    assert '- "*.parquet"' in card and "| reused_rows | `8` |" in card and "| actors | `1` |" in card
    assert "weights fingerprint" in card and "| expert + base | `" in card


def test_write_parquet_replaces_local_and_uri_folders(tmp_path):
    from ray_steer.output import write_parquet

    ds = ray.data.from_items([{"i": i} for i in range(6)])
    for target in (str(tmp_path / "local"), (tmp_path / "uri").as_uri()):
        for _ in range(2):
            write_parquet(ds, target, lambda rows: f"card of {rows} rows")
        folder = tmp_path / target.rsplit("/", 1)[-1]
        assert sorted(r["i"] for r in read_rows(folder)) == list(range(6))
        assert (folder / "README.md").read_text() == "card of 6 rows"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local", "uri"]


def test_driver_checks_before_any_actor_starts(tiny_folders, topics_ds, tmp_path):
    import time

    t0 = time.perf_counter()
    with pytest.raises(
        ValueError, match=r"`num_negatives` \(K=12\) is larger than the real negative pool \(8"
    ):
        augment(topics_ds, make_aug(tiny_folders, tmp_path, num_negatives=12), num_actors=2)
    src = ray.data.from_items(topics_ds.to_list())
    with pytest.raises(ValueError, match=r"K=12"):
        augment(src, make_aug(tiny_folders, tmp_path, num_negatives=12), num_actors=2)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds files a rerun would delete \(\['notes.txt'\]\)"):
        augment(topics_ds, make_aug(tiny_folders, tmp_path), output="parquet", path=str(busy))
    (tmp_path / "file.parquet").write_text("")
    with pytest.raises(ValueError, match="is a file"):
        augment(
            topics_ds, make_aug(tiny_folders, tmp_path), output="parquet", path=str(tmp_path / "file.parquet")
        )
    assert time.perf_counter() - t0 < 30  # no model was loaded, no actor started
    assert not (tmp_path / "ckpt").exists()


def test_dedup_on_ray(tiny_folders, topics_ds, tmp_path):
    aug = make_aug(tiny_folders, tmp_path, n=3, max_new_tokens=1, dedup="exact", keep_original=False)
    path = augment(topics_ds, aug, num_actors=1, batch_size=4, output="parquet", path=str(tmp_path / "out"))
    texts = [r["text"] for r in read_rows(path)]
    card = (tmp_path / "out" / "README.md").read_text()
    dropped = int(re.search(r"\| duplicates \| `(\d+)` \|", card).group(1))
    assert dropped > 0 and len(texts) == len(set(texts)) == 3 * len(topics_ds) - dropped
    assert "## Deduplication" in card and "| mode | `exact` |" in card


def test_shared_pool_gives_each_author_the_others_outputs_once():
    pool = SharedPool()
    pool.push("a", ["a1", "a2"])
    pool.push("b", ["b1"])
    cursor, got = pool.pull("a", 0)
    assert got == ["b1"] and cursor == 3
    pool.push("b", ["b2"])
    assert pool.pull("a", cursor) == (4, ["b2"])
    assert pool.pull("b", 0) == (4, ["a1", "a2"])


def test_bad_input(tiny_folders, topics_ds, tmp_path, tiny_engine):
    aug = make_aug(tiny_folders, tmp_path)
    with pytest.raises(ValueError, match="`num_actors` must be an integer >= 1, got 0"):
        augment(topics_ds, aug, num_actors=0)
    with pytest.raises(ValueError, match="needs `path=`"):
        augment(topics_ds, aug, output="parquet")
    with pytest.raises(ValueError, match="`output` must be"):
        augment(topics_ds, aug, output="csv")
    with pytest.raises(ValueError, match="engine=.*cannot travel to Ray actors"):
        augment(topics_ds, SteerAugmenter(engine=tiny_engine), num_actors=1)
    with pytest.raises(ValueError, match="empty"):
        augment(topics_ds.select([]), aug, num_actors=1)
    with pytest.raises(ValueError, match="empty"):
        augment(ray.data.from_items([{"topic": "a", "text": "b"}]).filter(lambda r: False), aug, num_actors=1)
    with pytest.raises(ValueError, match=r"uses column\(s\) \['topic'\]"):
        augment(ray.data.from_items([{"subject": "a", "text": "b"}]), aug, num_actors=1)
    with pytest.raises(TypeError, match="must hold text"):
        augment(ray.data.from_items([{"topic": "a", "text": 3}]), aug, num_actors=1)
