"""End to end: `steer generate --n 256` at the product defaults against the same command with γ=η=0.

The real workload of a data-generation run: a pool of real astronomy hypotheses (the first
`--pool-size` rows of `../shared/data/astro_hypotheses.jsonl`), K = 10 negatives, at most 48 new
tokens, stop at `?`, the default chunk of 16 rows. Each configuration runs `steer generate` in its
own child process (the model loads once per run; load time is not counted: the seconds are the
generation's own, from the command's final JSON line), and its peak RSS is that child's alone
(`os.wait4`). Prints a markdown table; `--json` keeps the numbers.

    python benchmarks/bench_generate.py --json benchmarks/results/generate_n256.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "astro_hypotheses.jsonl"

#: name -> extra `steer generate` flags (on top of the shared workload flags).
CONFIGS: dict[str, list[str]] = {
    "plain": ["--gamma", "0", "--eta", "0"],  # the same command with γ = η = 0
    "steer": [],  # the product defaults
    "steer-pool": ["--negatives-from", "pool"],  # the paper's draw: real examples stay negatives
    "steer-share": ["--share-negatives"],  # one draw per 16-row chunk (opt-in)
}


def _run(flags: list[str], out: Path, pool: Path, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable, "-m", "steer_plugins.apps.cli", "generate", "--n", str(args.n), "--out", str(out),
        "--pool", str(pool), "--max-new-tokens", "48", "--stop", "?", "--close-with", "?",
        "--seed", "0", "--threads", str(args.threads), "--quiet", "--no-card", *flags,
    ]  # fmt: skip
    t0 = time.perf_counter()
    log_out, log_err = out.with_suffix(".stdout"), out.with_suffix(".stderr")
    with log_out.open("w") as so, log_err.open("w") as se:
        proc = subprocess.Popen(cmd, stdout=so, stderr=se)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{log_err.read_text()[-2000:]}")
    stats = json.loads(log_out.read_text().strip().splitlines()[-1])
    stats["wall_s"] = time.perf_counter() - t0
    stats["peak_rss_mb"] = usage.ru_maxrss / 1024
    return stats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--pool-size", type=int, default=500)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated names from CONFIGS")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    names = [c for c in args.configs.split(",") if c]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown:
        p.error(f"unknown configs {unknown}; known: {list(CONFIGS)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        pool = Path(tmp) / "pool.jsonl"
        lines = DATA.read_text().splitlines()[: args.pool_size]
        pool.write_text("\n".join(lines) + "\n")
        for name in names:
            stats = _run(CONFIGS[name], Path(tmp) / f"{len(rows)}.jsonl", pool, args)
            stats["config"] = name
            stats["load_avg"] = os.getloadavg()[0]
            rows.append(stats)
            print(f"{name}: {json.dumps(stats)}", file=sys.stderr, flush=True)
    plain = next((r for r in rows if r["config"] == "plain"), None)
    print(
        "| run | rows | tokens | generation s | rows / min | tok/s | per token vs plain | peak RSS MB | load |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        tps = r["completion_tokens"] / r["seconds"]
        ratio = (plain["completion_tokens"] / plain["seconds"]) / tps if plain else float("nan")
        print(
            f"| {r['config']} | {r['generated']} | {r['completion_tokens']:,} | {r['seconds']:.1f} | "
            f"{60 * r['generated'] / r['seconds']:.1f} | {tps:.1f} | {ratio:.2f} | {r['peak_rss_mb']:.0f} | "
            f"{r['load_avg']:.1f} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"n": args.n, "pool_size": args.pool_size, "threads": args.threads,
                                         "rows": rows}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
