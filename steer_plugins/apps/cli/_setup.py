"""From run settings to a loaded engine, its negative pool and its prompt (`generate`, `sweep`, `augment`).

`build_engine` checks a model folder before loading it, so a broken one is a one-line error: a
LoRA config without `base_model_name_or_path` or naming itself (or a loop of adapters) as its
base, an unreadable `adapter_config.json`, or a corrupt `.safetensors` header. Loading runs with
transformers' progress bars and FutureWarnings off (`quiet_loading`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..pipeline import DEFAULT_CHUNK_SIZE, HYPOTHESIS_INSTRUCTION
from ..recipe import read_recipe_prompt
from ._common import DEFAULT_EXPERT, DEFAULT_SEED_SET, MODEL_KINDS, CLIError, log, read_examples

__all__ = [
    "build_engine",
    "check_model_files",
    "pool_for",
    "quiet_loading",
    "read_prompts",
    "resolve_prompt",
    "wrap_instruction",
]

_MAX_HEADER = 100 << 20
"""A safetensors header larger than this is corrupt (real ones are kilobytes to a few MB)."""


def pool_for(settings: dict[str, Any]) -> list[str] | None:
    """The real examples seeding the negative pool: `pool`, else the seed set of the shipped expert."""
    if settings.get("pool"):
        return read_examples(settings["pool"], "pool")
    if (settings.get("expert") or DEFAULT_EXPERT) == DEFAULT_EXPERT:
        from ..data_io import read_texts

        return read_texts(DEFAULT_SEED_SET)
    return None


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Model loading without transformers' progress bars (GGUF conversion, weight loading) and
    FutureWarnings flooding the terminal; `[steer]` log lines say what is loading instead."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    gguf = _gguf_module()  # its conversion bar is a plain tqdm that the switch above misses
    gguf_tqdm = getattr(gguf, "tqdm", None)
    if gguf_tqdm is not None:
        gguf.tqdm = functools.partial(gguf_tqdm, disable=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        if gguf_tqdm is not None:
            gguf.tqdm = gguf_tqdm
        if was_enabled:
            hf_logging.enable_progress_bar()


def _gguf_module() -> Any:
    """transformers' GGUF loader module, or None where this transformers has none."""
    try:
        from transformers import modeling_gguf_pytorch_utils
    except ImportError:  # pragma: no cover - a transformers without GGUF support
        return None
    return modeling_gguf_pytorch_utils


