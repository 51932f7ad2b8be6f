"""Grow a small astronomy dataset with STEER-generated rows in one `datasets.map` call.

Shows: `SteerAugmenter.from_dataset` (the negative pool is the whole dataset's `text` column),
`ds.map(aug, batched=True)` turning each row into itself + N synthetic rows, exact dedup of the
outputs, a dataset card next to the saved data, and resuming: run it twice and the second run takes
every row from the checkpoint instead of generating it again.

Run (offline, on the embedded SmolLM2-135M-Instruct; about a minute on a laptop CPU):

    HF_HUB_OFFLINE=1 python examples/datasets_augment.py
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
from datasets_steer import SteerAugmenter  # noqa: E402

from steer_plugins import DEFAULT_MODEL  # noqa: E402

SEED_FILE = Path(__file__).parent / "data" / "seed_topics.jsonl"
ROWS = 6  # of the 20 seed rows, to keep the example short
N = 2  # synthetic rows per input row
SETTINGS = dict(
    num_negatives=3,  # gamma, eta, alpha: SteerConfig's defaults
    max_new_tokens=40,
    temperature=0.8,
    stop=["\n\n"],
)
CHECKPOINT = Path(tempfile.gettempdir()) / "steer-example-checkpoint"


def main() -> None:
    ds = datasets.load_dataset("json", data_files=str(SEED_FILE), split="train")
    aug = SteerAugmenter.from_dataset(
        ds,  # the whole real column seeds the negative pool
        expert=DEFAULT_MODEL,
        prompt="Write one short factual sentence about {topic}.",
        chat=True,
        real_column="text",
        output_column="text",
        n=N,
        checkpoint_dir=CHECKPOINT,
        dedup="exact",  # duplicate outputs are neither returned nor added to the negative pool
        **SETTINGS,
    )
    bigger = ds.select(range(ROWS)).map(aug, batched=True, batch_size=4)
    print(f"\n{ROWS} rows -> {len(bigger)} rows; columns: {bigger.column_names}")
    for row in bigger.select(range(2 * (N + 1))):
        tag = "synthetic" if row["synthetic"] else "real     "
        print(f"[{tag}] {row['topic']}: {row['text'][:100]!r}")
    out = CHECKPOINT.parent / "steer-example-output"
    bigger.to_parquet(out / "train.parquet")
    card = aug.write_card(out / "README.md", data_files=["train.parquet"], num_rows=len(bigger))
    print(f"\nstats: {aug.stats}\ncheckpoint: {aug.checkpoint_path} (run again: nothing is regenerated)")
    print(f"data and dataset card: {card.parent}")


if __name__ == "__main__":
    main()
