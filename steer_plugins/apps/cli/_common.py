"""What the `steer` subcommands share: the user-error type and its one-line, exit-2 report, logging,
the subcommand parser factory, the `SteerConfig` flags, config files and the run settings."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any

from ...core.sources import DEFAULT_MODEL
from ..data_io import DataFormatError, read_lines, read_texts

__all__ = [
    "ASSETS",
    "DEFAULT_EXPERT",
    "DEFAULT_SEED_SET",
    "MODEL_KINDS",
    "RUN_KEYS",
    "CLIError",
    "HelpFormatter",
    "add_config_flags",
    "add_model_flags",
    "add_subcommand",
    "add_version_flag",
    "check_run_settings",
    "config_flag_specs",
    "count_word",
    "load_config_file",
    "log",
    "make_config",
    "read_examples",
    "run_command",
    "set_threads",
    "split_settings",
]

ASSETS = Path(__file__).resolve().parents[2] / "assets"
DEFAULT_EXPERT = str(ASSETS / "adapters" / "hypotheses-lora")
DEFAULT_SEED_SET = str(ASSETS / "seed_hypotheses.jsonl")
MODEL_KINDS = f"a folder, .gguf file or {DEFAULT_MODEL!r}"
"""What a model argument may name, for error messages."""

RUN_KEYS: dict[str, str] = {
    "expert": f"expert model: PEFT adapter folder, HF folder, .gguf, or {DEFAULT_MODEL!r}",
    "base": "base model (default: the adapter's base with the adapter off)",
    "prompt": "exact prompt string (default: the adapter's recorded training prompt)",
    "instruction": "instruction wrapped in the tokenizer's chat template (instead of `prompt`)",
    "prompted_expert": (
        "file of real examples shown in context (zero-training expert; the base branch gets the plain instruction)"
    ),
    "num_shots": "examples shown in context by the prompted expert",
    "n": "rows wanted in the output",
    "out": "output file (.jsonl or .parquet)",
    "pool": "file of real examples seeding the negative pool",
    "chunk_size": "rows decoded and appended per step",
    "close_with": "re-append this stop string to texts that ended on it (e.g. '?')",
    "threads": "torch CPU threads",
    "device": "torch device (cpu, cuda)",
    "bf16_negatives": (
        "prefill the negative contexts in bf16 (opt-in, not exact; 2.5x faster prefill on GPUs and CPUs "
        "with native bf16, slower elsewhere)"
    ),
    "max_cache_mb": (
        "bound the KV cache of the rows decoding at once: MB, 'auto' (default: the weights' size) or "
        "'none' (exact either way: rows that do not fit wait)"
    ),
    "prompts": "file of prompts, one per row (JSONL `prompt`/`text` field, or plain text lines)",
    "dedup": "drop duplicate outputs: exact or minhash",
    "dedup_threshold": "minhash: Jaccard similarity at which two outputs are duplicates",
    "schema": "JSON schema of one record: a .json file, or the schema inline in a config file",
}
"""Keys a `steer generate` config file may hold besides the `SteerConfig` fields."""
_STR_KEYS = frozenset(
    {"expert", "base", "prompt", "instruction", "prompted_expert", "out", "pool", "close_with", "device"}
    | {"prompts", "dedup"}
)
_POSITIVE_INT_KEYS = frozenset({"n", "num_shots", "chunk_size", "threads"})
_BOOL_KEYS = frozenset({"bf16_negatives"})
_FLAG_HELP = {
    "form": "how the branch log-probs combine: 'paper' = (1+γ)·ℓ_expert − γ·ℓ_base − η·ℓ_negatives "
    "(the paper's rule); 'cfg' = (1+γ+η)·ℓ_expert − γ·ℓ_base − η·ℓ_negatives (classifier-free guidance "
    "form, HF guidance_scale = 1+η: the expert is also amplified by η)",
}
"""Help texts of `SteerConfig` flags whose field description is too short for a command line."""

_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


# ------------------------------------------------------------------------- running a command


def log(msg: str) -> None:
    """Progress and notes go to stderr, prefixed `[steer]`; stdout carries only results."""
    print(f"[steer] {msg}", file=sys.stderr, flush=True)


def _os_error_line(e: OSError) -> str:
    """One line for a failed file operation: what, which file, and the fix for a full disk."""
    text = f"{e.strerror}: `{e.filename}`" if e.strerror and e.filename else str(e)
    if e.errno == errno.ENOSPC or "No space left" in text:
        text += " (the disk is full: free space or write elsewhere, then rerun the same command to resume)"
    return text


def run_command(args: argparse.Namespace) -> int:
    """Run `args.func(args)`; a user error prints `steer CMD: error: ...` and returns 2, Ctrl-C 130.

    User errors: `CLIError`, bad data (`DataFormatError`, `ValueError`), a missing optional package
    (`ImportError`) and failed file operations (`OSError`: missing, read-only, disk full).
    """
    try:
        return args.func(args)
    except (CLIError, DataFormatError, ValueError, ImportError) as e:
        print(f"steer {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"steer {args.command}: error: {_os_error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"steer {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def version() -> str:
    """The installed steer-plugins version (the source tree's when it is not installed)."""
    from importlib import metadata

    try:
        return metadata.version("steer-plugins")
    except metadata.PackageNotFoundError:
        import steer_plugins

        return getattr(steer_plugins, "__version__", "unknown")


def add_version_flag(parser: argparse.ArgumentParser) -> None:
    """`--version`: print `steer <version>` and exit 0."""
    parser.add_argument(
        "--version", action="version", version=f"steer {version()}", help="print the version and exit"
    )


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's layout and adds `(default: X)` to every flag whose help does not say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            action.option_strings
            and default not in (None, False, argparse.SUPPRESS)
            and "default" not in text.lower()
        ):
            text += " (default: %(default)s)"
        return text


