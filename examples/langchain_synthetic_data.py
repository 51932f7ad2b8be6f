"""Synthetic research hypotheses with a LangChain chain and STEER decoding, written as JSONL.

A typical synthetic-data chain: a few-shot `PromptTemplate` over seed records, the model, and a
`PydanticOutputParser` that only lets validated records through (a retry re-samples the ones that
fail). The model is `SteerLLM`: the only line that differs from a `HuggingFacePipeline` chain.
The seed records also seed the negative pool, so each output is steered away from K of them
(and from earlier outputs, as the STEER paper does).

Runs offline on the embedded SmolLM2-135M-Instruct (measured: 32 s on 2 idle CPU cores, model load
included, 8/8 valid records; 4m50s when the cores were shared with other jobs, load average ~10):

    HF_HUB_OFFLINE=1 python examples/langchain_synthetic_data.py

Output: `langchain_synthetic.jsonl` (override with `--out`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from langchain_core.output_parsers import PydanticOutputParser
from langchain_core.prompts import PromptTemplate
from langchain_core.runnables import RunnableLambda
from langchain_steer import SteerLLM
from pydantic import BaseModel, Field, field_validator

from steer_plugins import DEFAULT_MODEL, SteerEngine

NUM_NEGATIVES = 2  # K lowered for a small pool; gamma, eta and the rest: SteerConfig's defaults
MAX_NEW_TOKENS = 48
ATTEMPTS = 3  # the retry re-samples records that fail validation
SEED_RECORDS = [
    {
        "field": "exoplanets",
        "hypothesis": "Does the radius valley among small exoplanets shift with host-star age?",
    },
    {
        "field": "galaxies",
        "hypothesis": "Do dwarf galaxies with bursty star formation have cored dark matter halos?",
    },
    {
        "field": "stars",
        "hypothesis": "Can magnetic braking explain the slow rotation of old solar-type stars?",
    },
    {"field": "cosmology", "hypothesis": "Is the Hubble tension caused by an early dark energy component?"},
    {
        "field": "comets",
        "hypothesis": "Do interstellar comets carry more carbon monoxide than solar system comets?",
    },
]
TARGET_FIELDS = ["black holes", "exoplanets", "galaxies", "stars", "supernovae", "the Sun", "comets", "dust"]


class Record(BaseModel):
    """One synthetic record: a research field and a hypothesis phrased as a question."""

    field: str
    hypothesis: str = Field(min_length=20, max_length=300)

    @field_validator("hypothesis")
    @classmethod
    def _is_question(cls, v: str) -> str:
        v = v.strip()
        if not v.endswith("?"):
            raise ValueError("a hypothesis must be phrased as a question ending in '?'")
        return v


FEW_SHOT = "\n".join(json.dumps(r) for r in SEED_RECORDS)
PROMPT = PromptTemplate.from_template(
    "Research hypotheses as JSON lines, one per line, each a single question.\n"
    + FEW_SHOT.replace("{", "{{").replace("}", "}}")
    + '\n{{"field": "{field}", "hypothesis": "'
)


def close_record(inputs: dict) -> str:
    """The prompt ends inside a JSON string (prefilling): close it into one JSON object."""
    text = inputs["completion"].split('"')[0].strip()
    return json.dumps({"field": inputs["field"], "hypothesis": text})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="langchain_synthetic.jsonl")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    t0 = time.perf_counter()
    engine = SteerEngine(DEFAULT_MODEL, pool=[r["hypothesis"] for r in SEED_RECORDS])
    # The one-line swap: llm = HuggingFacePipeline.from_model_id(model_id=..., task="text-generation")
    llm = SteerLLM(
        engine=engine,
        num_negatives=NUM_NEGATIVES,
        max_new_tokens=MAX_NEW_TOKENS,
        seed=args.seed,
    )
    parser = PydanticOutputParser(pydantic_object=Record)
    generate = PROMPT | llm.bind(stop=["\n", '"}'])
    chain = (
        {"completion": generate, "field": lambda x: x["field"]} | RunnableLambda(close_record) | parser
    ).with_retry(stop_after_attempt=ATTEMPTS)
    print(f"loaded {engine.name} in {time.perf_counter() - t0:.0f}s; generating {len(TARGET_FIELDS)} records")

    t1 = time.perf_counter()
    results = chain.batch([{"field": f} for f in TARGET_FIELDS], return_exceptions=True)
    records = [r for r in results if isinstance(r, Record)]
    out = Path(args.out)
    with out.open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write(r.model_dump_json() + "\n")
    for r in records:
        print(f"  [{r.field}] {r.hypothesis}")
    failed = len(results) - len(records)
    print(
        f"{len(records)} valid records ({failed} failed after {ATTEMPTS} attempts) -> {out} "
        f"in {time.perf_counter() - t1:.0f}s; negative pool now {len(engine.pool)} texts"
    )
    engine.close()


if __name__ == "__main__":
    main()