def _check_safetensors(path: Path) -> None:
    """A `.safetensors` file must start with an 8-byte header length and a JSON header that fits."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        ok = 1 < n <= min(size - 8, _MAX_HEADER)
        if ok:
            try:
                ok = isinstance(json.loads(f.read(n)), dict)
            except (ValueError, UnicodeDecodeError):
                ok = False
    if not ok:
        raise CLIError(
            f"`{path}` is not a valid safetensors file (corrupt or truncated header): re-save the model"
        )


def _adapter_base(folder: Path) -> str:
    """The `base_model_name_or_path` of the LoRA adapter in `folder`."""
    cfg = folder / "adapter_config.json"
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CLIError(f"`{cfg}` is not valid JSON ({e}): re-save the adapter") from None
    base = data.get("base_model_name_or_path") if isinstance(data, dict) else None
    if not isinstance(base, str) or not base:
        raise CLIError(
            f"`{cfg}` has no `base_model_name_or_path`, so the adapter's base model is unknown: "
            "add it (the folder or id the adapter was trained on), or pass that model as --base"
        )
    return base


def check_model_files(spec: Any, role: str = "expert") -> None:
    """Check a model folder (and the chain of adapter bases it names) before loading it.

    Raises:
        CLIError: a missing path, a corrupt safetensors header, or an adapter config without a base
            or whose bases loop back to an adapter already seen.
    """
    if not isinstance(spec, (str, os.PathLike)):
        return
    seen: list[Path] = []
    text = str(spec)
    while True:
        path = Path(text).expanduser()
        if not path.exists():
            if os.sep in text or text.endswith((".gguf", ".json", ".jsonl", ".safetensors")):
                raise CLIError(f"{role} model not found: `{text}` ({MODEL_KINDS})")
            return  # an id: the loader says what it can do without a network
        if path.is_dir():
            for weights in sorted(path.glob("*.safetensors")):
                _check_safetensors(weights)
        if not (path / "adapter_config.json").is_file():
            return
        if path.resolve() in seen:
            chain = " -> ".join(str(p) for p in [*seen, path.resolve()])
            raise CLIError(
                f"the LoRA adapter `{seen[0]}` names itself as its base ({chain}): fix `base_model_name_or_path`"
            )
        seen.append(path.resolve())
        text = _adapter_base(path)


def _load_errors() -> tuple[type[BaseException], ...]:
    """What a broken model folder raises while loading (beyond what `check_model_files` catches);
    an `OSError` needs no translation (the loader's message names the model)."""
    from safetensors import SafetensorError

    return (KeyError, RecursionError, SafetensorError)


def read_prompts(path: str) -> list[str]:
    """The prompts in `path`, one per row: JSONL (`prompt` field, else `text`) or plain text lines.

    Raises:
        CLIError: no prompts, or a JSONL row with neither field as a string (its line named).
    """
    from ..data_io import read_jsonl, read_lines

    p = Path(path)
    if p.suffix.lower() in (".jsonl", ".ndjson"):
        prompts = []
        for i, row in enumerate(read_jsonl(p)):
            value = row.get("prompt", row.get("text"))
            if not isinstance(value, str) or not value.strip():
                raise CLIError(
                    f"{p}, row {i + 1}: expected a string `prompt` (or `text`) field, got keys {sorted(row)}"
                )
            prompts.append(value)
    else:
        read_examples(p, "prompts")  # existence, UTF-8 and emptiness, with their messages
        prompts = [line for _, line in read_lines(p) if line.strip()]
    if not prompts:
        raise CLIError(f"prompts file `{p}` has no prompts (it is empty or only blank lines)")
    return prompts


def build_engine(settings: dict[str, Any], config: Any, *, pool: list[str] | None) -> Any:
    """A `SteerEngine` over `settings["expert"]` (default: the shipped adapter) and `settings["base"]`.

    Raises:
        CLIError: a model is missing or broken (see `check_model_files`), or fails to load.
    """
    from ...core.engine import SteerEngine

    expert = settings.get("expert") or DEFAULT_EXPERT
    check_model_files(expert, "expert")
    check_model_files(settings.get("base"), "base")
    log(f"loading expert {expert}" + (f" over base {settings['base']}" if settings.get("base") else ""))
    try:
        with quiet_loading():
            return SteerEngine(
                expert,
                settings.get("base"),
                config=config,
                pool=pool,
                device=settings.get("device"),
                max_batch_size=int(settings.get("chunk_size") or DEFAULT_CHUNK_SIZE),
            )
    except _load_errors() as e:
        raise CLIError(f"could not load the model `{expert}`: {type(e).__name__}: {e}") from None


def wrap_instruction(engine: Any, instruction: str) -> str:
    """`instruction` in the tokenizer's chat template (as-is when the tokenizer has none)."""
    if getattr(engine.tokenizer, "chat_template", None):
        return engine.apply_chat_template([{"role": "user", "content": instruction}])
    return instruction


def resolve_prompt(engine: Any, settings: dict[str, Any]) -> str:
    """The expert's prompt: prompted-expert examples, `prompt`, `instruction`, the adapter's recorded
    training prompt, or the default instruction, in that order."""
    if settings.get("prompt") and settings.get("instruction"):
        raise CLIError("give either `prompt` (exact string) or `instruction` (chat-wrapped), not both")
    if settings.get("prompted_expert"):
        from ..prompted import DEFAULT_NUM_SHOTS, prompted_prompt

        examples = read_examples(settings["prompted_expert"], "prompted-expert examples")
        instruction = settings.get("instruction") or HYPOTHESIS_INSTRUCTION
        shots = int(settings.get("num_shots") or DEFAULT_NUM_SHOTS)
        return prompted_prompt(engine.tokenizer, instruction, examples, num_shots=shots)
    if settings.get("prompt"):
        return str(settings["prompt"])
    if settings.get("instruction"):
        return wrap_instruction(engine, settings["instruction"])
    expert = settings.get("expert") or DEFAULT_EXPERT
    if isinstance(expert, str) and (recorded := read_recipe_prompt(expert)):
        return recorded
    return wrap_instruction(engine, HYPOTHESIS_INSTRUCTION)
