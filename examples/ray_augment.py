"""The same STEER augmenter on Ray Data: an actor pool, one model per actor, a shared negative pool.

Shows: `ray_steer.augment(hf_dataset, aug, num_actors=2)` in Ray's local mode, returning a Hugging
Face dataset. On a cluster, call `ray.init(address="auto")` instead and see the README (Ray Data, multi-node runbook).

Run (offline, on the embedded SmolLM2-135M-Instruct; a few minutes on 2 CPU cores):

    HF_HUB_OFFLINE=1 python examples/ray_augment.py
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import ray  # noqa: E402
from datasets_steer import SteerAugmenter  # noqa: E402
from ray_steer import augment  # noqa: E402

from steer_plugins import DEFAULT_MODEL  # noqa: E402

SEED_FILE = Path(__file__).parent / "data" / "seed_topics.jsonl"
ROWS = 8
NUM_ACTORS = 2
SETTINGS = dict(
    num_negatives=3,  # gamma, eta, alpha: SteerConfig's defaults
    max_new_tokens=32,
    temperature=0.8,
    stop=["\n\n"],
)


def main() -> None:
    ray.init(num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, log_to_driver=False)
    ds = datasets.load_dataset("json", data_files=str(SEED_FILE), split="train")
    aug = SteerAugmenter(
        expert=DEFAULT_MODEL,  # a model id or folder: each actor loads its own copy
        prompt="Write one short factual sentence about {topic}.",
        chat=True,
        n=1,
        real_texts=ds["text"],  # all 20 real texts reach every actor, not only its shard
        checkpoint_dir=Path(tempfile.gettempdir()) / "steer-ray-example-checkpoint",
        progress=False,
        **SETTINGS,
    )
    out = augment(ds.select(range(ROWS)), aug, num_actors=NUM_ACTORS, num_gpus=0, batch_size=2, output="hf")
    print(f"\n{ROWS} rows -> {len(out)} rows on {NUM_ACTORS} actors")
    for row in out.filter(lambda r: r["synthetic"]).select(range(4)):
        print(f"{row['topic']}: {row['text'][:100]!r}  (negatives: {len(row['steer_negatives'])})")
    ray.shutdown()


if __name__ == "__main__":
    main()
