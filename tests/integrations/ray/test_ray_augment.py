"""ray_steer.augment on real Ray Data in local mode: an actor pool of tiny models loaded by path."""

from __future__ import annotations

import json
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
    return SteerAugmenter(
        *folders,
        prompt="Write about {topic}:",
        n=2,
        max_new_tokens=6,
        num_negatives=3,
        checkpoint_dir=tmp_path / "ckpt",
        progress=False,
        **kw,
    )


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


def test_ray_dataset_in_hf_and_parquet_out(tiny_folders, topics_ds, tmp_path):
    import datasets

    src = ray.data.from_items(topics_ds.to_list())
    aug = make_aug(tiny_folders, tmp_path, keep_original=False)
    hf = augment(src, aug, num_actors=1, output="hf")
    assert isinstance(hf, datasets.Dataset) and len(hf) == 2 * len(topics_ds) and all(hf["synthetic"])
    # second run with the same settings: every row comes from the checkpoint, none regenerated
    path = augment(
        src,
        make_aug(tiny_folders, tmp_path, keep_original=False),
        num_actors=1,
        output="parquet",
        path=str(tmp_path / "out"),
    )
    back = ray.data.read_parquet(path).take_all()
    assert sorted(r["text"] for r in back) == sorted(hf["text"])
    assert len(parts(aug.fit(topics_ds))) == 1


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
