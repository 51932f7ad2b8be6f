"""DSPy on STEER with the real offline model: parse failures with/without FieldByFieldAdapter, and threads.

Study 1, parse-failure rate: `Predict` and `ChainOfThought` over `topic -> question, answer`, N calls
each (fixed seeds), with DSPy's default `ChatAdapter` (its JSON fallback included) and with
`dspy_steer.FieldByFieldAdapter`. A failure is any exception out of the module call.

Study 2, concurrency: the same `Predict` over M topics, a serial loop vs `dspy.Parallel` with 8
threads (the engine coalesces concurrent calls into batches). Per-call seeds, so both must give
identical predictions; the table says whether they did.

Run:
    HF_HUB_OFFLINE=1 python benchmarks/bench_dspy.py            # ~10 min on 2 shared CPU cores
    HF_HUB_OFFLINE=1 python benchmarks/bench_dspy.py --n 5 --m 8   # quick look
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dspy  # noqa: E402
import torch  # noqa: E402
from dspy.clients.cache import Cache  # noqa: E402
from dspy_steer import FieldByFieldAdapter, steer_lm  # noqa: E402

from steer_plugins import DEFAULT_MODEL, SteerConfig, SteerEngine  # noqa: E402

TOPICS = [
    "the moon",
    "volcanoes",
    "photosynthesis",
    "the French revolution",
    "black holes",
    "honey bees",
    "plate tectonics",
    "the human heart",
    "rainbows",
    "the Roman empire",
    "vaccines",
    "glaciers",
    "electric cars",
    "the printing press",
    "coral reefs",
    "earthquakes",
    "the internet",
    "tides",
    "dinosaurs",
    "solar panels",
    "the stock market",
    "bread baking",
    "jazz music",
    "the Amazon river",
]
SEED_QUESTIONS = [  # real examples for the negative pool
    "Why does the moon show phases?",
    "What causes a volcano to erupt?",
    "How do plants turn sunlight into sugar?",
    "What started the French revolution?",
    "Why can't light escape a black hole?",
    "How do bees make honey?",
]


def parse_study(lm: dspy.LM, n: int, max_tokens_chat: int, max_tokens_field: int) -> list[dict]:
    rows = []
    for module_name, make in (("Predict", dspy.Predict), ("ChainOfThought", dspy.ChainOfThought)):
        for adapter_name, adapter, max_tokens in (
            ("ChatAdapter (default)", dspy.ChatAdapter(), max_tokens_chat),
            ("FieldByFieldAdapter", FieldByFieldAdapter(), max_tokens_field),
        ):
            program = make("topic -> question, answer")
            failures, empty, calls = 0, 0, 0
            t0 = time.perf_counter()
            with dspy.context(lm=lm, adapter=adapter, track_usage=False):
                for i in range(n):
                    before = len(lm.history)
                    try:
                        pred = program(
                            topic=TOPICS[i % len(TOPICS)], config={"seed": 1000 + i, "max_tokens": max_tokens}
                        )
                        empty += int(not (pred.question and pred.answer))
                    except Exception:  # noqa: BLE001 - any failure to return a prediction counts
                        failures += 1
                    calls += len(lm.history) - before
            rows.append(
                {
                    "module": module_name,
                    "adapter": adapter_name,
                    "n": n,
                    "failures": failures,
                    "failure_rate": f"{100 * failures / n:.0f}%",
                    "empty_fields": empty,
                    "lm_calls": calls,
                    "s_per_call": f"{(time.perf_counter() - t0) / n:.2f}",
                }
            )
            print_table([rows[-1]])
    return rows


def thread_study(lm: dspy.LM, m: int, max_tokens: int) -> list[dict]:
    program = dspy.Predict("topic -> question, answer")
    inputs = [
        {"topic": TOPICS[i % len(TOPICS)], "config": {"seed": 2000 + i, "max_tokens": max_tokens}}
        for i in range(m)
    ]
    rows = []
    with dspy.context(lm=lm, adapter=FieldByFieldAdapter()):
        start = len(lm.history)
        t0 = time.perf_counter()
        serial = [program(**kw) for kw in inputs]
        t_serial = time.perf_counter() - t0
        serial_tokens = _completion_tokens(lm.history[start:])
        start = len(lm.history)
        t0 = time.perf_counter()
        parallel = dspy.Parallel(num_threads=8, disable_progress_bar=True)([(program, kw) for kw in inputs])
        t_par = time.perf_counter() - t0
        par_tokens = _completion_tokens(lm.history[start:])
    same = [(p.question, p.answer) for p in serial] == [(p.question, p.answer) for p in parallel]
    for name, secs, tokens in (
        ("serial loop", t_serial, serial_tokens),
        ("dspy.Parallel, 8 threads", t_par, par_tokens),
    ):
        rows.append(
            {
                "mode": name,
                "predictions": m,
                "seconds": f"{secs:.1f}",
                "pred_per_s": f"{m / secs:.2f}",
                "gen_tok_per_s": f"{tokens / secs:.1f}",
                "speedup": f"{t_serial / secs:.2f}x",
                "same_as_serial": "yes" if same or name == "serial loop" else "NO",
            }
        )
    return rows


def _completion_tokens(entries: list[dict]) -> int:
    # lm.history entries of this LM (shared by every thread); track_usage does not follow dspy.Parallel threads
    return sum((e.get("usage") or {}).get("completion_tokens", 0) for e in entries)


def print_table(rows: list[dict]) -> None:
    if not rows:
        return
    cols = list(rows[0])
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    print(" | ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths, strict=True)))
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20, help="calls per (module, adapter) in the parse study")
    ap.add_argument("--m", type=int, default=16, help="predictions in the thread study")
    ap.add_argument(
        "--max-tokens-chat", type=int, default=96, help="ChatAdapter: room for every field at once"
    )
    ap.add_argument("--max-tokens-field", type=int, default=40, help="FieldByFieldAdapter: per field")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    ap.add_argument("--skip-parse", action="store_true")
    ap.add_argument("--skip-threads", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dspy.cache = Cache(enable_disk_cache=False, enable_memory_cache=False, disk_cache_dir=None)

    t0 = time.perf_counter()
    engine = SteerEngine(DEFAULT_MODEL, config=SteerConfig(num_negatives=3), pool=SEED_QUESTIONS)
    print(
        f"# {DEFAULT_MODEL} loaded in {time.perf_counter() - t0:.1f}s; torch threads={torch.get_num_threads()}; "
        f"STEER gamma={engine.config.gamma} eta={engine.config.eta} K=3 temperature={engine.config.temperature} "
        f"top_k={engine.config.top_k}\n"
    )
    # add_to_pool=False: the pool stays as seeded, so the serial and threaded runs see the same negatives
    lm = steer_lm(engine=engine, add_to_pool=False, cache=False)
    # warm-up (first forward passes, chat template compile)
    with dspy.context(lm=lm, adapter=FieldByFieldAdapter()):
        dspy.Predict("topic -> question")(topic="warm-up", config={"seed": 0, "max_tokens": 4})

    if not args.skip_parse:
        print(f"## Parse failures, {args.n} calls each\n")
        rows = parse_study(lm, args.n, args.max_tokens_chat, args.max_tokens_field)
        print("## Summary\n")
        print_table(rows)
    if not args.skip_threads:
        print(
            f"## Throughput, {args.m} Predict calls (FieldByFieldAdapter, {args.max_tokens_field} tokens per field)\n"
        )
        print_table(thread_study(lm, args.m, args.max_tokens_field))
    engine.close()


if __name__ == "__main__":
    main()
