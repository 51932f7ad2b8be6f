"""Speed of STEER decoding against plain sampling, transformers CFG and the authors' loop.

All configurations run in this one process on the real offline model (SmolLM2-135M-Instruct)
with a LoRA expert, 64 forced new tokens (EOS ignored), K real negatives per prompt.

    python benchmarks/bench_speed.py                 # full table (about 10-15 min on 2 cores)
    python benchmarks/bench_speed.py --quick         # fewer trials, smaller batch

Columns: tok/s = generated tokens per second (all prompts); ratio = time per generated token
relative to plain sampling at the same batch size (prefill included); decode = the same ratio
for the decode steps alone (T(64 tokens) - T(1 token)); peak RSS = process high-water mark
during that configuration (reset between rows via /proc/self/clear_refs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from steer_plugins.sources import load_model  # noqa: E402
from transformers import LogitsProcessor, LogitsProcessorList  # noqa: E402

from steer_plugins import SteerConfig, SteerEngine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMPT = (
    "### Instruction: Generate a scientific hypothesis about astronomy in the style of an Arxiv paper.\n"
    " ### Hypothesis:"
)
GAMMA, ETA, K = 0.2, 0.6, 10


def load_negatives() -> list[str]:
    for path in (
        ROOT.parent / "shared/data/astro_hypotheses.jsonl",
        ROOT / "steer_plugins/assets/seed_hypotheses.jsonl",
    ):
        if path.is_file():
            return [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]
    sys.exit("no negatives found: need ../shared/data/astro_hypotheses.jsonl or the shipped seed set")


def make_expert():
    base, tok = load_model("smollm2-135m-instruct")
    adapter = ROOT / "steer_plugins/assets/adapters/hypotheses-lora"
    if (adapter / "adapter_config.json").is_file():
        from peft import PeftModel

        return PeftModel.from_pretrained(base, str(adapter)).eval(), tok, "shipped adapter"
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return get_peft_model(base, cfg).eval(), tok, "random LoRA r=8"


def peak_rss_reset() -> None:
    with contextlib.suppress(OSError):  # Linux only: resets the VmHWM high-water mark
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def unique_param_mb(*models: torch.nn.Module) -> float:
    seen: dict[int, int] = {}
    for m in models:
        for p in m.parameters():
            seen[p.data_ptr()] = p.numel() * p.element_size()
    return sum(seen.values()) / 2**20


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
        neg_in = torch.cat([torch.tensor([self.neg_ids]), gen], dim=1)
        n = self.expert(input_ids=neg_in).logits[:, -1].float().log_softmax(-1)
        return (1 + GAMMA) * ft - GAMMA * b - ETA * n


def timed(fn: Callable[[], None], trials: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(trials):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--trials", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.trials, args.batch = 1, [1, 4]
    torch.manual_seed(0)
    negatives = load_negatives()
    expert, tok, expert_kind = make_expert()
    engine = SteerEngine(expert, tokenizer=tok, config=SteerConfig(gamma=GAMMA, eta=ETA, num_negatives=K))
    rng = random.Random(0)
    rows: list[dict] = []
    authors_b1: tuple[float, float] | None = None
    print(
        f"expert: {expert_kind}; weights held: {unique_param_mb(engine.models.expert):.0f} MB "
        f"(base shares them: {engine.models.shared_weights}); torch threads: {torch.get_num_threads()}"
    )

    for bsz in args.batch:
        prompts = [PROMPT] * bsz
        negs = [rng.sample(negatives, K) for _ in range(bsz)]
        enc = tok(prompts, return_tensors="pt", padding=True)
        neg_texts = [" ".join(n) for n in negs]
        tok.padding_side = "left"
        neg_enc = tok(neg_texts, return_tensors="pt", padding=True)
        n_neg_tokens = [len(tok(t).input_ids) for t in neg_texts]

        def plain(n: int, enc=enc) -> None:
            expert.generate(
                **enc,
                do_sample=True,
                top_k=10,
                max_new_tokens=n,
                min_new_tokens=n,
                pad_token_id=tok.pad_token_id,
            )

        def hf_cfg(n: int, enc=enc, neg_enc=neg_enc) -> None:
            expert.generate(
                **enc,
                do_sample=True,
                top_k=10,
                max_new_tokens=n,
                min_new_tokens=n,
                guidance_scale=1 + ETA,
                negative_prompt_ids=neg_enc.input_ids,
                negative_prompt_attention_mask=neg_enc.attention_mask,
                pad_token_id=tok.pad_token_id,
            )

        def authors(n: int, enc=enc, negs=neg_texts) -> None:
            for i in range(enc.input_ids.shape[0]):  # the authors ran batch size 1
                ids = enc.input_ids[i : i + 1]
                proc = AuthorsLoop(expert, tok(negs[i]).input_ids, ids.shape[1])
                expert.generate(
                    ids,
                    do_sample=True,
                    top_k=10,
                    max_new_tokens=n,
                    min_new_tokens=n,
                    logits_processor=LogitsProcessorList([proc]),
                    pad_token_id=tok.pad_token_id,
                )

        def steer(n: int, mode: str, prompts=prompts, negs=negs) -> None:
            engine.peft_mode = mode
            engine.generate(prompts, negatives=negs, max_new_tokens=n, ignore_eos=True, seed=1)

        configs: list[tuple[str, Callable[[int], None]]] = [
            ("plain generate() (expert, top-k 10)", plain),
            ("transformers CFG (2 branches)", hf_cfg),
            ("authors' loop (no cache, B=1 loop)", authors),
            ("STEER engine, mixed LoRA batch", lambda n: steer(n, "mixed")),
            ("STEER engine, two passes", lambda n: steer(n, "two_pass")),
        ]
        base_t = base_t1 = None
        for name, fn in configs:
            peak_rss_reset()
            if "authors" in name and bsz > 1 and authors_b1 is not None:
                # The authors' loop runs one prompt at a time: B prompts cost B times one prompt.
                t_full, t_one = bsz * authors_b1[0], bsz * authors_b1[1]
                name += " [B x the B=1 time]"
            else:
                t_full = timed(lambda fn=fn: fn(args.tokens), args.trials)
                t_one = timed(lambda fn=fn: fn(1), args.trials)
                if "authors" in name and bsz == 1:
                    authors_b1 = (t_full, t_one)
            rss = peak_rss_mb()
            if base_t is None:
                base_t, base_t1 = t_full, t_one
            row = {
                "batch": bsz,
                "config": name,
                "tok_s": bsz * args.tokens / t_full,
                "ratio": t_full / base_t,
                "decode_ratio": (t_full - t_one) / (base_t - base_t1),
                "prefill_s": t_one,
                "peak_rss_mb": rss,
                "neg_tokens": f"{min(n_neg_tokens)}-{max(n_neg_tokens)}",
            }
            rows.append(row)
            print(
                f"B={bsz} {name:40s} {row['tok_s']:7.1f} tok/s  ratio {row['ratio']:5.2f}  "
                f"decode {row['decode_ratio']:5.2f}  first-token {t_one:5.2f}s  RSS {rss:6.0f} MB",
                flush=True,
            )

    print("\n| batch | configuration | tok/s | ratio (total) | ratio (decode) | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['batch']} | {r['config']} | {r['tok_s']:.1f} | {r['ratio']:.2f} | {r['decode_ratio']:.2f} "
            f"| {r['peak_rss_mb']:.0f} |"
        )
    print(
        f"\nnegative contexts: K={K}, {rows[0]['neg_tokens']} tokens (B=1); {args.tokens} forced new tokens; "
        f"median of {args.trials} trial(s) after a warm-up"
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
