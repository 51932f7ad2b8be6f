"""Tiny, real transformers models built in code, for tests, examples and benchmarks.

Nothing here downloads anything: a byte-level BPE tokenizer is trained on a few strings with
`tokenizers`, then `LlamaForCausalLM` / `GPT2LMHeadModel` with hidden size 32 and 2 layers are
built from seeds. Two seeds give an "expert" and a "base" that share one vocabulary.

Example:
    >>> from steer_plugins.testing import tiny_tokenizer, tiny_model
    >>> tok = tiny_tokenizer()
    >>> expert, base = tiny_model("llama", tok, seed=1), tiny_model("llama", tok, seed=2)
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Literal

import torch

__all__ = ["TINY_CORPUS", "tiny_tokenizer", "tiny_model", "tiny_lora_expert", "tiny_pair", "save_tiny_pair"]

TINY_CORPUS: tuple[str, ...] = (
    "Does dark matter shape the rotation curves of dwarf galaxies?",
    "Could magnetic fields regulate star formation in molecular clouds?",
    "Is the Hubble tension a sign of new physics?",
    "Do fast radio bursts come from magnetars?",
    "What is the capital of France? Paris is the capital.",
    "The quick brown fox jumps over the lazy dog.",
    "Write a question about astronomy:",
    "A synthetic example about stars, planets, comets and galaxies.",
    "0123456789 ?!.,:;'\"()[]{}-+=/",
)


@functools.lru_cache(maxsize=4)
def _tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        show_progress=False,
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(list(TINY_CORPUS) * 4, trainer=trainer)
    return tok.to_str()


def tiny_tokenizer(vocab_size: int = 300, *, pad: bool = True, chat_template: bool = True):
    """A `PreTrainedTokenizerFast` with a byte-level BPE vocabulary trained on `TINY_CORPUS`.

    Args:
        vocab_size: target vocabulary size (the 256-byte alphabet plus merges and 3 specials).
        pad: give the tokenizer a pad token (`<pad>`); `False` builds one without, as some models ship.
        chat_template: attach a small ChatML-like template that renders system/user/assistant turns.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(vocab_size)),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>" if pad else None,
    )
    if chat_template:
        tok.chat_template = (
            "{% for m in messages %}"
            "{% if m['role'] not in ['system', 'user', 'assistant'] %}"
            "{{ raise_exception('Unsupported role: ' + m['role']) }}{% endif %}"
            "<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
            "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
        )
    return tok


def tiny_model(
    arch: Literal["llama", "gpt2"],
    tokenizer,
    *,
    seed: int = 0,
    hidden_size: int = 32,
    num_layers: int = 2,
    max_positions: int = 512,
) -> torch.nn.Module:
    """A randomly initialised causal LM (eval mode, fp32) over `tokenizer`'s vocabulary."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    vocab = len(tokenizer)
    common = dict(
        vocab_size=vocab,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if arch == "llama":
        cfg = LlamaConfig(
            hidden_size=hidden_size,
            intermediate_size=hidden_size * 2,
            num_hidden_layers=num_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=max_positions,
            tie_word_embeddings=False,
            **common,
        )
        model = LlamaForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = GPT2Config(
            n_embd=hidden_size, n_layer=num_layers, n_head=4, n_positions=max_positions, **common
        )
        model = GPT2LMHeadModel(cfg)
    else:
        raise ValueError(f"`arch` must be 'llama' or 'gpt2', got {arch!r}")
    # Sharper-than-init output layer so distributions are not near-uniform (makes tests discriminative).
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)
    return model.eval()


def tiny_lora_expert(base: torch.nn.Module, *, seed: int = 0, r: int = 4):
    """Wrap `base` in a PEFT LoRA adapter with non-zero random weights (so expert != base)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    targets = ["q_proj", "v_proj"] if base.config.model_type == "llama" else ["c_attn"]
    cfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, init_lora_weights=False)
    return get_peft_model(base, cfg).eval()


def tiny_pair(arch: Literal["llama", "gpt2"] = "llama"):
    """(expert, base, tokenizer): two seeds of one tiny architecture sharing a vocabulary."""
    tok = tiny_tokenizer()
    return tiny_model(arch, tok, seed=1), tiny_model(arch, tok, seed=2), tok


def save_tiny_pair(root: str | os.PathLike[str]) -> tuple[str, str]:
    """(expert_dir, base_dir): `tiny_pair("llama")` saved under `root` as safetensors folders with
    their tokenizer, so they load by path like real models."""
    expert, base, tok = tiny_pair("llama")
    dirs = []
    for name, model in (("expert", expert), ("base", base)):
        folder = Path(root) / name
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        dirs.append(str(folder))
    return dirs[0], dirs[1]
