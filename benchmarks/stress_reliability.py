"""Reliability under load and under SIGKILL, re-measured (the numbers in docs/reliability.md).

Two experiments on tiny Llama models built in code (the engine code path is the same as for the
real model; tiny weights make thousands of requests affordable on a laptop CPU):

    python benchmarks/stress_reliability.py load --requests 2000 --threads 8
    python benchmarks/stress_reliability.py kill --kills 10

``load``: a random mix of requests (1-3 prompts, 1-40 tokens, varied γ/η/sampling/stops/negatives,
through ``generate``, ``stream`` and ``agenerate``, two engines: an expert/base pair and a LoRA expert)
runs first one at a time, then all at once from a thread pool, shuffled, with bad requests mixed in
(blank negatives, overflowing seeds and weights, tiny temperatures, a string γ, a lone surrogate,
abandoned streams). Every good request's tokens must equal its serial run; every bad one must fail
alone with a ValueError/TypeError (or be repaired). Counted: mismatches, good requests that failed,
bad requests that escaped or raised something else.

``kill``: ``steer generate`` (tiny models saved as safetensors folders) and a ``datasets.map``
augmenter with a checkpoint are each SIGKILLed at a random moment, then run again to completion.
Counted: rows lost and rows duplicated (by seed / by input row, synthetic flag and seed), and rows
whose text differs from an uninterrupted run of the same settings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from steer_plugins import SteerConfig, SteerEngine  # noqa: E402
from steer_plugins.testing import (  # noqa: E402
    TINY_CORPUS,
    save_tiny_pair,
    tiny_lora_expert,
    tiny_model,
    tiny_tokenizer,
)

PROMPTS = ["Is the universe", "Write about comets:", "Why do stars", "A question on galaxies:", "Tell me"]
BAD = {
    "empty-string negative": {"negatives": [[""]]},
    "seed 2**64": {"seed": 2**64},
    "tiny temperature, no top-k": {"temperature": 1e-40, "top_k": None},
    "top_p below float32": {"top_p": 1e-46},
    "gamma 1e39": {"gamma": 1e39},
    "eta 1e39": {"eta": 1e39},
    "gamma as a string": {"gamma": "0.5"},
    "seed as a bool": {"seed": True},
    "lone surrogate negative": {"negatives": [["x \ud800 y"]]},
    "negative temperature": {"temperature": -1.0},
}


# ---------------------------------------------------------------------------------------- load
def engines() -> list[SteerEngine]:
    tok = tiny_tokenizer()
    cfg = SteerConfig(max_new_tokens=16, num_negatives=3)
    pair = SteerEngine(tiny_model("llama", tok, seed=1), tiny_model("llama", tok, seed=2), tok, config=cfg)
    lora = SteerEngine(tiny_lora_expert(tiny_model("llama", tok, seed=2), seed=5), tokenizer=tok, config=cfg)
    for e in (pair, lora):
        e.pool.add(list(TINY_CORPUS), real=True)
    return [pair, lora]


def good_request(rng: random.Random) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "seed": rng.randrange(10**6),
        "max_new_tokens": rng.randint(1, 40),
        "gamma": rng.choice([0.0, 0.2, 0.5]),
        "eta": rng.choice([0.0, 0.6, 1.0]),
        "add_to_pool": False,  # the pool stays fixed, so a request's draw is the same alone or in a crowd
    }
    kw.update(rng.choice([{}, {"top_k": 5}, {"top_p": 0.9, "top_k": None}, {"temperature": 0.7}]))
    if rng.random() < 0.3:
        kw["stop"] = [rng.choice(["e", " a", "the"])]
    prompts = rng.sample(PROMPTS, rng.randint(1, 3))
    if rng.random() < 0.3:
        kw["negatives"] = [["Do stars die?", "What is a comet?"]] * len(prompts)
    if rng.random() < 0.2:
        kw["ignore_eos"] = True
    return {"prompts": prompts, "kw": kw, "via": rng.choice(["gen", "stream", "agen"])}


def run(engine: SteerEngine, req: dict[str, Any]) -> list[list[int]]:
    prompts, kw = req["prompts"], req["kw"]
    if req["via"] == "stream":
        finals = sorted((ev.index, ev.result) for ev in engine.stream(prompts, **kw) if ev.result is not None)
        done = [r for _, r in finals]
    elif req["via"] == "agen":
        done = asyncio.run(engine.agenerate(prompts, **kw))
    else:
        done = engine.generate(prompts, **kw)
    return [list(r.token_ids) for r in done]


def abandon(engine: SteerEngine) -> None:
    async def go() -> None:
        async for _ in engine.astream(["Is the universe"], seed=3, max_new_tokens=60, ignore_eos=True):
            break

    asyncio.run(go())


def load(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    engs = engines()
    good = [(rng.randrange(2), good_request(rng)) for _ in range(args.requests)]
    t0 = time.perf_counter()
    expected = [run(engs[e], req) for e, req in good]
    serial_s = time.perf_counter() - t0
    n_bad = int(args.requests * args.bad_share)
    bad = [(rng.randrange(2), rng.choice([*BAD, "abandoned astream"])) for _ in range(n_bad)]
    jobs: list[tuple[str, int, Any]] = [("good", i, g) for i, g in enumerate(good)]
    jobs += [("bad", i, b) for i, b in enumerate(bad)]
    rng.shuffle(jobs)
    out: dict[str, Any] = {
        "mismatch": 0,
        "good_failed": 0,
        "bad_refused": 0,
        "bad_repaired": 0,
        "bad_other": 0,
    }
    failures: list[str] = []
    lock = threading.Lock()

    def count(key: str) -> None:
        with lock:
            out[key] += 1

    def one(job: tuple[str, int, Any]) -> None:
        kind, i, (e, spec) = job
        try:
            if kind == "good":
                if run(engs[e], spec) != expected[i]:
                    count("mismatch")
                return
            if spec == "abandoned astream":
                abandon(engs[e])
                count("bad_repaired")
                return
            engs[e].generate(["Is the universe"], max_new_tokens=8, add_to_pool=False, **BAD[spec])
            count("bad_repaired")
        except (ValueError, TypeError) as err:
            count("bad_refused" if kind == "bad" else "good_failed")
            if kind == "good":
                failures.append(f"{spec}: {err}")
        except Exception as err:  # noqa: BLE001 - counted and shown
            count("bad_other" if kind == "bad" else "good_failed")
            failures.append(f"{kind} {spec}: {type(err).__name__}: {err}")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.threads) as pool:
        list(pool.map(one, jobs))
    out.update(
        good=len(good),
        bad=n_bad,
        threads=args.threads,
        prompts=sum(len(r["prompts"]) for _, r in good),
        serial_s=round(serial_s, 1),
        concurrent_s=round(time.perf_counter() - t0, 1),
        batches=sum(e.stats.batches_started for e in engs),
        admitted_mid_decode=sum(e.stats.prompts_admitted for e in engs),
        failures=failures[:10],
        load_average=os.getloadavg(),
    )
    for e in engs:
        e.close()
    return out


# ---------------------------------------------------------------------------------------- kill
AUGMENT = textwrap.dedent(
    """
    import sys, datasets
    from datasets_steer import SteerAugmenter
    expert, base, ckpt, data, out = sys.argv[1:6]
    ds = datasets.load_from_disk(data)
    aug = SteerAugmenter(expert, base, prompt="Write about {topic}:", n=2, max_new_tokens=12, num_negatives=3,
                         engine_batch_size=2, checkpoint_dir=ckpt, progress=False, seed=7).fit(ds)
    res = ds.map(aug, batched=True, batch_size=4)
    res.to_json(out)
    """
)


def killed(cmd: list[str], lines: Any, at_least: int, rng: random.Random) -> bool:
    """Run `cmd`, SIGKILL it once `lines()` >= a random target; True when the kill landed mid-run."""
    target = rng.randint(1, at_least)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None and lines() < target:
            time.sleep(0.005)
        landed = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    return landed


def rows_of(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a torn last line: the resume repairs it
            out.append(json.loads(line))
    return out


def _aug_key(row: dict[str, Any]) -> tuple:
    """An augmented row's identity: its input row, whether it is synthetic, and its seed."""
    return row["topic"], row["synthetic"], row["steer_seed"]


