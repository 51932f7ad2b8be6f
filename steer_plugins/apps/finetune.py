"""Train a LoRA expert on real examples: the authors' recipe (QLoRA r=64, α=16) scaled down to a CPU.

The STEER expert is the base model fine-tuned on the target domain. `finetune_lora` trains a PEFT
LoRA adapter with the plain causal-LM loss on each example (`prompt + text + EOS`, loss on the text
and EOS only) in a small torch loop, saves it with `save_pretrained` (safetensors) and writes the
recipe file next to it (`steer_plugins.apps.recipe`): how it was made (base, hyper-parameters, data
hash, versions, loss curve) and, when `eval_texts` are given, the held-out perplexity of base vs adapter.

Example (tiny in-code model, a few seconds):
    >>> from steer_plugins.testing import TINY_CORPUS, tiny_model, tiny_tokenizer
    >>> tok = tiny_tokenizer()
    >>> path = finetune_lora((tiny_model("llama", tok), tok), list(TINY_CORPUS), "/tmp/tiny-lora",
    ...                      steps=5, batch_size=4, progress=False)
    >>> (path / "adapter_model.safetensors").exists()
    True

On the embedded default (SmolLM2-135M-Instruct), `finetune_lora(DEFAULT_MODEL, texts, out_dir,
steps=60)` runs in a few CPU minutes.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.sources import DEFAULT_MODEL, embedded_model_path
from .causal_lm import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_LENGTH,
    collate,
    encode_examples,
    pad_token_id,
    perplexity,
)
from .recipe import RECIPE_FILE, RECIPE_FORMAT, write_recipe

__all__ = [
    "DEFAULT_MODEL_ALIAS",
    "RECIPE_FILENAME",
    "finetune_lora",
    "load_model_spec",
    "perplexity",
]

DEFAULT_MODEL_ALIAS = DEFAULT_MODEL
"""Alias of the embedded default base (`steer_plugins.core.sources.DEFAULT_MODEL`): SmolLM2-135M-Instruct."""
RECIPE_FILENAME = RECIPE_FILE
"""The recipe file written next to the adapter (`steer_plugins.apps.recipe.RECIPE_FILE`)."""

DEFAULT_R = 8
DEFAULT_ALPHA = 16
DEFAULT_DROPOUT = 0.05
DEFAULT_STEPS = 60
DEFAULT_LR = 1e-3
DEFAULT_WARMUP_FRACTION = 0.1
# Attention projections of the common architectures (Llama/Mistral/Qwen/SmolLM, GPT-2, Falcon, GPT-NeoX).
_DEFAULT_TARGETS: dict[str, list[str]] = {
    "gpt2": ["c_attn", "c_proj"],
    "falcon": ["query_key_value", "dense"],
    "gpt_neox": ["query_key_value", "dense"],
}
_LLAMA_LIKE_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


@dataclass(frozen=True)
class _Training:
    """The optimisation settings of one `finetune_lora` run (validated by `_check_arguments`)."""

    steps: int
    lr: float
    batch_size: int
    max_length: int
    seed: int
    prompt: str

    @property
    def warmup(self) -> int:
        return max(1, round(DEFAULT_WARMUP_FRACTION * self.steps))


# ------------------------------------------------------------------------------- the base model


def load_model_spec(spec: str) -> tuple[Any, Any, str]:
    """Load `(model, tokenizer, base_name)` from a spec string via `steer_plugins.core.sources.load_model`.

    Accepts what the engine accepts: the alias `DEFAULT_MODEL` (the embedded SmolLM2), a `.gguf`
    path, a folder or an HF id. `base_name` is what the adapter config records as
    `base_model_name_or_path`: the alias as given, else the absolute path of a local source (so the
    adapter loads from any folder). A PEFT adapter folder is refused: train on its base, or merge it.

    Args:
        spec: the base model's id, path or alias.

    Returns:
        `(model, tokenizer, base_name)`, the model in float32.

    Raises:
        ValueError: `spec` is a PEFT adapter folder, or has no tokenizer.
    """
    from peft import PeftModel

    from ..core.sources import load_model

    model, tokenizer = load_model(spec, dtype=torch.float32)
    if isinstance(model, PeftModel):
        raise ValueError(
            f"`base` {spec!r} is a PEFT adapter folder: fine-tune its base model instead "
            "(or merge it: model.merge_and_unload().save_pretrained(dir) and pass that folder)"
        )
    if tokenizer is None:
        raise ValueError(f"`base` {spec!r} has no tokenizer: pass `(model, tokenizer)` instead")
    if spec == DEFAULT_MODEL:
        name = DEFAULT_MODEL
    elif Path(spec).exists():
        name = str(Path(spec).resolve())
    else:
        name = spec
    return model, tokenizer, name


def _resolve_base(base: Any, tokenizer: Any) -> tuple[torch.nn.Module, Any, str | None, bool]:
    """(model, tokenizer, base_name, loaded_here) from a spec string, `(model, tokenizer)` or a model."""
    if isinstance(base, (str, os.PathLike)):
        model, tok, name = load_model_spec(os.fspath(base))
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
        if Path(name).resolve() == embedded_model_path().parent.resolve():
            return DEFAULT_MODEL
    return name


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


# --------------------------------------------------------------------------------- training


def _lr_at(step: int, steps: int, warmup: int) -> float:
    """Linear warmup to 1, then linear decay to 0.1 (multiplier of the base learning rate)."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.1, 1.0 - 0.9 * (step - warmup) / max(1, steps - warmup))


