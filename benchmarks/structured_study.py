"""Structured output on the real model: parse rates through DSPy and LangChain, and what η does to
each field of a record (the numbers in docs/structured.md).

    python benchmarks/structured_study.py parse  --calls 50      # DSPy Predict / ChainOfThought, LangChain
    python benchmarks/structured_study.py fields --n 64          # distinct values per field, STEER vs plain

``parse``: SmolLM2-135M-Instruct, DSPy's default configuration (no adapter set: ChatAdapter), each
program called once per topic (50 topics by default) through ``Module.batch`` so the engine batches
them; a call counts as parsed when DSPy returned a Prediction whose fields have the declared types.
Then LangChain: ``ChatSteer(...).with_structured_output(Question).batch(...)`` over the same topics,
counted as parsed when it returned a ``Question`` instance.

``fields``: the shipped expert (hypotheses LoRA over SmolLM2), a record schema (question, field,
difficulty, is_observational), n records decoded in batches of 8 with each batch's records added to
the pool (so the negatives are earlier records, serialised like the output), once with STEER's
defaults and once with γ = η = 0; distinct values per field and normalised distinct 3-grams of the
question text.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any, Literal

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pydantic  # noqa: E402

TOPICS = [
    "tides", "comets", "pulsars", "dark matter", "exoplanets", "black holes", "neutron stars", "quasars",
    "the Moon", "Mars", "Jupiter's moons", "Saturn's rings", "the Sun", "solar flares", "auroras",
    "meteor showers", "asteroids", "the Kuiper belt", "the Oort cloud", "galaxies", "galaxy clusters",
    "the cosmic microwave background", "dark energy", "gravitational waves", "supernovae", "white dwarfs",
    "red giants", "star formation", "nebulae", "the Milky Way", "Andromeda", "cosmic rays", "gamma-ray bursts",
    "magnetars", "brown dwarfs", "binary stars", "variable stars", "telescopes", "spectroscopy", "redshift",
    "the Big Bang", "inflation", "cosmic voids", "planetary nebulae", "Venus", "Mercury", "Uranus",
    "Neptune", "Pluto", "interstellar dust",
]  # fmt: skip


class Question(pydantic.BaseModel):
    """A research question with a difficulty and whether it needs observations."""

    question: str
    difficulty: int = pydantic.Field(ge=1, le=5)
    is_open: bool


class Record(pydantic.BaseModel):
    question: str = pydantic.Field(max_length=160)
    field: Literal["planetary", "stellar", "galactic", "cosmology", "instrumentation"]
    difficulty: int = pydantic.Field(ge=1, le=5)
    is_observational: bool


# ---------------------------------------------------------------------------------------- parse
def _typed(pred: Any, fields: dict[str, Any]) -> bool:
    return all(check(getattr(pred, name, None)) for name, check in fields.items())


def dspy_rates(engine: Any, calls: int, max_new_tokens: int) -> list[dict[str, Any]]:
    import dspy
    from dspy_steer import steer_lm

    class Facts(dspy.Signature):
        """Describe an astronomy topic."""

        topic: str = dspy.InputField()
        category: Literal["planetary", "stellar", "galactic", "cosmology"] = dspy.OutputField()
        distance_ly: float = dspy.OutputField()
        question: Question = dspy.OutputField()

    programs = {
        "Predict(topic -> question: str, difficulty: int, is_open: bool)": (
            dspy.Predict("topic -> question: str, difficulty: int, is_open: bool"),
            {
                "question": lambda v: isinstance(v, str) and v.strip() != "",
                "difficulty": lambda v: type(v) is int,
                "is_open": lambda v: type(v) is bool,
            },
        ),
        "ChainOfThought(topic -> tags: list[str])": (
            dspy.ChainOfThought("topic -> tags: list[str]"),
            {"tags": lambda v: isinstance(v, list) and all(isinstance(t, str) for t in v)},
        ),
        "Predict(Literal, float, pydantic Question)": (
            dspy.Predict(Facts),
            {
                "category": lambda v: v in ("planetary", "stellar", "galactic", "cosmology"),
                "distance_ly": lambda v: isinstance(v, float),
                "question": lambda v: isinstance(v, Question),
            },
        ),
    }
    lm = steer_lm(engine=engine, max_new_tokens=max_new_tokens, cache=False)
    dspy.configure(lm=lm)  # no adapter: DSPy's default (ChatAdapter)
    rows = []
    for name, (program, checks) in programs.items():
        examples = [dspy.Example(topic=t).with_inputs("topic") for t in (TOPICS * 2)[:calls]]
        t0 = time.perf_counter()
        preds = program.batch(
            examples, num_threads=8, return_failed_examples=True, max_errors=calls + 1, timeout=1800
        )
        wall = time.perf_counter() - t0
        ok, failed, errors = preds
        parsed = sum(_typed(p, checks) for p in ok if p is not None)
        rows.append(
            {
                "program": name,
                "calls": calls,
                "parsed": parsed,
                "errors": len(failed),
                "first_error": str(errors[0])[:300] if errors else None,
                "wall_s": round(wall, 1),
                "example": {k: str(getattr(ok[0], k, None))[:120] for k in checks} if ok else None,
            }
        )
        print(json.dumps(rows[-1], ensure_ascii=False), flush=True)
    return rows


def langchain_rate(engine: Any, calls: int, max_new_tokens: int) -> dict[str, Any]:
    from langchain_steer import ChatSteer

    chat = ChatSteer(engine=engine, max_new_tokens=max_new_tokens)
    structured = chat.with_structured_output(Question)
    prompts = [
        f"Write a research question about {t}, with a difficulty from 1 to 5." for t in (TOPICS * 2)[:calls]
    ]
    t0 = time.perf_counter()
    outs = structured.batch(prompts, return_exceptions=True)
    wall = time.perf_counter() - t0
    parsed = [o for o in outs if isinstance(o, Question)]
    errors = [o for o in outs if isinstance(o, Exception)]
    row = {
        "program": "ChatSteer.with_structured_output(Question).batch",
        "calls": calls,
        "parsed": len(parsed),
        "errors": len(errors),
        "first_error": str(errors[0])[:300] if errors else None,
        "wall_s": round(wall, 1),
        "example": parsed[0].model_dump() if parsed else None,
    }
    print(json.dumps(row, ensure_ascii=False), flush=True)
    return row


def parse(args: argparse.Namespace) -> dict[str, Any]:
    from steer_plugins import SteerEngine

    engine = SteerEngine("smollm2-135m-instruct", max_batch_size=16)
    rows = dspy_rates(engine, args.calls, args.max_new_tokens)
    rows.append(langchain_rate(engine, args.calls, args.max_new_tokens))
    engine.close()
    return {"rows": rows, "max_new_tokens": args.max_new_tokens, "load_average": os.getloadavg()}


# ---------------------------------------------------------------------------------------- fields
def ngram_diversity(texts: list[str], n: int = 3) -> float:
    grams = [tuple(t.split()[i : i + n]) for t in texts for i in range(max(0, len(t.split()) - n + 1))]
    return len(set(grams)) / max(1, len(grams))


def field_run(engine: Any, prompt: str, n: int, seed: int, **kw: Any) -> dict[str, Any]:
    records: list[dict[str, Any]] = []
    cut = 0
    t0 = time.perf_counter()
    for start in range(0, n, 8):
        size = min(8, n - start)
        results = engine.generate(
            [prompt] * size, constraint=Record, seed=seed + start, add_to_pool=True, **kw
        )
        for r in results:
            if r.parsed is None:
                cut += 1
            else:
                records.append(r.parsed.model_dump())
    wall = time.perf_counter() - t0
    out: dict[str, Any] = {"records": len(records), "cut_by_length": cut, "wall_s": round(wall, 1)}
    for name in Record.model_fields:
        out[f"distinct {name}"] = len({json.dumps(r[name]) for r in records})
    questions = [r["question"] for r in records]
    out["question 3-grams (normalised distinct)"] = round(ngram_diversity(questions), 3)
    out["question words (mean)"] = round(sum(len(q.split()) for q in questions) / max(1, len(questions)), 1)
    out["examples"] = questions[:3]
    return out


def fields(args: argparse.Namespace) -> dict[str, Any]:
    from steer_plugins import SteerConfig, SteerEngine
    from steer_plugins.apps.cli._common import DEFAULT_EXPERT

    prompt_text = "Write a research hypothesis in astronomy as a JSON record: a question, its field, a difficulty (1-5), and whether it needs observations."
    out: dict[str, Any] = {"n": args.n, "seed": args.seed, "K": args.k}
    default = SteerConfig()
    for label, kw in (
        (f"STEER defaults (γ={default.gamma}, η={default.eta})", {}),
        ("plain (γ=η=0)", {"gamma": 0.0, "eta": 0.0}),
    ):
        engine = SteerEngine(
            DEFAULT_EXPERT, config=SteerConfig(max_new_tokens=args.max_new_tokens, num_negatives=args.k)
        )
        prompt = engine.apply_chat_template([{"role": "user", "content": prompt_text}])
        out[label] = field_run(engine, prompt, args.n, args.seed, **kw)
        print(label, json.dumps(out[label], ensure_ascii=False), flush=True)
        engine.close()
    out["load_average"] = os.getloadavg()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    pp = sub.add_parser("parse")
    pp.add_argument("--calls", type=int, default=50)
    pp.add_argument("--max-new-tokens", type=int, default=160)
    fp = sub.add_parser("fields")
    fp.add_argument("--n", type=int, default=64)
    fp.add_argument("--max-new-tokens", type=int, default=96)
    fp.add_argument("--seed", type=int, default=0)
    fp.add_argument(
        "--k", type=int, default=4, help="negatives per row (the pool holds only earlier records)"
    )
    for p in (pp, fp):
        p.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    result = parse(args) if args.what == "parse" else fields(args)
    text = json.dumps(result, indent=2, ensure_ascii=False, default=str)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