def kill(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="steer-kill-"))
    expert, base = save_tiny_pair(root)
    n = args.rows
    gen = [sys.executable, "-m", "steer_plugins.apps.cli", "generate", "--expert", expert, "--base", base,
           "--prompt", "Write about comets:", "--max-new-tokens", "12", "--num-negatives", "3",
           "--chunk-size", "4", "--n", str(n), "--seed", "11", "--quiet", "--no-card"]  # fmt: skip
    subprocess.run([*gen, "--out", str(root / "ref.jsonl")], check=True, capture_output=True)
    ref = [(r["seed"], r["text"]) for r in rows_of(root / "ref.jsonl")]
    cli = {"kills": 0, "landed": 0, "lost": 0, "duplicated": 0, "different": 0, "rows": n}
    for k in range(args.kills):
        out = root / f"run{k}.jsonl"
        cli["landed"] += killed([*gen, "--out", str(out)], lambda o=out: len(rows_of(o)), n - 1, rng)
        cli["kills"] += 1
        subprocess.run([*gen, "--out", str(out)], check=True, capture_output=True)
        got = [(r["seed"], r["text"]) for r in rows_of(out)]
        seeds = [s for s, _ in got]
        cli["lost"] += len({s for s, _ in ref} - set(seeds))
        cli["duplicated"] += len(seeds) - len(set(seeds))
        cli["different"] += sum(a != b for a, b in zip(sorted(got), sorted(ref), strict=False))

    import datasets

    topics = [f"star {i}" for i in range(args.rows // 2)]
    ds = datasets.Dataset.from_dict({"topic": topics, "text": [f"Real text on {t}." for t in topics]})
    ds.save_to_disk(root / "data")

    def aug_cmd(ckpt: Path, out: Path) -> list[str]:
        return [sys.executable, "-c", AUGMENT, expert, base, str(ckpt), str(root / "data"), str(out)]

    subprocess.run(aug_cmd(root / "ck-ref", root / "aug-ref.jsonl"), check=True, capture_output=True)
    ref_rows = {_aug_key(r): r["text"] for r in rows_of(root / "aug-ref.jsonl")}
    aug = {"kills": 0, "landed": 0, "lost": 0, "duplicated": 0, "different": 0, "rows": len(ref_rows)}
    for k in range(args.kills):
        ckpt = root / f"ck{k}"

        def written(c: Path = ckpt) -> int:
            return sum(len(p.read_text().splitlines()) for p in c.glob("*/part-*.jsonl"))

        aug["landed"] += killed(aug_cmd(ckpt, root / f"aug{k}.jsonl"), written, len(topics) - 1, rng)
        aug["kills"] += 1
        subprocess.run(aug_cmd(ckpt, root / f"aug{k}.jsonl"), check=True, capture_output=True)
        got = rows_of(root / f"aug{k}.jsonl")
        keys = [_aug_key(r) for r in got]
        aug["lost"] += len(set(ref_rows) - set(keys))
        aug["duplicated"] += len(keys) - len(set(keys))
        aug["different"] += sum(ref_rows.get(_aug_key(r)) != r["text"] for r in got)
    return {"steer generate": cli, "datasets.map augmenter": aug, "load_average": os.getloadavg()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    lp = sub.add_parser("load")
    lp.add_argument("--requests", type=int, default=2000)
    lp.add_argument("--threads", type=int, default=8)
    lp.add_argument("--bad-share", type=float, default=0.1)
    kp = sub.add_parser("kill")
    kp.add_argument("--kills", type=int, default=10)
    kp.add_argument("--rows", type=int, default=40)
    for p in (lp, kp):
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    result = load(args) if args.what == "load" else kill(args)
    text = json.dumps(result, indent=2, ensure_ascii=False)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