def add_subcommand(subs: Any, name: str, help_text: str, epilog: str) -> argparse.ArgumentParser:
    """A subcommand parser whose description is its help line and whose epilog keeps its layout."""
    return subs.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=epilog,
        formatter_class=HelpFormatter,
    )


def count_word(n: int) -> str:
    """`5 -> "five"` for help texts (digits from eleven on)."""
    return _NUMBER_WORDS[n] if 0 <= n < len(_NUMBER_WORDS) else str(n)


def set_threads(threads: int | None) -> None:
    """Set torch's CPU threads when `threads` is given."""
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def read_examples(path: str | os.PathLike[str], what: str) -> list[str]:
    """The texts in `path` (JSONL or plain text); a `CLIError` naming `what` if there are none."""
    texts = read_texts(path)
    if not texts:
        raise CLIError(f"{what} file `{path}` has no examples (it is empty or only blank lines)")
    return texts


# ---------------------------------------------------------------------------- SteerConfig flags


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return annotation, False


def _optional(kind: type) -> typing.Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "off", "null") else kind(text)

    parse.__name__ = kind.__name__
    return parse


#: Default of every config flag: "not given", so that `--alpha none` (None: off) still overrides.
UNSET: Any = type("Unset", (), {"__repr__": lambda self: "UNSET"})()


