"""Peak memory of STEER decoding against plain sampling, each configuration in a fresh process.

    python benchmarks/bench_memory.py                      # B = 32, K = 10, 64 forced tokens
    python benchmarks/bench_memory.py --batch 8 --tokens 16

`bench_speed.py` measures peak RSS inside one long process, where memory kept by the allocator from
an earlier configuration is charged to the next one. Here every configuration runs in its own child
process: load the model, record the resident set (the "loaded" column: weights, libraries), run the
workload once, and report the process high-water mark (VmHWM) and what the run added on top of the
loaded process. The workload is `bench_speed.py`'s: SmolLM2-135M-Instruct (fp32) with the shipped
LoRA expert, K real negatives per prompt drawn from the astronomy hypotheses, forced new tokens.

Configurations: plain `generate()` of the expert (the baseline); the engine at the product defaults
(exact fp32 KV cache, `max_cache_mb="auto"`: the cache bounded by the weights' size; prompts whose
cache does not fit wait for finished ones); the engine with no bound (`max_cache_mb=None`); the
engine with the base and negative rows' KV stored in bf16 (`guidance_kv_dtype`, opt-in, not exact;
the expert's own rows stay fp32; no bound); and the exact engine under a budget of `--cache-mb`.
The "run s" column is each child's wall time on the same workload (compare rows of one run only).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("plain", "engine", "engine unbounded", "engine bf16 guidance KV", "engine max_cache_mb")


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(config: str, batch: int, tokens: int, k: int, threads: int, cache_mb: float) -> dict:
    """Run one configuration in this process; returns its measurements."""
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_speed import PROMPT, load_negatives, make_expert, peak_rss_mb, peak_rss_reset

    from steer_plugins import SteerConfig, SteerEngine

    torch.set_num_threads(threads)
    expert, tok, _ = make_expert()
    rng = random.Random(0)
    negatives = load_negatives()
    negs = [rng.sample(negatives, k) for _ in range(batch)]
    prompts = [PROMPT] * batch
    loaded = _status_mb("VmRSS")
    extra: dict = {}
    peak_rss_reset()
    t0 = time.perf_counter()
    if config == "plain":
        tok.padding_side = "left"
        enc = tok(prompts, return_tensors="pt", padding=True)
        with torch.inference_mode():
            expert.generate(
                **enc, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=True, top_k=10,
                pad_token_id=tok.pad_token_id or tok.eos_token_id,
            )  # fmt: skip
    else:
        low = torch.bfloat16 if config.endswith("bf16 guidance KV") else None
        budget = {"engine": "auto", "engine max_cache_mb": cache_mb}.get(config)
        engine = SteerEngine(
            expert,
            tokenizer=tok,
            config=SteerConfig(num_negatives=k),
            guidance_kv_dtype=low,
            max_cache_mb=budget,
        )
        engine.generate(prompts, negatives=negs, max_new_tokens=tokens, ignore_eos=True, seed=1)
        stats = engine.stats
        extra = {
            "budget_mb": engine.cache_budget_mb,
            "cache_estimate_peak_mb": stats.peak_cache_mb,
            "prompts_waited": stats.prompts_waited,
        }
    seconds = time.perf_counter() - t0
    peak = peak_rss_mb()
    row = {"config": config, "loaded_mb": loaded, "peak_mb": peak, "added_mb": peak - loaded, "s": seconds}
    return {**row, **extra}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache-mb", type=float, default=600.0, help="the budget of `engine max_cache_mb`")
    ap.add_argument(
        "--configs", default=",".join(CONFIGS), help="comma-separated, from: " + ", ".join(CONFIGS)
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.batch, args.tokens, args.k, args.threads, args.cache_mb)))
        return
    rows = []
    for config in [c.strip() for c in args.configs.split(",") if c.strip()]:
        cmd = [sys.executable, __file__, "--child", config, "--batch", str(args.batch)]
        cmd += ["--tokens", str(args.tokens), "--k", str(args.k), "--threads", str(args.threads)]
        cmd += ["--cache-mb", str(args.cache_mb)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  {config}: {rows[-1]}", flush=True)
    base = rows[0]["peak_mb"]
    print(
        f"\nB={args.batch}, K={args.k}, {args.tokens} forced tokens, one fresh process per row, load {os.getloadavg()[0]:.1f}"
    )
    print("| configuration | loaded MB | peak RSS MB | added by the run MB | peak / plain | run s |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        name = r["config"] + (f" = {r['budget_mb']:.0f} MB" if r.get("budget_mb") else "")
        print(
            f"| {name} | {r['loaded_mb']:.0f} | {r['peak_mb']:.0f} | {r['added_mb']:.0f} | "
            f"{r['peak_mb'] / base:.2f} | {r['s']:.1f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
