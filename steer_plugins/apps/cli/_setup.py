"""From run settings to a loaded engine, its negative pool and its prompt (`generate`, `sweep`, `augment`).

`load_schema` reads and compiles a record schema (`--schema`) before any model loads; with a schema,
`pool_for` serialises the pool's records the way the grammar writes them (negatives score like
against like).

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
    "load_schema",
    "pool_for",
    "quiet_loading",
    "read_prompts",
    "resolve_prompt",
    "wrap_instruction",
]

_MAX_HEADER = 100 << 20
"""A safetensors header larger than this is corrupt (real ones are kilobytes to a few MB)."""


def pool_for(settings: dict[str, Any], schema: dict[str, Any] | None = None) -> list[str] | None:
    """The real examples seeding the negative pool: `pool`, else the seed set of the shipped expert.

    With a record `schema`, the pool holds records serialised as the grammar writes them: a JSONL
    `pool` file's rows are records (a steer output row gives its `_text`), a text file's lines are
    taken as JSON already; without `pool`, the schema's top-level `examples` seed it (the shipped
    plain-text seed set is not records, so it is not used).
    """
    if schema is not None:
        if settings.get("pool"):
            return _record_pool(settings["pool"], schema)
        examples = schema.get("examples")
        records = [serialise_record(r, schema) for r in examples if isinstance(r, dict)] if examples else []
        return records or None
    if settings.get("pool"):
        return read_examples(settings["pool"], "pool")
    if (settings.get("expert") or DEFAULT_EXPERT) == DEFAULT_EXPERT:
        from ..data_io import read_texts

        return read_texts(DEFAULT_SEED_SET)
    return None


def serialise_record(record: dict[str, Any], schema: dict[str, Any]) -> str:
    """`record` as the grammar writes it: `json.dumps`' default separators, non-ASCII kept, keys in
    the schema's property order (others after), no `_`-prefixed row metadata."""
    order = list(schema.get("properties") or {})
    fields = {k: v for k, v in record.items() if not k.startswith("_")}
    keys = [k for k in order if k in fields] + [k for k in fields if k not in order]
    return json.dumps({k: fields[k] for k in keys}, ensure_ascii=False)


def _record_pool(path: str, schema: dict[str, Any]) -> list[str]:
    """The records in pool file `path`, serialised (see `pool_for`); warns about records missing a
    required field (they still serve as negatives, but score less like the output)."""
    from ..data_io import looks_like_jsonl, read_jsonl

    p = Path(path)
    if not p.is_file() or not looks_like_jsonl(p):
        return read_examples(p, "pool")  # a missing file's message; a text file's lines, as JSON already
    rows = read_jsonl(p)
    if not rows:
        raise CLIError(f"pool file `{p}` has no examples (it is empty or only blank lines)")
    required = [k for k in schema.get("required") or [] if isinstance(k, str)]
    missing = sum(1 for row in rows if any(k not in row for k in required))
    if missing:
        log(
            f"warning: {missing} of {len(rows)} pool rows lack a required field of the schema {required}: "
            "negatives should be records of the schema (docs/cli.md, Records)"
        )
    return [
        row["_text"] if isinstance(row.get("_text"), str) else serialise_record(row, schema) for row in rows
    ]


def load_schema(
    settings: dict[str, Any], max_new_tokens: int | None = None
) -> tuple[dict | None, str | None]:
    """(the record schema, where it came from) of `settings["schema"]` (a file path, or a mapping
    inline in a config file), checked and compiled by the engine's grammar compiler, which needs no
    model; (None, None) without a schema.

    Raises:
        CLIError: a missing or malformed file, a schema that is not one object's, or one the engine
            cannot enforce; one line, naming the file and the fix.
    """
    from ...core.grammar import compile_grammar
    from ..outputs import check_record_schema

    spec = settings.get("schema")
    if spec is None:
        return None, None
    where = "the inline `schema`" if isinstance(spec, dict) else f"schema file `{spec}`"
    schema = spec if isinstance(spec, dict) else _read_schema_file(Path(spec))
    try:
        check_record_schema(schema)
        compile_grammar(schema)
    except ValueError as e:  # GrammarError is a ValueError
        raise CLIError(f"{where}: {' '.join(str(e).split())}") from None
    return schema, None if isinstance(spec, dict) else str(spec)


def _read_schema_file(path: Path) -> Any:
    if not path.is_file():
        raise CLIError(
            f"schema file not found: `{path}` (pass a JSON schema file, e.g. examples/schemas/hypothesis.json)"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CLIError(f"schema file `{path}`, line {e.lineno}: not valid JSON ({e.msg})") from None
    except UnicodeDecodeError:
        raise CLIError(f"schema file `{path}` is not UTF-8 text") from None


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
    import torch

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
                negative_prefill_dtype=torch.bfloat16 if settings.get("bf16_negatives") else None,
                max_cache_mb={None: "auto", "none": None}.get(
                    settings.get("max_cache_mb"), settings.get("max_cache_mb")
                ),
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