def _next_batch(
    order: list[int], size: int, batch_size: int, rng: random.Random
) -> tuple[list[int], list[int]]:
    """(indices of the next batch, the remaining order); reshuffles a new epoch when the order runs low."""
    if len(order) < batch_size:
        epoch = list(range(size))
        rng.shuffle(epoch)
        order = order + epoch * max(1, math.ceil(batch_size / len(epoch)))
    return order[:batch_size], order[batch_size:]


def _train(peft_model: torch.nn.Module, tokenizer: Any, texts: list[str], t: _Training, *, progress: bool):
    """Run `t.steps` AdamW steps on the LoRA parameters; returns (losses per step, seconds)."""
    from tqdm.auto import tqdm

    encoded = encode_examples(tokenizer, texts, t.prompt, t.max_length)
    pad = pad_token_id(tokenizer)
    rng = random.Random(t.seed)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=0.0)
    order: list[int] = []
    losses: list[float] = []
    started = time.perf_counter()
    peft_model.train()
    bar = tqdm(range(t.steps), desc="finetune", unit="step", disable=not progress)
    for step in bar:
        idx, order = _next_batch(order, len(encoded), t.batch_size, rng)
        batch = collate([encoded[i] for i in idx], pad)
        for group in optimizer.param_groups:
            group["lr"] = t.lr * _lr_at(step, t.steps, t.warmup)
        loss = peft_model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    seconds = time.perf_counter() - started
    peft_model.eval()
    return losses, seconds


def _heldout(peft_model: Any, tokenizer: Any, eval_texts: Sequence[str], t: _Training) -> dict[str, Any]:
    """Perplexity of `eval_texts` under the base (adapter off) and the adapter, for the recipe."""
    with peft_model.disable_adapter():
        ppl_base = perplexity(peft_model, tokenizer, eval_texts, prompt=t.prompt, max_length=t.max_length)
    ppl_adapter = perplexity(peft_model, tokenizer, eval_texts, prompt=t.prompt, max_length=t.max_length)
    return {
        "num_texts": len(eval_texts),
        "perplexity_base": round(ppl_base, 4),
        "perplexity_adapter": round(ppl_adapter, 4),
    }


@contextlib.contextmanager
def _lora_attached(model: torch.nn.Module, config: Any, *, restore: bool) -> Iterator[Any]:
    """`get_peft_model(model, config)`; on exit, if `restore`, hand the caller's model back unchanged."""
    from peft import get_peft_model

    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    was_training = model.training
    peft_model = get_peft_model(model, config)
    try:
        yield peft_model
    finally:
        if restore:
            with contextlib.suppress(Exception):
                peft_model.unload()
            for n, p in model.named_parameters():
                p.requires_grad_(requires_grad.get(n, p.requires_grad))
            model.train(was_training)


