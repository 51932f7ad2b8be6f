"""Issue 13's done-when check, as a user runs it: `steer generate` at the product defaults against
the same command with γ = η = 0, 48 rows of 48 new tokens, stop at `?`, the shipped seed set as the
pool of real hypotheses (and as the reference vocabulary of the invented-word rate).

Passes when the default's invented-word rate is at most plain's + 0.5 pt and its normalised 3-grams
are at least 1.05x plain's. `steer generate --seed s` gives row i the seed s + i, so the seeds here
are far apart (0, 100000, 200000 by default): nearby seeds share most of their rows' seeds.

    python benchmarks/done_when.py                          # 3 seeds, both settings, ~4 min per seed
    python benchmarks/done_when.py --seeds 0 --extra --eta 0.6   # another setting against plain

Writes `benchmarks/results/done_when_<label>.json` (per seed: both rates, the ratio, pass/fail) and
prints a table. Generated files go to `--work` (kept, so a rerun resumes and rescoring is free).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEED_SET = ROOT / "steer_plugins" / "assets" / "seed_hypotheses.jsonl"
RESULTS = ROOT / "benchmarks" / "results"
INVENTED_SLACK = 0.005
MIN_RATIO = 1.05


def run_generate(out: Path, seed: int, extra: list[str], threads: int) -> float:
    """`steer generate` into `out` (resumes a finished file instantly); returns wall seconds."""
    cmd = [
        sys.executable, "-m", "steer_plugins.apps.cli", "generate", "--n", "48", "--pool", str(SEED_SET),
        "--max-new-tokens", "48", "--stop", "?", "--close-with", "?", "--seed", str(seed),
        "--threads", str(threads), "--out", str(out), *extra,
    ]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def texts(path: Path) -> list[str]:
    """The `text` field of every row of a JSONL file."""
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line]


def main(argv: list[str] | None = None) -> int:
    """Generate both settings per seed, score them, write the JSON, print the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 100_000, 200_000])
    p.add_argument("--work", type=Path, default=Path("/tmp/steer_done_when"))
    p.add_argument("--label", default="default", help="names the STEER runs' files and the JSON")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--extra", nargs=argparse.REMAINDER, default=[], help="flags for the STEER run (default: none)"
    )
    args = p.parse_args(argv)

    from steer_plugins.apps.eval import invented_word_rate, normalised_ngrams

    reference = texts(SEED_SET)
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        plain_path = args.work / f"plain_{seed}.jsonl"
        steer_path = args.work / f"{args.label}_{seed}.jsonl"
        plain_s = run_generate(plain_path, seed, ["--gamma", "0", "--eta", "0"], args.threads)
        steer_s = run_generate(steer_path, seed, args.extra, args.threads)
        plain, steer = texts(plain_path), texts(steer_path)
        inv_p, inv_s = invented_word_rate(plain, reference), invented_word_rate(steer, reference)
        div_p, div_s = normalised_ngrams(plain, 3), normalised_ngrams(steer, 3)
        row = {
            "seed": seed,
            "rows": [len(plain), len(steer)],
            "plain_invented": inv_p,
            "steer_invented": inv_s,
            "excess_pt": 100 * (inv_s - inv_p),
            "plain_3grams": div_p,
            "steer_3grams": div_s,
            "ratio": div_s / div_p,
            "invented_ok": inv_s <= inv_p + INVENTED_SLACK,
            "diversity_ok": div_s >= MIN_RATIO * div_p,
            "wall_s": [round(plain_s, 1), round(steer_s, 1)],
        }
        row["passes"] = row["invented_ok"] and row["diversity_ok"]
        rows.append(row)
        print(
            f"seed {seed}: invented {100 * inv_s:.2f} % vs plain {100 * inv_p:.2f} % "
            f"({row['excess_pt']:+.2f} pt), 3-grams {div_s:.3f} vs {div_p:.3f} ({row['ratio']:.3f}x): "
            f"{'passes' if row['passes'] else 'fails'}",
            flush=True,
        )
    summary = {
        "label": args.label,
        "extra": args.extra,
        "seeds": rows,
        "passed": sum(r["passes"] for r in rows),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"done_when_{args.label}.json"
    out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"{summary['passed']} of {len(rows)} seeds pass -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
