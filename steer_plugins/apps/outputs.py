"""The output file of a generation run: its path checks, and the record of the settings that made it.

`check_output` runs before any model is loaded: a wrong suffix or an unwritable folder is reported
at once. `settings_record` lists what decides a run's rows (model name with its weight hash, the
engine fingerprint, every `SteerConfig` field, seed, prompt, pool, dedup, the record schema); it is kept in
`<out>.meta.json` with the running counts, and `check_record` refuses to add rows to a file whose
rows were made with other settings, naming each differing field. With a record schema, a row is
the record's fields plus `_`-prefixed metadata (`record_row`; `check_record_schema` says which
schemas qualify).

Example:
    >>> diff_settings({"seed": 0, "config": {"gamma": 0.2}}, {"seed": 0, "config": {"gamma": 0.5}})
    ['gamma: 0.2 in the file, 0.5 now']
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..core.config import ADDED_FIELDS_OFF
from .data_io import DataFormatError, write_json_atomic

__all__ = [
    "META_FORMAT",
    "OUTPUT_SUFFIXES",
    "RECORD_META_KEYS",
    "SettingsMismatchError",
    "check_output",
    "check_record",
    "check_record_schema",
    "config_record",
    "diff_settings",
    "meta_path",
    "pool_summary",
    "probe_writable",
    "read_meta",
    "record_row",
    "rows_path",
    "settings_record",
    "write_meta",
]

OUTPUT_SUFFIXES: tuple[str, ...] = (".jsonl", ".parquet")
"""Output file types of `generate_to_file`."""
META_FORMAT = "steer-generate/1"
"""Value of the `format` key of `<out>.meta.json`."""
RECORD_META_KEYS = ("_text", "_finish_reason", "_tokens", "_seed", "_prompt")
"""Row metadata keys of a record row (`schema=`); extra fields are written as `_<name>`."""
NOT_COMPARED = frozenset({"fingerprint", "schema_file"})
"""Settings recorded for provenance but not compared on a rerun (`fingerprint` is a last resort)."""
FIX = "write to another file (--out elsewhere) or start this one over (--overwrite)"
"""How to get past a settings mismatch, as said in its message."""


class SettingsMismatchError(ValueError):
    """The output file holds rows made with other settings (the message names the fields)."""


def meta_path(out: str | os.PathLike[str]) -> Path:
    """The settings record of output `out`: `<out>.meta.json`."""
    out = Path(out)
    return out.with_name(out.name + ".meta.json")


def rows_path(out: str | os.PathLike[str]) -> Path:
    """The JSONL file rows are appended to: `out` itself, or `<out>.partial.jsonl` for Parquet."""
    out = Path(out)
    return out if out.suffix.lower() == ".jsonl" else out.with_name(out.name + ".partial.jsonl")


def check_output(out: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Check that `out` can be written (before any model is loaded); returns its resolved path.

    Creates missing parent folders and probes that the folder (or the existing file) is writable.

    Raises:
        ValueError: a suffix other than `.jsonl` / `.parquet`, or a Parquet file without its resume
            file (and no `overwrite`).
        OSError: the folder cannot be created or written (read-only, permissions); the message
            names the path.
    """
    given = Path(out)
    suffix = given.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise ValueError(
            f"output `{given}` must end in .jsonl or .parquet, got {suffix or 'no suffix'!r}: "
            "pass e.g. --out synth.jsonl"
        )
    path = given.resolve()
    jsonl = rows_path(path)
    if suffix == ".parquet" and path.exists() and not jsonl.exists() and not overwrite:
        raise ValueError(
            f"`{given}` already exists and has no resume file `{jsonl.name}`: pass a new --out path "
            "or --overwrite"
        )
    probe_writable(jsonl)
    return path