# ------------------------------------------------------------------------------ saving, recipe


def _versions() -> dict[str, str]:
    import peft
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}


def _recipe(
    base_name: str | None,
    lora: dict[str, Any],
    t: _Training,
    texts: list[str],
    losses: list[float],
    seconds: float,
    heldout: dict[str, Any] | None,
) -> dict[str, Any]:
    """The recipe record: base, LoRA and training settings, data hash, loss curve summary, versions."""
    return {
        "format": RECIPE_FORMAT,
        "base": base_name,
        "method": "LoRA (peft), causal-LM loss on prompt + text + EOS, loss on text + EOS only",
        "lora": lora,
        "training": {
            "steps": t.steps,
            "lr": t.lr,
            "schedule": f"linear warmup {t.warmup} steps, linear decay to 10%",
            "optimizer": "AdamW (weight_decay=0), grad clip 1.0",
            "batch_size": t.batch_size,
            "max_length": t.max_length,
            "seed": t.seed,
            "prompt": t.prompt,
            "device": "cpu",
            "seconds": round(seconds, 1),
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
        "heldout": heldout,
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _save(peft_model: Any, out: Path, base_name: str | None, recipe: dict[str, Any]) -> None:
    """Adapter weights and config (recording `base_name` as the base), then the recipe and model card."""
    out.mkdir(parents=True, exist_ok=True)
    peft_model.peft_config["default"].base_model_name_or_path = base_name
    peft_model.save_pretrained(out, safe_serialization=True)
    write_recipe(out, recipe)


# -------------------------------------------------------------------------------- finetune_lora


def _check_arguments(texts: Sequence[str] | os.PathLike[str], t: _Training, r: int) -> list[str]:
    """The examples as a non-empty list (read from a file if a path); positive sizes and rate."""
    if isinstance(texts, str):
        raise TypeError("`texts` is a str: pass a list of examples, or a `pathlib.Path` to a data file")
    if isinstance(texts, os.PathLike):
        from .data_io import read_texts

        texts = read_texts(texts)
    texts = list(texts)
    if not texts:
        raise ValueError("`texts` is empty: pass at least one real example to fine-tune on")
    sizes = (("r", r), ("steps", t.steps), ("batch_size", t.batch_size), ("max_length", t.max_length))
    for name, value in sizes:
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
    if not t.lr > 0:
        raise ValueError(f"`lr` must be > 0, got {t.lr!r}")
    return texts


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
        base: the base model: a spec string (`DEFAULT_MODEL` for the embedded GGUF, a `.gguf` path,
            a local folder or a Hugging Face id), a `(model, tokenizer)` tuple, or a loaded model
            with `tokenizer=`. A loaded model is restored (LoRA layers removed) after.
        texts: the real examples, or a path to a JSONL (`text` field) / plain text file.
        out_dir: folder for `adapter_model.safetensors`, `adapter_config.json` and the recipe file.
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
        extra_recipe: extra JSON-serialisable entries merged into the recipe file.

    Returns:
        `Path(out_dir)`, loadable with `peft.PeftModel.from_pretrained(base_model, out_dir)`.
    """
    from peft import LoraConfig

    t = _Training(steps, lr, batch_size, max_length, seed, prompt)
    texts = _check_arguments(texts, t, r)
    model, tok, resolved_name, loaded_here = _resolve_base(base, tokenizer)
    base_name = base_name or resolved_name
    targets = list(target_modules) if target_modules is not None else _default_targets(model)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type="CAUSAL_LM"
    )
    out = Path(out_dir)
    with _lora_attached(model, config, restore=not loaded_here) as peft_model:
        losses, seconds = _train(peft_model, tok, texts, t, progress=progress)
        heldout = _heldout(peft_model, tok, eval_texts, t) if eval_texts else None
        lora = {"r": r, "alpha": alpha, "dropout": dropout, "target_modules": targets}
        recipe = _recipe(base_name, lora, t, texts, losses, seconds, heldout)
        recipe.update(extra_recipe or {})
        _save(peft_model, out, base_name, recipe)
    return out