def config_flag_specs() -> list[tuple[str, dict[str, Any]]]:
    """`(flag, argparse kwargs)` for every `SteerConfig` field, derived from its annotation."""
    from ...core.config import SteerConfig

    specs = []
    for name, field in SteerConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        ann, optional = _unwrap_optional(field.annotation)
        default = field.default if field.default_factory is None else field.default_factory()
        description = _FLAG_HELP.get(name, field.description or "")
        help_text = f"{description} (default {default!r}{'; none = off' if optional else ''})"
        kw: dict[str, Any] = {"dest": f"cfg_{name}", "default": UNSET, "help": help_text}
        if typing.get_origin(ann) is typing.Literal:
            kw["choices"] = list(typing.get_args(ann))
        elif typing.get_origin(ann) is list:
            (item,) = typing.get_args(ann)
            # append copies its default; None (never a valid list value) means "not given" here
            kw.update(action="append", type=item, metavar=item.__name__.upper(), default=None)
            kw["help"] += "; repeat the flag for several"
        elif ann is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = _optional(ann) if optional else ann
            kw["metavar"] = ann.__name__.upper()
        specs.append((flag, kw))
    return specs


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per `SteerConfig` field, in their own help group."""
    group = parser.add_argument_group("decoding (SteerConfig fields; override the config file)")
    for flag, kw in config_flag_specs():
        group.add_argument(flag, **kw)


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """The model, prompt, pool and device flags of `generate` and `sweep`."""
    g = parser.add_argument_group("model and prompt")
    g.add_argument(
        "--expert", help=f"expert model (default: the shipped adapter {Path(DEFAULT_EXPERT).name})"
    )
    g.add_argument("--base", help="base model (default: the adapter's base with the adapter switched off)")
    g.add_argument("--prompt", help="exact prompt string (default: the adapter's recorded training prompt)")
    g.add_argument("--instruction", help="an instruction; wrapped in the tokenizer's chat template")
    g.add_argument(
        "--prompted-expert",
        metavar="FILE",
        help="zero-training expert: show examples from FILE in the prompt (sets gamma=0; see docs)",
    )
    g.add_argument("--num-shots", type=int, help="in-context examples for --prompted-expert (default 5)")
    g.add_argument("--pool", metavar="FILE", help="real examples (JSONL or text) seeding the negative pool")
    g.add_argument("--threads", type=int, help="torch CPU threads (1 is often fastest on a busy machine)")
    g.add_argument("--device", help="torch device, e.g. cuda (default cpu)")
    g.add_argument(
        "--bf16-negatives",
        action="store_const",
        const=True,
        help="prefill the negative contexts in bf16: opt-in, not exact; about 2.5x faster prefill on GPUs "
        "and CPUs with AVX-512 BF16/AMX (emulated and slower elsewhere); quality in docs/quality.md",
    )
    g.add_argument(
        "--max-cache-mb",
        type=_cache_mb,
        metavar="MB",
        help="bound the KV cache of the rows decoding at once: a number of MB, 'auto' (default: as much "
        "as the weights take) or 'none' (no bound: fastest, most memory). Exact either way: a row that "
        "does not fit waits for room",
    )


def _cache_mb(text: str) -> float | str:
    """`--max-cache-mb`: 'auto', 'none' or a positive number of MB."""
    if text.strip().lower() in ("auto", "none"):
        return text.strip().lower()
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of MB, 'auto' or 'none', got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of MB, got {text!r}")
    return value


# ---------------------------------------------------------------------- config file, settings


def _parse_config_text(p: Path, text: str) -> Any:
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as e:
            raise CLIError(
                "YAML config files need pyyaml: pip install 'steer-plugins[eval]' (or use JSON)"
            ) from e
        try:
            return yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f", line {mark.line + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise CLIError(f"{p}{where}: malformed YAML config ({problem})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CLIError(f"{p}, line {e.lineno}: malformed JSON config ({e.msg})") from None


def load_config_file(path: str | None) -> dict[str, Any]:
    """Run keys and `SteerConfig` fields from a YAML or JSON file (`config:` nests fields); {} for None.

    Raises:
        CLIError: missing file, malformed content, or a key that is neither a run key nor a field.
    """
    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"config file not found: `{p}`")
    data = _parse_config_text(p, "\n".join(line for _, line in read_lines(p)))
    if not isinstance(data, dict):
        raise CLIError(f"config file `{p}` must hold a mapping of keys to values, got {type(data).__name__}")
    nested = data.pop("config", None) or {}
    if not isinstance(nested, dict):
        raise CLIError(f"config file `{p}`: `config` must be a mapping of SteerConfig fields")
    data.update(nested)
    from ...core.config import SteerConfig

    known = set(RUN_KEYS) | set(SteerConfig.model_fields)
    unknown = sorted(set(data) - known)
    if unknown:
        raise CLIError(
            f"unknown config key(s) {unknown} in `{p}`; run keys: {sorted(RUN_KEYS)}; "
            f"SteerConfig fields: {sorted(SteerConfig.model_fields)}"
        )
    return data


def check_run_settings(settings: dict[str, Any]) -> None:
    """Strict types for the run settings (from flags or a config file): text keys must be strings,
    counts positive integers (`n: 2.7`, `n: [1, 2]`, `out: 123`, `chunk_size: 0` are errors).

    Raises:
        CLIError: naming the key, its flag and the value.
    """
    for key, value in settings.items():
        if value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if key in _STR_KEYS and not isinstance(value, str):
            hint = (
                "; for several prompts, put them in a file and pass --prompts FILE" if key == "prompt" else ""
            )
            raise CLIError(f"`{key}` ({flag}) must be a string, got {value!r} ({type(value).__name__}){hint}")
        if key in _POSITIVE_INT_KEYS and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise CLIError(f"`{key}` ({flag}) must be a positive integer, got {value!r}")
        if key in _BOOL_KEYS and not isinstance(value, bool):
            raise CLIError(f"`{key}` ({flag}) must be true or false, got {value!r}")
        if key == "schema" and not isinstance(value, (str, dict)):
            raise CLIError(
                f"`schema` ({flag}) must be a JSON schema file or an inline mapping, got {value!r}"
            )
        if (
            key == "max_cache_mb"
            and value not in ("auto", "none")
            and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0)
        ):
            raise CLIError(
                f"`{key}` ({flag}) must be a positive number of MB, 'auto' or 'none', got {value!r}"
            )
        if key == "dedup_threshold" and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise CLIError(f"`{key}` ({flag}) must be a number in (0, 1], got {value!r}")


def split_settings(
    args: argparse.Namespace, file_cfg: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(run settings, SteerConfig fields): config file first, flags override; run settings checked
    by `check_run_settings`."""
    from ...core.config import SteerConfig

    settings = {k: v for k, v in file_cfg.items() if k in RUN_KEYS}
    fields = {k: v for k, v in file_cfg.items() if k in SteerConfig.model_fields}
    for key in RUN_KEYS:
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    given = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_") and v is not UNSET}
    fields.update({k: v for k, v in given.items() if v is not None or _optional_field(k)})
    check_run_settings(settings)
    return settings, fields


def _optional_field(name: str) -> bool:
    """True when `SteerConfig.<name>` accepts None (off)."""
    from ...core.config import SteerConfig

    return _unwrap_optional(SteerConfig.model_fields[name].annotation)[1]


def make_config(fields: dict[str, Any]) -> Any:
    """`SteerConfig().merged(**fields)`; an invalid value becomes a `CLIError`."""
    from ...core.config import SteerConfig

    try:
        return SteerConfig().merged(**fields)
    except ValueError as e:  # pydantic ValidationError is a ValueError
        raise CLIError(f"invalid decoding setting: {e}") from None
