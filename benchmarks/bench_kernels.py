"""The linear kernels `fast_linear` chooses between, on a decode step's rows.

    python benchmarks/bench_kernels.py                  # rows 1 4 8 24 48, 2 threads
    python benchmarks/bench_kernels.py --rows 24 2048 --threads 1

Runs every projection of SmolLM2-135M's shape (30 layers of q/k/v/o/gate/up/down and the tied LM
head: 211 matrices, random fp32 weights) once per "step", for each kernel: PyTorch's default
(`nn.functional.linear`, MKL), oneDNN (`torch.ops.mkldnn._linear_pointwise`), MKL with weights
packed once (`torch.ops.mkl._mkl_reorder_linear_weight`) and oneDNN with weights packed once
(`torch.ops.mkldnn._reorder_linear_weight`). Prints ms per step (best of `--repeats`), the time to
pack all weights, and each kernel's largest difference to the default; `--json` keeps the table.
Also times a decode step's attention for one layer (8 rows × 560 keys and 16 rows × 50, GQA 9/3
heads): SDPA's CPU kernel against the two batched products `attention.py` uses.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

HIDDEN, INTER, KV, VOCAB, LAYERS = 576, 1536, 192, 49152, 30
SHAPES = [(HIDDEN, HIDDEN), (KV, HIDDEN), (KV, HIDDEN), (HIDDEN, HIDDEN)]
SHAPES += [(INTER, HIDDEN), (INTER, HIDDEN), (HIDDEN, INTER)]
SHAPES = SHAPES * LAYERS + [(VOCAB, HIDDEN)]


def _onednn(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def linear_table(rows: list[int], repeats: int) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(o, i, generator=gen) / i**0.5 for o, i in SHAPES]
    out = []
    for n in rows:
        xs = {i: torch.randn(n, i, generator=gen) for i in (HIDDEN, INTER)}
        kernels: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
            "default (MKL)": torch.nn.functional.linear,
            "oneDNN": _onednn,
        }
        pack_s: dict[str, float] = {}
        start = time.perf_counter()
        mkl = {id(w): torch.ops.mkl._mkl_reorder_linear_weight(w, n) for w in weights}
        pack_s["MKL packed"] = time.perf_counter() - start
        kernels["MKL packed"] = lambda x, w, mkl=mkl, n=n: torch.ops.mkl._mkl_linear(
            x, mkl[id(w)], w, None, n
        )
        start = time.perf_counter()
        dnn = {id(w): torch.ops.mkldnn._reorder_linear_weight(w, n) for w in weights}
        pack_s["oneDNN packed"] = time.perf_counter() - start
        kernels["oneDNN packed"] = lambda x, w, dnn=dnn: _onednn(x, dnn[id(w)])
        row = {"rows": n}
        probe = weights[6]  # a down projection
        reference = torch.nn.functional.linear(xs[INTER], probe)
        for name, kernel in kernels.items():
            row[name] = best_ms(lambda k=kernel, xs=xs: [k(xs[w.shape[1]], w) for w in weights], repeats)
            row[f"{name} max diff"] = (kernel(xs[INTER], probe) - reference).abs().max().item()
        row["pack s"] = pack_s
        out.append(row)
        print(
            f"rows {n:5d}: "
            + "  ".join(f"{k} {row[k]:8.1f} ms" for k in kernels)
            + "  pack s: "
            + ", ".join(f"{k} {v:.2f}" for k, v in pack_s.items()),
            flush=True,
        )
    return out


def attention_table(repeats: int) -> list[dict]:
    out = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    for n, keys in ((8, 560), (16, 50), (24, 560)):
        q = torch.randn(n, 3, 3, 64)
        k = torch.randn(n, 3, keys + 64, 64)[:, :, :keys]  # a slice of a preallocated cache
        v = torch.randn(n, 3, keys + 64, 64)[:, :, :keys]
        mask = torch.ones(n, 1, 1, keys, dtype=torch.bool)

        def products(q=q, k=k, v=v, mask=mask) -> torch.Tensor:
            scores = torch.matmul(q, k.transpose(-1, -2)).mul_(64**-0.5)
            scores.masked_fill_(~mask, float("-inf"))
            return torch.matmul(torch.softmax(scores, dim=-1), v)

        ms_sdpa = best_ms(lambda q=q, k=k, v=v, mask=mask: sdpa(q, k, v, attn_mask=mask), repeats * 20)
        ms_products = best_ms(products, repeats * 20)
        diff = (products() - sdpa(q, k, v, attn_mask=mask)).abs().max().item()
        out.append(
            {"rows": n, "keys": keys, "sdpa ms": ms_sdpa, "products ms": ms_products, "max diff": diff}
        )
        print(
            f"attention {n} rows x {keys} keys: SDPA {ms_sdpa:.3f} ms, products {ms_products:.3f} ms ({diff:.1e})"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 4, 8, 24, 48])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, SmolLM2-135M's 211 projections per step")
    with torch.inference_mode():
        result = {"linear": linear_table(args.rows, args.repeats), "attention": attention_table(args.repeats)}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