def probe_writable(path: str | os.PathLike[str]) -> Path:
    """Check that file `path` can be written, creating its missing parent folders; returns it resolved.

    An existing file is opened for appending (and left unchanged); otherwise a temporary file is
    created and removed in its folder.

    Raises:
        OSError: read-only, no permission, or a parent that is a file; the message names `path`.
    """
    given = Path(path)
    resolved = given.resolve()
    try:
        resolved.parent.mkdir(parents=True, exist_ok=True)
        if resolved.exists():
            resolved.open("ab").close()
        else:
            tempfile.TemporaryFile(dir=resolved.parent).close()
    except OSError as e:
        raise type(e)(f"cannot write `{given}`: {e.strerror or e}") from None
    return resolved


def _sha(texts: Sequence[str]) -> str:
    blob = json.dumps(list(texts), ensure_ascii=False).encode("utf-8", "surrogatepass")
    return hashlib.sha256(blob).hexdigest()[:16]


def pool_summary(real_texts: Sequence[str]) -> str:
    """`"9 real examples, sha256 …"`: the pool's real examples, as recorded."""
    return f"{len(real_texts)} real examples, sha256 {_sha(real_texts)}"


def config_record(config: Any) -> dict[str, Any]:
    """Every `SteerConfig` field but `seed` (recorded on its own), as JSON values."""
    data = config.model_dump(mode="json")
    data.pop("seed", None)
    return data


def settings_record(
    engine: Any,
    prompts: Sequence[str],
    *,
    seed: int | None,
    config_overrides: Mapping[str, Any] | None = None,
    pool: Any = None,
) -> dict[str, Any]:
    """What decides a run's rows: model (name with weight hash), engine fingerprint, every
    `SteerConfig` field, seed, prompt(s) and the pool's real examples (the caller adds its own keys:
    `generate_to_file` adds base prompt, `close_with` and dedup)."""
    fields = type(engine.config).model_fields
    cfg_over = {k: v for k, v in (config_overrides or {}).items() if k in fields and k != "seed"}
    pool = engine.pool if pool is None else pool
    return {
        "model": engine.name,
        "fingerprint": engine.fingerprint(**cfg_over, seed=None),
        "config": config_record(engine.config.merged(**cfg_over)),
        "seed": seed,
        "prompt": prompts[0] if len(prompts) == 1 else f"{len(prompts)} prompts, sha256 {_sha(prompts)}",
        "pool": pool_summary(pool.texts[: pool.num_real]),
    }


def _short(value: Any) -> str:
    """`repr(value)`, its middle cut when long (a chat-template prompt), its end kept (a model's hash)."""
    text = repr(value)
    return text if len(text) <= 160 else f"{text[:100]}...{text[-50:]}"


def _added_off(name: str, value: Any) -> bool:
    """Whether `name` is a setting added after files were first written, left off (`value`)."""
    return value in (None, False) or (name in ADDED_FIELDS_OFF and ADDED_FIELDS_OFF[name] == value)


