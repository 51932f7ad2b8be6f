"""ChatSteer: `batch` of 8 inputs vs a loop of 8 `invoke`s, on the real offline model.

LangChain's `BaseChatModel.batch` runs one `_generate` per input on a thread pool; `ChatSteer.batch`
gives the pool one thread per input and announces them with `engine.expect(8)`, so the engine's
scheduler starts them as one decode batch. Rows: a loop of invokes (8 engine batches of 1),
LangChain's plain thread-pool batch (`Runnable.batch`, relying on the engine's 5 ms coalescing
window only), and `ChatSteer.batch`; the last column is the engine batches each row started. Fixed seed, sampling defaults, one warmup; EOS may end outputs early, so compare tok/s too.

    HF_HUB_OFFLINE=1 python benchmarks/bench_langchain_chat_batch.py [--trials 1] [--max-new-tokens 24]
"""

from __future__ import annotations

import argparse
import time

from langchain_core.runnables import Runnable
from langchain_steer import ChatSteer

from steer_plugins import DEFAULT_MODEL, SteerEngine

TOPICS = ["black holes", "exoplanets", "galaxies", "stars", "supernovae", "the Sun", "comets", "dust"]
POOL = [
    "Does the radius valley among small exoplanets shift with host-star age?",
    "Do dwarf galaxies with bursty star formation have cored dark matter halos?",
    "Is the Hubble tension caused by an early dark energy component?",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=1)
    ap.add_argument(
        "--only", choices=["loop", "threads", "gathered"], action="append", help="run these rows only"
    )
    ap.add_argument("--max-new-tokens", type=int, default=24)
    args = ap.parse_args()

    engine = SteerEngine(DEFAULT_MODEL, pool=POOL)
    chat = ChatSteer(
        engine=engine, num_negatives=2, max_new_tokens=args.max_new_tokens, seed=0, add_to_pool=False
    )
    inputs = [
        [("system", "You write one research question."), ("user", f"A question about {t}.")] for t in TOPICS
    ]
    chat.invoke(inputs[0], max_new_tokens=4)  # warmup

    runs = {
        "loop of 8 invokes": lambda: [chat.invoke(x) for x in inputs],
        "Runnable.batch (thread pool only)": lambda: Runnable.batch(chat, inputs),
        "ChatSteer.batch (expected)": lambda: chat.batch(inputs),
    }
    keys = dict(zip(["loop", "threads", "gathered"], runs, strict=True))
    if args.only:
        runs = {keys[k]: runs[keys[k]] for k in args.only}
    rows = []
    for name, fn in runs.items():
        times, tokens = [], 0
        before = engine.stats.batches_started
        for _ in range(args.trials):
            t0 = time.perf_counter()
            outs = fn()
            times.append(time.perf_counter() - t0)
            tokens = sum(o.usage_metadata["output_tokens"] for o in outs)
        batches = (engine.stats.batches_started - before) / args.trials
        rows.append((name, sum(times) / len(times), tokens, batches))
        print(f"  {name}: {rows[-1][1]:.2f}s, {tokens} output tokens, {batches:g} batches", flush=True)
    base = rows[0][1]
    print(f"\n8 inputs, max_new_tokens={args.max_new_tokens}, model={engine.name}, trials={args.trials}")
    print(f"{'run':36} {'wall s':>8} {'out tok':>8} {'tok/s':>7} {'speedup':>8} {'batches':>8}")
    for name, secs, tok, batches in rows:
        print(f"{name:36} {secs:8.2f} {tok:8d} {tok / secs:7.1f} {base / secs:7.2f}x {batches:8g}")
    engine.close()


if __name__ == "__main__":
    main()
