"""Per-token cost of a grammar constraint: xgrammar vs llguidance vs outlines-core, and the engine.

Part 1 (libraries): SmolLM2's 49,152-token vocabulary, a nested JSON schema (`SCHEMA`), batch 8.
Each of the 8 rows is teacher-forced through its own valid record (tokenised by the real
tokenizer, rows at staggered offsets so their grammar states differ; a row that completes starts
the next record), so the masks are computed in the states a real JSON output passes through.
Per step and for all 8 rows: `fill` = computing the allowed-token bitmasks (per row, and with the
library's batched/parallel call where it has one), `apply` = setting forbidden logits of a
(8, 49152) tensor to -inf (the engine's lookup-table bias, the same for every library), `advance` =
feeding each row its token. Setup (tokenizer conversion) and compile times are one-off costs per
tokenizer / per schema. Each library runs `--repeat` times; the table keeps each column's best
(the machine is shared: the minimum is the least disturbed run).

Part 2 (engine): the same 8 prompts on the real model (default STEER config, K negatives from the
shipped seed set, EOS ignored, 96 tokens) without and with `constraint=SCHEMA`: every decoder
step is timed (best of the trials per step index, over the steps where all 8 rows decode), and so
is the constraint's own work inside them (`apply_constraints`, advances). Target: constraint time
<= 10 % of the unconstrained step.

    OMP_NUM_THREADS=1 python benchmarks/bench_grammar.py            # both parts (10-15 min on 2 cores)
    OMP_NUM_THREADS=1 python benchmarks/bench_grammar.py --libs     # part 1 only
    OMP_NUM_THREADS=1 python benchmarks/bench_grammar.py --engine   # part 2 only
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
B = 8
SCHEMA = {
    "type": "object",
    "properties": {
        "question": {"type": "string"},
        "difficulty": {"type": "integer", "minimum": 1, "maximum": 5},
        "is_open": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
        "answer": {
            "type": "object",
            "properties": {
                "text": {"type": "string"},
                "confidence": {"type": "number"},
                "sources": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"title": {"type": "string"}, "year": {"type": "integer"}},
                        "required": ["title", "year"],
                    },
                },
            },
            "required": ["text", "confidence", "sources"],
        },
        "topic": {"enum": ["astronomy", "physics", "biology"]},
    },
    "required": ["question", "difficulty", "is_open", "tags", "answer", "topic"],
}
WORDS = ["dark", "matter", "halo", "galaxy", "star", "planet", "comet", "orbit", "spectrum", "redshift"]


def records(n: int, seed: int = 0) -> list[dict]:
    """`n` varied records valid under `SCHEMA`."""
    rng = random.Random(seed)

    def phrase(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, k))).capitalize()

    return [
        {
            "question": phrase(12) + "?",
            "difficulty": rng.randint(1, 5),
            "is_open": rng.random() < 0.5,
            "tags": [rng.choice(WORDS) for _ in range(rng.randint(0, 4))],
            "answer": {
                "text": phrase(16) + ".",
                "confidence": round(rng.random(), 3),
                "sources": [
                    {"title": phrase(4), "year": rng.randint(1950, 2025)} for _ in range(rng.randint(0, 2))
                ],
            },
            "topic": rng.choice(["astronomy", "physics", "biology"]),
        }
        for _ in range(n)
    ]


# ---------------------------------------------------------------------------------------- backends
class XGrammar:
    name = "xgrammar"

    def setup(self, tok, vocab: int) -> None:
        import xgrammar as xgr

        self.xgr = xgr
        self.info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab)
        self.compiler = xgr.GrammarCompiler(self.info)
        self.batch = xgr.BatchGrammarMatcher(max_threads=2)

    def compile(self, schema: dict) -> None:
        self.compiled = self.compiler.compile_json_schema(json.dumps(schema))

    def new_row(self):
        return self.xgr.GrammarMatcher(self.compiled)

    def fill_rows(self, rows, bitmask) -> None:
        for i, m in enumerate(rows):
            m.fill_next_token_bitmask(bitmask, i)

    def fill_batched(self, rows, bitmask) -> None:
        self.batch.batch_fill_next_token_bitmask(rows, bitmask)

    def advance(self, row, token: int) -> None:
        assert row.accept_token(token)

    def finished(self, row) -> bool:
        return row.is_completed()


class LLGuidance:
    name = "llguidance"

    def setup(self, tok, vocab: int) -> None:
        import llguidance
        import llguidance.hf
        import llguidance.torch

        self.ll, self.llt = llguidance, llguidance.torch
        self.tok = llguidance.hf.from_tokenizer(tok, vocab)
        self.executor = llguidance.LLExecutor()

    def compile(self, schema: dict) -> None:
        self.grammar = self.ll.LLMatcher.grammar_from_json_schema(schema)
        self.ll.LLMatcher(self.tok, self.grammar)  # llguidance compiles lazily, per matcher

    def new_row(self):
        return self.ll.LLMatcher(self.tok, self.grammar)

    def fill_rows(self, rows, bitmask) -> None:
        for i, m in enumerate(rows):
            self.llt.fill_next_token_bitmask(m, bitmask, i)

    def fill_batched(self, rows, bitmask) -> None:
        self.llt.fill_next_token_bitmask_par(self.executor, [(m, i) for i, m in enumerate(rows)], bitmask)

    def advance(self, row, token: int) -> None:
        assert row.consume_token(token), row.get_error()

    def finished(self, row) -> bool:
        return row.is_accepting()


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed (token text -> byte)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


class OutlinesCore:
    name = "outlines-core"

    def setup(self, tok, vocab: int) -> None:
        from outlines_core import Vocabulary

        dec, special, table = _byte_decoder(), set(tok.all_special_ids), {}
        for text, i in tok.get_vocab().items():
            if i not in special:
                key = bytes(dec[c] for c in text) if all(c in dec for c in text) else text.encode()
                table.setdefault(key, []).append(i)
        self.vocab = Vocabulary(tok.eos_token_id, table)

    def compile(self, schema: dict) -> None:
        from outlines_core import Index
        from outlines_core.json_schema import build_regex_from_schema

        self.index = Index(build_regex_from_schema(json.dumps(schema)), self.vocab)

    def new_row(self):
        from outlines_core import Guide

        return Guide(self.index)

    def fill_rows(self, rows, bitmask) -> None:
        for i, g in enumerate(rows):
            g.write_mask_into(bitmask[i].data_ptr(), bitmask[i].numel(), 4)

    fill_batched = None

    def advance(self, row, token: int) -> None:
        row.advance(token)

    def finished(self, row) -> bool:
        return row.is_finished()


def apply_bias(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """Forbidden tokens of `logits` to -inf from a packed int32 bitmask, the way the engine does it
    (`constraints.bitmask_bias`: a 256-entry lookup table, then one add)."""
    from steer_plugins.core.constraints import bitmask_bias

    rows = torch.arange(logits.shape[0])
    return logits.index_add(0, rows, bitmask_bias(bitmask, logits.shape[-1], logits.device))


def bench_library(lib, tok, vocab: int, steps: int) -> dict:
    t = time.perf_counter()
    lib.setup(tok, vocab)
    setup_s = time.perf_counter() - t
    t = time.perf_counter()
    lib.compile(SCHEMA)
    compile_s = time.perf_counter() - t
    forced = [list(tok(json.dumps(r)).input_ids) for r in records(64)]
    bitmask = torch.zeros(B, (vocab + 31) // 32, dtype=torch.int32)
    logits = torch.randn(B, vocab)
    out: dict[str, list[float]] = {"fill": [], "fill_batched": [], "apply": [], "advance": []}
    for mode in ("fill", "fill_batched"):
        fill = lib.fill_rows if mode == "fill" else lib.fill_batched
        if fill is None:
            continue
        rows = [lib.new_row() for _ in range(B)]
        which = list(range(B))
        pos = [7 * i for i in range(B)]  # staggered: different states at every step
        for i in range(B):
            for tk in forced[i][: pos[i]]:
                lib.advance(rows[i], tk)
        for _ in range(steps):
            t = time.perf_counter()
            fill(rows, bitmask)
            out[mode].append(time.perf_counter() - t)
            if mode == "fill":
                t = time.perf_counter()
                apply_bias(logits, bitmask)
                out["apply"].append(time.perf_counter() - t)
            t = time.perf_counter()
            for i in range(B):
                lib.advance(rows[i], forced[which[i]][pos[i]])
                pos[i] += 1
            if mode == "fill":
                out["advance"].append(time.perf_counter() - t)
            for i in range(B):
                if pos[i] == len(forced[which[i]]):
                    assert lib.finished(rows[i]), f"{lib.name}: row {i} did not complete its record"
                    rows[i], which[i], pos[i] = lib.new_row(), (which[i] + B) % len(forced), 0
    ms = {k: 1000 * statistics.mean(v) for k, v in out.items() if v}
    return {"library": lib.name, "setup_s": setup_s, "compile_ms": 1000 * compile_s, **ms}


def print_library_table(rows: list[dict]) -> None:
    print(f"\n### Mask cost at B={B}, 49,152-token vocabulary, nested schema (ms per step, all {B} rows)\n")
    print(
        "| library | tokenizer setup (s) | compile (ms) | fill, per row | fill, batched | apply | advance | step total |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        fill = min(r["fill"], r.get("fill_batched", r["fill"]))
        total = fill + r["apply"] + r["advance"]
        batched = f"{r['fill_batched']:.3f}" if "fill_batched" in r else "n/a"
        print(
            f"| {r['library']} | {r['setup_s']:.2f} | {r['compile_ms']:.1f} | {r['fill']:.3f} | {batched} | "
            f"{r['apply']:.3f} | {r['advance']:.3f} | {total:.3f} |"
        )


# ---------------------------------------------------------------------------------------- engine
def _negatives() -> list[str]:
    path = ROOT / "steer_plugins/assets/seed_hypotheses.jsonl"
    return [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


class _Probe:
    """Times every `Decoder.step` (with its batch size), `apply_constraints` and constraint advances."""

    def __init__(self) -> None:
        from steer_plugins.core import decode
        from steer_plugins.core.grammar import GrammarConstraint

        self.decode, self.cls = decode, GrammarConstraint
        self.real = (decode.Decoder.step, decode.apply_constraints, GrammarConstraint.advance)
        self.reset()

    def reset(self) -> None:
        self.steps: list[tuple[int, float]] = []
        self.mask: list[tuple[int, float]] = []
        self.advance = [0.0, 0]

    def __enter__(self) -> _Probe:
        step, apply, advance = self.real

        def timed_step(decoder):
            n, t = len(decoder), time.perf_counter()
            out = step(decoder)
            self.steps.append((n, time.perf_counter() - t))
            return out

        def timed_apply(*args):
            t = time.perf_counter()
            out = apply(*args)
            self.mask.append((len(args[2]), time.perf_counter() - t))
            return out

        def timed_advance(c, token_id):
            t = time.perf_counter()
            advance(c, token_id)
            self.advance[0] += time.perf_counter() - t
            self.advance[1] += 1

        self.decode.Decoder.step, self.decode.apply_constraints = timed_step, timed_apply
        self.cls.advance = timed_advance
        return self

    def __exit__(self, *exc) -> None:
        self.decode.Decoder.step, self.decode.apply_constraints, self.cls.advance = self.real


def bench_engine(engine, tokens: int, trials: int) -> None:
    """Per-step time of the same 8 prompts with and without the constraint (best of `trials` per
    step index, over the steps where all 8 decode), and the constraint's own time inside them."""
    from steer_plugins.core.grammar import compile_grammar

    prompts = [f"Write one quiz record about topic #{i} in JSON:" for i in range(B)]
    kw = {"ignore_eos": True, "seeds": list(range(B)), "max_new_tokens": tokens, "add_to_pool": False}
    ctx = engine.token_context
    compile_grammar(SCHEMA).start(ctx.tokenizer, ctx.eos, tokens)  # one-off: bind to the tokenizer
    best: dict[str, list[float]] = {}
    mask_ms, advance_ms, results = [], [], []
    with _Probe() as probe:
        for _ in range(trials):
            for mode in ("plain", "constrained"):
                probe.reset()
                extra = {"constraint": SCHEMA} if mode == "constrained" else {}
                results = engine.generate(prompts, **kw, **extra)
                times = [dt for n, dt in probe.steps if n == B]
                old = best.get(mode, times)
                best[mode] = [min(x, y) for x, y in zip(old, times, strict=False)]
                if mode == "constrained":
                    mask_ms.append(1000 * statistics.mean(dt for n, dt in probe.mask if n == B))
                    advance_ms.append(1000 * B * probe.advance[0] / max(probe.advance[1], 1))
    n = min(len(best["plain"]), len(best["constrained"]))
    plain, constrained = (1000 * statistics.mean(best[m][:n]) for m in ("plain", "constrained"))
    mask, adv = min(mask_ms), min(advance_ms)
    print(f"\n### Engine at B={B} (best of {trials} per step, {n} steps with all {B} rows decoding)\n")
    print("| measure | ms per step |")
    print("|---|---:|")
    print(f"| unconstrained STEER step | {plain:.1f} |")
    print(f"| constrained STEER step (`constraint=SCHEMA`) | {constrained:.1f} |")
    print(f"| of which `apply_constraints` (bitmasks + bias, all rows) | {mask:.2f} |")
    print(f"| of which constraint advance (all rows) | {adv:.2f} |")
    print(
        f"| constraint overhead: (mask + advance) / unconstrained step | {100 * (mask + adv) / plain:.1f} % |"
    )
    print(
        f"| step-time difference, constrained vs unconstrained | {100 * (constrained / plain - 1):+.1f} % |"
    )
    done = sum(r.finish_reason == "stop" and _parses(r.text) for r in results)
    print(
        f"\nlast constrained run: {done}/{B} complete JSON, finish reasons {[r.finish_reason for r in results]}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--libs", action="store_true", help="library table only (no engine)")
    ap.add_argument("--engine", action="store_true", help="engine measurement only (no library table)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--trials", type=int, default=2)
    args = ap.parse_args()
    from steer_plugins import SteerEngine

    engine = SteerEngine("smollm2-135m-instruct", pool=_negatives())
    tok = engine.tokenizer
    vocab = engine.models.expert.get_output_embeddings().weight.shape[0]
    print(f"torch threads: {torch.get_num_threads()}, vocabulary: {vocab}")
    table = []
    for lib_class in () if args.engine else (XGrammar, LLGuidance, OutlinesCore):
        try:
            runs = [bench_library(lib_class(), tok, vocab, args.steps) for _ in range(args.repeat)]
        except ImportError as err:
            print(f"{lib_class.name}: not installed ({err})")
            continue
        table.append({k: v if isinstance(v, str) else min(r[k] for r in runs) for k, v in runs[0].items()})
    if table:
        print_library_table(table)
    if not args.libs:
        bench_engine(engine, args.tokens, args.trials)
    engine.close()


if __name__ == "__main__":
    main()