def diff_settings(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """`"gamma: 0.2 in the file, 0.5 now"` for every key of `current` whose value differs from
    `recorded` (`config` compared field by field; `fingerprint` only when nothing else differs;
    `schema_file` never: the schema's content is what counts). A key the file does not record
    (a setting added later) matches when it is None now (off)."""
    diffs = []
    for key, now in current.items():
        if key in NOT_COMPARED or (now is None and key not in recorded):  # a later setting, left off
            continue
        if key == "config" and isinstance(recorded.get(key), Mapping) and isinstance(now, Mapping):
            old_cfg = recorded[key]
            diffs += [
                f"{k}: {_short(old_cfg.get(k))} in the file, {_short(v)} now"
                for k, v in now.items()
                if old_cfg.get(k) != v and not (k not in old_cfg and _added_off(k, v))
            ]
        elif key not in recorded:
            diffs.append(f"{key}: not recorded in the file, {_short(now)} now")
        elif recorded[key] != now:
            diffs.append(f"{key}: {_short(recorded[key])} in the file, {_short(now)} now")
    if not diffs and "fingerprint" in current and recorded.get("fingerprint") != current["fingerprint"]:
        diffs.append(
            f"engine fingerprint: {recorded.get('fingerprint')} in the file, {current['fingerprint']} now"
        )
    return diffs


def read_meta(out: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The settings record of output `out` (`<out>.meta.json`), or None when there is none.

    Raises:
        DataFormatError: the record is not a JSON object.
    """
    path = meta_path(out)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataFormatError(
            f"`{path}` is not a settings record ({e}); delete it or pass --overwrite"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("settings"), dict):
        raise DataFormatError(f"`{path}` is not a settings record (no `settings` object)")
    return data


def check_record(out: Path, num_rows: int, record: Mapping[str, Any]) -> dict[str, Any]:
    """The recorded counts when the rows in `out` were made with `record`'s settings (an empty
    file has none); a `SettingsMismatchError` otherwise."""
    if num_rows == 0:
        return {}
    meta = read_meta(out)
    fix = FIX
    if meta is None:
        raise SettingsMismatchError(
            f"`{out}` already has {num_rows} rows but no settings record `{meta_path(out).name}`, so "
            f"they cannot be checked against this run's settings: {fix}"
        )
    diffs = diff_settings(meta["settings"], record)
    if diffs:
        raise SettingsMismatchError(
            f"`{out}` has {num_rows} rows made with other settings ({'; '.join(diffs)}): {fix}"
        )
    counts = meta.get("counts")
    return counts if isinstance(counts, dict) else {}


def write_meta(out: Path, record: Mapping[str, Any], counts: Mapping[str, Any]) -> None:
    """Write the settings record and the running counts of output `out` (atomically)."""
    write_json_atomic(
        meta_path(out),
        {"format": META_FORMAT, "data": out.name, "settings": dict(record), "counts": dict(counts)},
    )


def check_record_schema(schema: Any, close_with: str | None = None) -> dict[str, Any]:
    """`schema` when it describes one JSON object whose fields can sit at the top level of a row
    next to the `_`-prefixed metadata (and no `close_with` is asked); else a ValueError naming the
    problem and the fix."""
    if close_with:
        raise ValueError("`close_with` does not apply to records (`schema`): the grammar closes them")
    if not isinstance(schema, Mapping):
        raise ValueError(f"a record schema is a JSON object (a mapping), got {type(schema).__name__}")
    props = schema.get("properties")
    if schema.get("type") != "object" or not isinstance(props, Mapping) or not props:
        raise ValueError(
            'the schema must describe one record: {"type": "object", "properties": {...}} at its top level '
            "(its fields become the row's columns); wrap other values in a property"
        )
    clash = sorted(k for k in props if k in RECORD_META_KEYS or k.startswith("_"))
    if clash:
        raise ValueError(
            f"the schema's field(s) {clash} start with `_`, which row metadata uses (`_text`, "
            "`_finish_reason`, ...): rename them"
        )
    if schema.get("additionalProperties") not in (None, False) or schema.get("patternProperties"):
        raise ValueError(
            "the schema lets a record hold keys it does not list (additionalProperties/patternProperties "
            "at its top level), which could clash with the row metadata: list the fields in `properties`, "
            "or nest free-form data under one property"
        )
    return dict(schema)


def record_row(
    result: Any, extra_fields: Mapping[str, Any] | None, prompt: str | None
) -> dict[str, Any] | None:
    """One record row from a `SteerResult` decoded under a JSON schema: the parsed record's fields,
    then `_text` (the JSON as generated), `_finish_reason`, `_tokens`, `_seed`, `_prompt` and extra
    fields as `_<name>`; None when the result is not a complete record (`parsed` is None)."""
    if not isinstance(result.parsed, dict):
        return None
    row = dict(result.parsed)
    row.update(
        _text=result.text,
        _finish_reason=result.finish_reason,
        _tokens=result.completion_tokens,
        _seed=result.seed,
    )
    if prompt is not None:
        row["_prompt"] = prompt
    row.update({k if k.startswith("_") else f"_{k}": v for k, v in (extra_fields or {}).items()})
    return row
