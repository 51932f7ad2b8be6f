"""Speed of STEER decoding against plain sampling, transformers CFG and the authors' loop.

All configurations run in this one process on the real offline model (SmolLM2-135M-Instruct) with
a LoRA expert, 64 forced new tokens (EOS ignored), K real negatives per prompt. Trials are
interleaved (trial 1 of every configuration, then trial 2, ...) and each cell is a median, so a
change in machine load hits every row alike; the load average is recorded before and after each
batch size.

    python benchmarks/bench_speed.py                          # B = 1, 8, 32
    python benchmarks/bench_speed.py --before                 # also the engine of commit ee24753
    python benchmarks/bench_speed.py --quick                  # 1 trial, B = 1, 4
    python benchmarks/bench_speed.py --device cuda --dtype bfloat16 --batch 32   # on a GPU

Columns: tok/s = generated tokens per second (all prompts); ratio = time per generated token
relative to plain sampling at the same batch size (prefill included); decode = the same ratio for
the decode steps alone, T(64 tokens) - T(1 token); first token = T(1 token), mostly prefill; peak
RSS = process high-water mark over that configuration's runs (reset before each run via
/proc/self/clear_refs; weights and everything else resident count too); on CUDA also the peak of
allocated GPU memory. The authors' loop runs one prompt at a time, so at B > 1 it is B times its
B=1 time (estimated, not run).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import LogitsProcessor, LogitsProcessorList  # noqa: E402

from steer_plugins import SteerConfig, SteerEngine  # noqa: E402
from steer_plugins.core import kernels  # noqa: E402
from steer_plugins.core.sources import load_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMPT = (
    "### Instruction: Generate a scientific hypothesis about astronomy in the style of an Arxiv paper.\n"
    " ### Hypothesis:"
)
GAMMA, ETA, K = 0.2, 0.6, 10
BEFORE_COMMIT = "ee24753"


def load_negatives() -> list[str]:
    for path in (
        ROOT.parent / "shared/data/astro_hypotheses.jsonl",
        ROOT / "steer_plugins/assets/seed_hypotheses.jsonl",
    ):
        if path.is_file():
            return [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]
    sys.exit("no negatives found: need ../shared/data/astro_hypotheses.jsonl or the shipped seed set")


def make_expert(device: str = "cpu", dtype: torch.dtype | None = None):
    base, tok = load_model("smollm2-135m-instruct")
    adapter = ROOT / "steer_plugins/assets/adapters/hypotheses-lora"
    if (adapter / "adapter_config.json").is_file():
        from peft import PeftModel

        expert, kind = PeftModel.from_pretrained(base, str(adapter)).eval(), "shipped adapter"
    else:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(0)
        cfg = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        expert, kind = get_peft_model(base, cfg).eval(), "random LoRA r=8"
    return expert.to(device=device, dtype=dtype), tok, kind


def load_before_engine():
    """The `steer_plugins` package of commit ee24753, importable as `steer_plugins_before`."""
    dest = Path("/tmp/steer_before")
    pkg = dest / "steer_plugins_before"
    if not pkg.is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", BEFORE_COMMIT, "steer_plugins"],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        (dest / "steer_plugins").rename(pkg)  # the package imports itself relatively only
    sys.path.insert(0, str(dest))
    return importlib.import_module("steer_plugins_before")


def peak_rss_reset() -> None:
    with contextlib.suppress(OSError):  # Linux only: resets the VmHWM high-water mark
        Path("/proc/self/clear_refs").write_text("5")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def loadavg() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "n/a"


class AuthorsLoop(LogitsProcessor):
    """A faithful copy of the authors' per-token work: besides generate()'s own cached forward, the
    expert and the base re-run the full sequence without a cache, and the expert runs the negative
    context plus the generated tokens (4 forward calls per token, batch 1)."""

    def __init__(self, expert, neg_ids: list[int], prompt_len: int) -> None:
        self.expert, self.neg_ids, self.prompt_len = expert, neg_ids, prompt_len

    @torch.inference_mode()
    def __call__(self, input_ids, scores):
        full = input_ids
        gen = input_ids[:, self.prompt_len :]
        ft = self.expert(input_ids=full).logits[:, -1].float().log_softmax(-1)
        with self.expert.disable_adapter():
            b = self.expert(input_ids=full).logits[:, -1].float().log_softmax(-1)
        neg_in = torch.cat([torch.tensor([self.neg_ids], device=gen.device), gen], dim=1)
        n = self.expert(input_ids=neg_in).logits[:, -1].float().log_softmax(-1)
        return (1 + GAMMA) * ft - GAMMA * b - ETA * n


def workloads(
    expert, tok, engines: dict, bsz: int, negs: list[list[str]]
) -> dict[str, Callable[[int], None]]:
    """name -> fn(new_tokens) for one batch size."""
    dev = next(expert.parameters()).device
    prompts = [PROMPT] * bsz
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True).to(dev)
    neg_texts = [" ".join(n) for n in negs]
    neg_enc = tok(neg_texts, return_tensors="pt", padding=True).to(dev)
    common = {"do_sample": True, "top_k": 10, "pad_token_id": tok.pad_token_id}

    def plain(n: int) -> None:
        expert.generate(**enc, max_new_tokens=n, min_new_tokens=n, **common)

    def plain_onednn(n: int) -> None:
        with kernels.enabled(True):
            expert.generate(**enc, max_new_tokens=n, min_new_tokens=n, **common)

    def hf_cfg(n: int) -> None:
        expert.generate(
            **enc,
            max_new_tokens=n,
            min_new_tokens=n,
            guidance_scale=1 + ETA,
            negative_prompt_ids=neg_enc.input_ids,
            negative_prompt_attention_mask=neg_enc.attention_mask,
            **common,
        )

    def authors(n: int) -> None:
        for i in range(bsz):  # the authors ran batch size 1
            ids = enc.input_ids[i : i + 1][:, enc.attention_mask[i].bool()]
            proc = AuthorsLoop(expert, tok(neg_texts[i]).input_ids, ids.shape[1])
            expert.generate(
                ids,
                max_new_tokens=n,
                min_new_tokens=n,
                logits_processor=LogitsProcessorList([proc]),
                **common,
            )

    out: dict[str, Callable[[int], None]] = {
        "plain generate() (expert, top-k 10)": plain,
        "plain generate(), oneDNN linear (the engine's kernels)": plain_onednn,
        "transformers CFG (2 branches)": hf_cfg,
        "authors' loop (no cache, B=1 loop)": authors,
    }
    for name, engine in engines.items():
        out[name] = lambda n, engine=engine: engine.generate(
            prompts, negatives=negs, max_new_tokens=n, ignore_eos=True, seed=1
        )
    return out


def run_batch(fns: dict[str, Callable[[int], None]], args, authors_b1, bsz: int) -> list[dict]:
    """Interleaved trials of every configuration; returns one row per configuration."""
    times: dict[str, dict[int, list[float]]] = {name: {args.tokens: [], 1: []} for name in fns}
    rss: dict[str, float] = dict.fromkeys(fns, 0.0)
    gpu: dict[str, float] = dict.fromkeys(fns, 0.0)
    load_before = loadavg()
    for trial in range(args.trials):
        for name, fn in fns.items():
            if "authors" in name and (bsz > 1 or trial >= args.authors_trials):
                continue
            for n in (args.tokens, 1):
                peak_rss_reset()
                t0 = time.perf_counter()
                fn(n)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                times[name][n].append(time.perf_counter() - t0)
                rss[name] = max(rss[name], peak_rss_mb())
                if torch.cuda.is_available():
                    gpu[name] = max(gpu[name], torch.cuda.max_memory_allocated() / 2**20)
        print(f"  B={bsz} trial {trial + 1}/{args.trials} done (load {loadavg()})", flush=True)
    load = f"{load_before} -> {loadavg()}"
    rows = []
    base = None
    for name in fns:
        if "authors" in name and bsz > 1:
            if authors_b1 is None:
                continue
            t_full, t_one = bsz * authors_b1[0], bsz * authors_b1[1]
            name += " [B x the B=1 time]"
        else:
            t_full, t_one = statistics.median(times[name][args.tokens]), statistics.median(times[name][1])
        base = base or (t_full, t_one, rss[name])
        row = {
            "batch": bsz,
            "config": name,
            "tok_s": bsz * args.tokens / t_full,
            "ratio": t_full / base[0],
            "decode_ratio": (t_full - t_one) / (base[0] - base[1]),
            "time_s": t_full,
            "first_token_s": t_one,
            "peak_rss_mb": rss.get(name.split(" [")[0], 0.0) or float("nan"),
            "trials": len(times.get(name, {}).get(args.tokens, [])),
            "load": load,
        }
        row["rss_vs_plain"] = row["peak_rss_mb"] / base[2]
        if torch.cuda.is_available():
            row["peak_gpu_mb"] = gpu.get(name.split(" [")[0], float("nan"))
        rows.append(row)
        print(
            f"B={bsz} {name:48s} {row['tok_s']:7.1f} tok/s  ratio {row['ratio']:6.2f}  "
            f"decode {row['decode_ratio']:6.2f}  first-token {t_one:6.2f}s  RSS {row['peak_rss_mb']:6.0f} MB",
            flush=True,
        )
    return rows


def print_table(rows: list[dict], args) -> None:
    gpu = any("peak_gpu_mb" in r for r in rows)
    head = "| batch | configuration | tok/s | ratio (total) | ratio (decode) | first token s | peak RSS MB | RSS / plain |"
    print("\n" + head + (" peak GPU MB |" if gpu else ""))
    print("|---" * (8 + gpu) + "|")
    for r in rows:
        line = (
            f"| {r['batch']} | {r['config']} | {r['tok_s']:.1f} | {r['ratio']:.2f} | {r['decode_ratio']:.2f} "
            f"| {r['first_token_s']:.2f} | {r['peak_rss_mb']:.0f} | {r['rss_vs_plain']:.2f} |"
        )
        print(line + (f" {r.get('peak_gpu_mb', float('nan')):.0f} |" if gpu else ""))
    print(f"\nK={K} negatives per prompt, {args.tokens} forced new tokens, median of interleaved trials;")
    for b in dict.fromkeys(r["batch"] for r in rows):
        print(f"  B={b}: load average (1/5/15 min) {next(r['load'] for r in rows if r['batch'] == b)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--authors-trials", type=int, default=1, help="trials of the (slow) authors' loop at B=1")
    ap.add_argument("--before", action="store_true", help=f"also run the engine of commit {BEFORE_COMMIT}")
    ap.add_argument(
        "--bf16-negatives", action="store_true", help="also run the engine with bf16 negative prefill"
    )
    ap.add_argument(
        "--bf16-guidance-kv",
        action="store_true",
        help="also run the engine with the base and negative rows' KV cache in bf16 (opt-in)",
    )
    ap.add_argument(
        "--known-words-off",
        action="store_true",
        help="also run the engine without the known-words guard (what the guard's Python check costs)",
    )
    ap.add_argument(
        "--skip", nargs="*", default=[], help="skip configurations whose name contains these words"
    )
    ap.add_argument(
        "--kernel-baselines",
        action="store_true",
        help="also run plain generate() with the engine's oneDNN linear layers, and the engine with "
        "PyTorch's default kernels (fast_linear=False)",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="model dtype, e.g. bfloat16 (default: as loaded, fp32)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.trials, args.batch = 1, [1, 4]
    args.skip = list(args.skip or []) + ([] if args.kernel_baselines else ["oneDNN linear"])
    dtype = getattr(torch, args.dtype) if args.dtype else None
    torch.manual_seed(0)
    negatives = load_negatives()
    expert, tok, expert_kind = make_expert(args.device, dtype)
    cfg = {"gamma": GAMMA, "eta": ETA, "num_negatives": K}
    engines = {"STEER engine (this commit)": SteerEngine(expert, tokenizer=tok, config=SteerConfig(**cfg))}
    if args.bf16_negatives:
        fast = SteerEngine(expert, tokenizer=tok, config=SteerConfig(**cfg))
        fast.models.negative_prefill_dtype = torch.bfloat16
        engines["STEER engine, bf16 negative prefill (opt-in)"] = fast
    if args.known_words_off:
        engines["STEER engine, known_words off"] = SteerEngine(
            expert, tokenizer=tok, config=SteerConfig(**cfg, known_words=False)
        )
    if args.kernel_baselines:
        engines["STEER engine, PyTorch's default kernels (fast_linear=False)"] = SteerEngine(
            expert, tokenizer=tok, config=SteerConfig(**cfg), fast_linear=False
        )
    if args.bf16_guidance_kv:
        engines["STEER engine, bf16 guidance KV (opt-in)"] = SteerEngine(
            expert, tokenizer=tok, config=SteerConfig(**cfg), guidance_kv_dtype=torch.bfloat16
        )
    if args.before:
        old = load_before_engine()
        engines[f"STEER engine before ({BEFORE_COMMIT})"] = old.SteerEngine(
            expert, tokenizer=tok, config=old.SteerConfig(**cfg)
        )
    print(
        f"expert: {expert_kind} on {args.device} ({next(expert.parameters()).dtype}); torch threads: "
        f"{torch.get_num_threads()}; load average {loadavg()}; engine fast_linear: oneDNN "
        f"{engines['STEER engine (this commit)'].models.fast_linear}, packed weights "
        f"{engines['STEER engine (this commit)'].models.packed_linear}",
        flush=True,
    )
    rng = random.Random(0)
    rows: list[dict] = []
    authors_b1 = None
    warm = workloads(expert, tok, engines, 1, [rng.sample(negatives, K)])
    for name, fn in warm.items():  # first calls pay one-time costs (lazy imports, allocator growth)
        if not any(w in name for w in args.skip) and "authors" not in name:
            fn(2)
    for bsz in args.batch:
        negs = [rng.sample(negatives, K) for _ in range(bsz)]
        fns = workloads(expert, tok, engines, bsz, negs)
        fns = {k: v for k, v in fns.items() if not any(w in k for w in args.skip)}
        batch_rows = run_batch(fns, args, authors_b1, bsz)
        rows += batch_rows
        if bsz == 1:
            authors = [r for r in batch_rows if r["config"].startswith("authors")]
            authors_b1 = (authors[0]["time_s"], authors[0]["first_token_s"]) if authors else None
    print_table(rows, args)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
