"""DSPy calls from 8 threads: results equal the serial loop's (the engine coalesces the calls into batches)."""

from __future__ import annotations

import dspy
from dspy_steer import steer_lm


def test_eight_threads_equal_serial(tiny_engine, adapter):
    lm = steer_lm(engine=tiny_engine, cache=False, add_to_pool=False, max_new_tokens=6)
    program = dspy.Predict("topic -> question, answer")
    topics = [f"topic {i}" for i in range(8)]
    # one seed per example, so each call is reproducible wherever and with whomever it runs
    configs = [{"seed": 100 + i} for i in range(8)]
    with dspy.context(lm=lm, adapter=adapter):
        serial = [program(topic=t, config=c) for t, c in zip(topics, configs, strict=True)]
        parallel = dspy.Parallel(num_threads=8, disable_progress_bar=True)(
            [(program, {"topic": t, "config": c}) for t, c in zip(topics, configs, strict=True)]
        )
        examples = [dspy.Example(topic=t).with_inputs("topic") for t in topics]
        batched = lm.copy(seed=100)  # Module.batch: one LM seed for all, same as serial with that seed
        with dspy.context(lm=batched):
            batch = program.batch(examples, num_threads=8, disable_progress_bar=True)
            serial_same_seed = [program(topic=t) for t in topics]
    as_pairs = lambda preds: [(p.question, p.answer) for p in preds]  # noqa: E731
    assert as_pairs(parallel) == as_pairs(serial)
    assert as_pairs(batch) == as_pairs(serial_same_seed)
