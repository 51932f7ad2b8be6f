"""`steer finetune`: train a LoRA expert on real examples; `steer generate --expert DIR` loads it."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

from ...core.sources import DEFAULT_MODEL
from ..causal_lm import DEFAULT_BATCH_SIZE
from ..finetune import DEFAULT_ALPHA, DEFAULT_LR, DEFAULT_R, DEFAULT_STEPS
from ..recipe import RECIPE_FILE
from ._common import MODEL_KINDS, CLIError, add_subcommand, log, read_examples, set_threads

__all__ = ["HELP", "EPILOG", "DEFAULT_MAX_LENGTH", "DEFAULT_HOLDOUT", "add_parser", "run"]

HELP = "Train a LoRA expert on real examples; `generate --expert DIR` loads it."
EPILOG = f"""example:
  steer finetune real.jsonl --out my-lora --steps 60 \\
      --instruction "Write a research hypothesis in astronomy, phrased as a question."
  steer generate --expert my-lora --pool real.jsonl --n 100 --out synth.jsonl
The adapter folder holds adapter_model.safetensors, adapter_config.json and {RECIPE_FILE} (how it was
made, including the exact prompt, which `generate` reuses).
"""
DEFAULT_MAX_LENGTH = 64
"""Token cap per example on the command line (one-sentence examples; the library default is longer)."""
DEFAULT_HOLDOUT = 0.1
"""Fraction of the examples held out for the base-vs-adapter perplexity."""


def add_parser(subs: Any) -> argparse.ArgumentParser:
    """Register `steer finetune` on the subparsers `subs`."""
    f = add_subcommand(subs, "finetune", HELP, EPILOG)
    f.add_argument("data", help="real examples: JSONL (`text` field) or plain text, one per line")
    f.add_argument("--out", required=True, help="adapter folder to write (required)")
    f.add_argument(
        "--base", default=DEFAULT_MODEL, help=f"base model (default: {DEFAULT_MODEL}, the embedded SmolLM2)"
    )
    f.add_argument(
        "--instruction", help="instruction the expert answers (chat-wrapped; recorded as its prompt)"
    )
    f.add_argument("--prompt", help="exact prompt prefix instead of --instruction")
    for flag, kind, default, text in (
        ("--steps", int, DEFAULT_STEPS, "optimizer steps (one batch each)"),
        ("--lr", float, DEFAULT_LR, "peak AdamW learning rate (linear warm-up, then decay to a tenth)"),
        ("--r", int, DEFAULT_R, "LoRA rank (the authors: 64 on Falcon-7B)"),
        ("--alpha", int, DEFAULT_ALPHA, "LoRA alpha"),
        ("--batch-size", int, DEFAULT_BATCH_SIZE, "examples per optimizer step"),
        ("--max-length", int, DEFAULT_MAX_LENGTH, "tokens per example at most (prompt included)"),
        ("--holdout", float, DEFAULT_HOLDOUT, "fraction held out for perplexity (0 = none)"),
        ("--seed", int, 0, "seed of the held-out split, LoRA init and batches"),
    ):
        f.add_argument(flag, type=kind, default=default, help=text)
    f.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.set_defaults(func=run)
    return f


def _split_holdout(texts: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, held-out): a seeded `fraction` of the examples (at least one) is held out."""
    if not fraction > 0:
        return texts, []
    if not 0 < fraction < 1:
        raise CLIError(f"`--holdout` must be in [0, 1), got {fraction}")
    idx = list(range(len(texts)))
    random.Random(seed).shuffle(idx)
    k = max(1, round(fraction * len(texts))) if len(texts) > 1 else 0
    return [texts[i] for i in sorted(idx[k:])], [texts[i] for i in idx[:k]]


def _training_prompt(args: argparse.Namespace, tokenizer: Any) -> str:
    """`--prompt` as given, or `--instruction` in the tokenizer's chat template."""
    if args.prompt and args.instruction:
        raise CLIError("give either --prompt or --instruction, not both")
    if not args.instruction:
        return args.prompt or ""
    if not getattr(tokenizer, "chat_template", None):
        return args.instruction
    messages = [{"role": "user", "content": args.instruction}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def run(args: argparse.Namespace) -> int:
    """Train the adapter into `--out`; prints its path, loss summary and held-out perplexities as JSON."""
    from ..finetune import finetune_lora, load_model_spec

    texts, eval_texts = _split_holdout(read_examples(args.data, "training data"), args.holdout, args.seed)
    set_threads(args.threads)
    base = args.base
    if not (base == DEFAULT_MODEL or Path(base).exists()):
        raise CLIError(f"base model not found: `{base}` ({MODEL_KINDS})")
    log(f"loading base {base}")
    model, tok, base_name = load_model_spec(base)
    prompt = _training_prompt(args, tok)
    log(f"training LoRA r={args.r} on {len(texts)} examples for {args.steps} steps -> {args.out}")
    out = finetune_lora(
        (model, tok),
        texts,
        args.out,
        r=args.r,
        alpha=args.alpha,
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        max_length=args.max_length,
        seed=args.seed,
        prompt=prompt,
        eval_texts=eval_texts or None,
        progress=not args.quiet,
        base_name=base_name,
        extra_recipe={"instruction": args.instruction, "command": "steer finetune " + " ".join(args.argv)},
    )
    recipe = json.loads((out / RECIPE_FILE).read_text())
    print(json.dumps({"adapter": str(out), "loss": recipe["loss"], "heldout": recipe["heldout"]}))
    return 0
