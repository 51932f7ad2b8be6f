"""Before/after speed of a code change to the engine, in one process, interleaved.

Runs the engine from a git commit (`--before`, default ee24753: the engine before the one-way
request path of issue 9) and the working tree's engine on the same in-memory weights (SmolLM2-135M +
the shipped LoRA expert), K=10 real negatives, 64 forced new tokens, at B=1 and B=8, and prints
median tok/s and the after/before time ratio (< 1.0 = faster now).

    python benchmarks/bench_redesign.py --trials 5 --threads 2
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ADAPTER = ROOT / "steer_plugins" / "assets" / "adapters" / "hypotheses-lora"
SEEDS = ROOT / "steer_plugins" / "assets" / "seed_hypotheses.jsonl"


def load_old_package(commit: str, name: str = "steer_before"):
    """Extract `steer_plugins/` at `commit` into a temp dir and import it as `name`."""
    tmp = Path(tempfile.mkdtemp(prefix="steer-before-"))
    archive = subprocess.run(["git", "archive", commit, "steer_plugins"], cwd=ROOT, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
    (tmp / "steer_plugins").rename(tmp / name)
    sys.path.insert(0, str(tmp))
    return importlib.import_module(name)


def load_average() -> list[str]:
    """The 1, 5 and 15 minute load averages (the benchmark shares the machine)."""
    return Path("/proc/loadavg").read_text().split()[:3]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="ee24753", help="git commit of the old engine (default: %(default)s)")
    ap.add_argument("--trials", type=int, default=5, help="interleaved trials per row (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    ap.add_argument("--batches", default="1,8", help="batch sizes (default: %(default)s)")
    args = ap.parse_args()

    import torch

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    import steer_plugins as after_pkg

    before_pkg = load_old_package(args.before)
    expert = after_pkg.load_model(str(ADAPTER))
    model, tok = expert if isinstance(expert, tuple) else (expert, None)
    pool = [json.loads(line)["text"] for line in SEEDS.read_text().splitlines() if line.strip()]
    cfg = {"gamma": 0.2, "eta": 0.6, "num_negatives": 10, "max_new_tokens": 64, "ignore_eos": True}
    engines = {
        "before": before_pkg.SteerEngine(model, tokenizer=tok, pool=pool),
        "after": after_pkg.SteerEngine(model, tokenizer=tok, pool=pool),
    }
    prompt = engines["after"].apply_chat_template(
        [{"role": "user", "content": "Write a research hypothesis in astronomy, phrased as a question."}]
    )
    print(f"load average: {load_average()}, threads {args.threads}")
    print("| batch | engine | median tok/s | median s | after/before |")
    print("|---|---|---|---|---|")
    for b in [int(x) for x in args.batches.split(",")]:
        times: dict[str, list[float]] = {k: [] for k in engines}
        for eng in engines.values():  # warm-up
            eng.generate([prompt] * b, seed=0, add_to_pool=False, **{**cfg, "max_new_tokens": 4})
        for trial in range(args.trials):
            for name, eng in engines.items():
                t0 = time.perf_counter()
                eng.generate([prompt] * b, seed=trial, add_to_pool=False, **cfg)
                times[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        for name in engines:
            ratio = med[name] / med["before"]
            tok_s = b * cfg["max_new_tokens"] / med[name]
            print(f"| {b} | {name} | {tok_s:.1f} | {med[name]:.2f} | {ratio:.2f} |")
    print(f"load average after: {load_average()}")
    sys.stdout.flush()
    os._exit(0)  # engines' worker threads are daemons; skip interpreter teardown


if __name__ == "__main__":
    main()
