"""Rows per second of STEER augmentation: `datasets.map` at engine batch sizes, and Ray actor pools.

One row per configuration, one column per metric. The real model (SmolLM2-135M-Instruct, offline),
a fixed seed, a warmup generation per engine, small `max_new_tokens` so it finishes in minutes.
Ray timings include starting the actors and loading one model per actor (that is what a user pays).

    HF_HUB_OFFLINE=1 python benchmarks/bench_augment.py                  # all configurations
    HF_HUB_OFFLINE=1 python benchmarks/bench_augment.py --actors        # datasets only
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
from datasets_steer import SteerAugmenter  # noqa: E402

from steer_plugins import DEFAULT_MODEL  # noqa: E402

SEED_FILE = Path(__file__).resolve().parent.parent / "examples" / "data" / "seed_topics.jsonl"
PROMPT = "Write one short factual sentence about {topic}."


def make_aug(args, ds, engine_batch: int) -> SteerAugmenter:
    return SteerAugmenter.from_dataset(
        ds,
        expert=DEFAULT_MODEL,
        prompt=PROMPT,
        chat=True,
        n=args.n,
        checkpoint_dir=None,
        progress=False,
        engine_batch_size=engine_batch,
        max_new_tokens=args.max_new_tokens,
        num_negatives=3,
        seed=args.seed,
    )


def bench_datasets(args, ds, engine_batch: int) -> dict:
    aug = make_aug(args, ds, engine_batch)
    t0 = time.perf_counter()
    _ = aug.engine
    load_s = time.perf_counter() - t0
    # warmup (also a first pool output); never datasets' cache: a rerun must decode again
    ds.select(range(1)).map(aug, batched=True, batch_size=1, load_from_cache_file=False)
    tokens0 = aug.stats["completion_tokens"]
    rows = ds.select(range(1, 1 + args.rows))
    t0 = time.perf_counter()
    out = rows.map(aug, batched=True, batch_size=args.map_batch, load_from_cache_file=False)
    wall = time.perf_counter() - t0
    tokens = aug.stats["completion_tokens"] - tokens0
    aug.close()
    return dict(
        config=f"datasets.map, engine batch {engine_batch}",
        in_rows=args.rows,
        out_rows=len(out),
        wall_s=wall,
        in_rows_s=args.rows / wall,
        tok_s=tokens / wall,
        load_s=load_s,
    )


def bench_ray(args, ds, actors: int) -> dict:
    import json
    import tempfile

    from ray_steer import augment

    aug = make_aug(args, ds, args.ray_engine_batch)
    aug.checkpoint_dir = tempfile.mkdtemp(prefix="steer-bench-")  # fresh: nothing reused; counts tokens
    rows = ds.select(range(1, 1 + args.rows))
    t0 = time.perf_counter()
    out = augment(rows, aug, num_actors=actors, batch_size=args.ray_batch, output="hf")
    wall = time.perf_counter() - t0
    tokens = sum(
        o["completion_tokens"]
        for part in aug.checkpoint_path.glob("part-*.jsonl")
        for line in part.read_text().splitlines()
        for o in json.loads(line)["outputs"]
    )
    return dict(
        config=f"ray, {actors} actor(s), engine batch {args.ray_engine_batch}",
        in_rows=args.rows,
        out_rows=len(out),
        wall_s=wall,
        in_rows_s=args.rows / wall,
        tok_s=tokens / wall,
        load_s=None,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=16, help="input rows per configuration (after 1 warmup row)")
    p.add_argument("--n", type=int, default=2, help="synthetic rows per input row")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--map-batch", type=int, default=16, help="datasets.map batch_size (rows)")
    p.add_argument("--batches", type=int, nargs="*", default=[1, 8, 32], help="engine batch sizes (prompts)")
    p.add_argument("--actors", type=int, nargs="*", default=[1, 2], help="Ray actor pool sizes")
    p.add_argument("--ray-batch", type=int, default=4, help="rows per Ray map_batches batch")
    p.add_argument("--ray-engine-batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    ds = datasets.load_dataset("json", data_files=str(SEED_FILE), split="train")
    if args.rows + 1 > len(ds):  # repeat the seed file with distinct topics
        reps = (args.rows + 1) // len(ds) + 1
        ds = datasets.Dataset.from_dict(
            {
                "topic": [f"{t} (part {k})" for k in range(reps) for t in ds["topic"]],
                "text": [x for _ in range(reps) for x in ds["text"]],
            }
        )
    print(
        f"\nSTEER augmentation, {DEFAULT_MODEL}, n={args.n}, max_new_tokens={args.max_new_tokens}, "
        f"{os.cpu_count()} CPU cores"
    )
    head = f"{'configuration':42} {'in rows':>7} {'out rows':>8} {'wall s':>7} {'in rows/s':>9} {'tok/s':>7} {'load s':>6}"
    print(head)
    print("-" * len(head), flush=True)
    for b in args.batches:
        print_row(bench_datasets(args, ds, b))
    if args.actors:
        import ray

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        for a in args.actors:
            print_row(bench_ray(args, ds, a))
        ray.shutdown()


def print_row(r: dict) -> None:
    tok = f"{r['tok_s']:7.1f}" if r["tok_s"] is not None else f"{'-':>7}"
    load = f"{r['load_s']:6.1f}" if r["load_s"] is not None else f"{'-':>6}"
    print(
        f"{r['config']:42} {r['in_rows']:7d} {r['out_rows']:8d} {r['wall_s']:7.1f} {r['in_rows_s']:9.3f} {tok} {load}",
        flush=True,
    )


if __name__ == "__main__":
    main()
