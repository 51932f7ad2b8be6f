"""Does `torch.compile` pay on this CPU? Eager vs compiled SmolLM2-135M decoding, compile time included.

    python benchmarks/bench_compile.py --batch 8 --tokens 32

Plain greedy `generate()` of the real offline model (fp32), B prompts of about 40 tokens, with the
model's forward run eagerly and then through `torch.compile(dynamic=True)` (inductor, CPU). The first
compiled call is reported apart (compile time); the steady state is the median of `--trials` calls
after it, eager and compiled calls interleaved. Both outputs are compared token for token. If compile does not pay for plain decoding it
will not pay for the engine's steps, which add a custom attention function and a per-row KV cache
(more graph breaks), so the engine does not compile by default.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from steer_plugins.core.sources import load_model  # noqa: E402

PROMPT = "Write a research hypothesis in astronomy, phrased as a question, about"
TOPICS = ["comets", "pulsars", "dark matter", "tides", "exoplanets", "quasars", "auroras", "nebulae"]


def timed(model, inputs, tokens: int) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    model, tok = load_model("smollm2-135m-instruct")
    tok.padding_side = "left"
    prompts = [f"{PROMPT} {TOPICS[i % len(TOPICS)]}:" for i in range(args.batch)]
    inputs = tok(prompts, return_tensors="pt", padding=True)
    eager_forward = model.forward
    compiled_forward = torch.compile(eager_forward, dynamic=True)
    t0 = timed(model, inputs, args.tokens)  # warm-up (lazy imports, allocator growth)
    model.forward = compiled_forward
    first, out_c = timed(model, inputs, args.tokens)
    eager, compiled = [], []
    for _ in range(args.trials):  # interleaved, so a change in machine load hits both alike
        model.forward = eager_forward
        eager.append(timed(model, inputs, args.tokens))
        model.forward = compiled_forward
        compiled.append(timed(model, inputs, args.tokens))
    t_eager = statistics.median(t for t, _ in eager)
    t_comp = statistics.median(t for t, _ in compiled)
    same = bool(torch.equal(out_c, t0[1]))
    n = args.batch * args.tokens
    row = {
        "batch": args.batch,
        "tokens": args.tokens,
        "eager tok/s": round(n / t_eager, 1),
        "compiled tok/s (steady)": round(n / t_comp, 1),
        "speedup": round(t_eager / t_comp, 2),
        "first compiled call s (compile included)": round(first, 1),
        "calls to repay compile": round((first - t_comp) / max(1e-9, t_eager - t_comp), 1)
        if t_eager > t_comp
        else None,
        "same tokens": same,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load average": os.getloadavg(),
    }
    print(json.dumps(row, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(row, f, indent=2)


if __name__ == "__main__":
    main()
