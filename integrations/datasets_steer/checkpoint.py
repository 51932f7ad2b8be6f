"""A crash-safe, append-only JSONL checkpoint of finished rows, shared by processes and actors.

Layout: ``<root>/<settings fingerprint>/part-<host>-<pid>-<random>.jsonl``. Each writer owns one
part file, so processes never interleave writes; each line is one finished input row (all of its
`n` outputs), written and flushed after the row is done.

Every line is checked on reading (`check_line`), and a line that does not fit is skipped (its row is
generated again) and reported in `CheckpointStore.skipped`: a line cut short by a crash, a line
whose checksum does not match its content (edited or forged by hand), a line written with other
weights or settings (`model`, the engine's fingerprint, which hashes the weights), the wrong number
of outputs, or an output whose fields have the wrong types or whose seed is not the row's. A key
written twice (two workers raced on the same row) is read once: the first valid copy wins.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .keys import sha

__all__ = ["CheckpointStore", "Expected", "check_line", "line_checksum"]

Outputs = list[dict[str, Any]]
#: The fields of one output and the type each must have (see `generate.output_record`).
OUTPUT_FIELDS: dict[str, type] = {
    "text": str,
    "negatives": list,
    "seed": int,
    "config": str,
    "completion_tokens": int,
    "finish_reason": str,
}


@dataclass(frozen=True)
class Expected:
    """What a valid line of this run looks like.

    Attributes:
        n: outputs per row.
        model: the engine's fingerprint for these settings (weights and config).
        seed_of: the seed of output `j` of the row with `key`.
    """

    n: int
    model: str
    seed_of: Callable[[str, int], int]


def line_checksum(key: str, model: str, outputs: Outputs) -> str:
    """The checksum a line carries: a hash of its key, model fingerprint and outputs."""
    return sha(["steer-checkpoint-v2", key, model, outputs])


def check_output(out: Any, seed: int) -> str | None:
    """Why one output record is invalid (None when it is valid)."""
    if not isinstance(out, dict):
        return f"an output is a {type(out).__name__}, not an object"
    for name, kind in OUTPUT_FIELDS.items():
        value = out.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"output field {name!r} is {type(value).__name__}, expected {kind.__name__}"
    if not all(isinstance(t, str) for t in out["negatives"]):
        return "output field 'negatives' holds a non-string"
    if out["seed"] != seed:
        return f"output seed {out['seed']} is not this row's seed {seed}"
    try:
        config = json.loads(out["config"])
    except json.JSONDecodeError:
        return "output field 'config' is not JSON"
    if not isinstance(config, dict) or config.get("seed") != seed:
        return "output field 'config' does not record the output's seed"
    return None


def check_line(rec: Any, expected: Expected) -> str | None:
    """Why one checkpoint line does not fit this run (None when it does)."""
    if not isinstance(rec, dict) or not isinstance(rec.get("key"), str):
        return "not an object with a string `key`"
    if "check" not in rec or "model" not in rec:
        return "no checksum or model fingerprint (edited by hand, or written by an older version)"
    outputs = rec.get("outputs")
    if not isinstance(outputs, list):
        return f"`outputs` is a {type(outputs).__name__}, not a list"
    if rec["check"] != line_checksum(rec["key"], str(rec["model"]), outputs):
        return "checksum does not match the line's content (edited by hand?)"
    if rec["model"] != expected.model:
        return f"made with other weights or settings (model {rec['model']}, now {expected.model})"
    if len(outputs) != expected.n:
        return f"{len(outputs)} outputs, expected n={expected.n}"
    for j, out in enumerate(outputs):
        reason = check_output(out, expected.seed_of(rec["key"], j))
        if reason is not None:
            return f"output {j}: {reason}"
    return None


class CheckpointStore:
    """Finished rows of one augmentation setting, keyed by a stable row key.

    Args:
        root: the checkpoint directory (created if missing); on a cluster, a path every node shares.
        fingerprint: the augmenter's settings fingerprint; runs with other settings use another folder.

    Attributes:
        skipped: `"part-file:line: reason"` for every line the last `load` skipped.
    """

    def __init__(self, root: str | os.PathLike, fingerprint: str) -> None:
        self.dir = Path(root) / fingerprint
        self._lock = threading.Lock()
        self._fh = None
        self._fh_pid = -1
        self.skipped: list[str] = []

    def parts(self) -> list[Path]:
        """The part files on disk, sorted."""
        return sorted(self.dir.glob("part-*.jsonl")) if self.dir.is_dir() else []

    def load(self, expected: Expected) -> dict[str, Outputs]:
        """Every valid finished row on disk: key -> its outputs (re-read on each call).

        Lines that do not fit `expected` are skipped and listed in `skipped`.
        """
        done: dict[str, Outputs] = {}
        skipped: list[str] = []
        for part in self.parts():
            with part.open(encoding="utf-8", errors="replace") as fh:
                for number, line in enumerate(fh, 1):
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        reason: str | None = "not JSON (cut short by a crash?)"
                    else:
                        reason = check_line(rec, expected)
                    if reason is not None:
                        skipped.append(f"{part.name}:{number}: {reason}")
                    else:
                        done.setdefault(rec["key"], rec["outputs"])
        self.skipped = skipped
        return done

    def write(self, key: str, model: str, outputs: Outputs) -> None:
        """Append one finished row and flush it to the OS (survives the process being killed)."""
        rec = {"key": key, "model": model, "outputs": outputs, "check": line_checksum(key, model, outputs)}
        line = json.dumps(rec, ensure_ascii=False) + "\n"
        with self._lock:
            if self._fh is None or self._fh_pid != os.getpid():  # a forked child writes its own part
                self.dir.mkdir(parents=True, exist_ok=True)
                name = f"part-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}.jsonl"
                self._fh = (self.dir / name).open("a", encoding="utf-8")
                self._fh_pid = os.getpid()
            self._fh.write(line)
            self._fh.flush()

    def close(self) -> None:
        with self._lock:
            if self._fh is not None and self._fh_pid == os.getpid():
                self._fh.close()
            self._fh = None

    def __getstate__(self) -> dict[str, Any]:
        return {"dir": str(self.dir)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.dir = Path(state["dir"])
        self._lock = threading.Lock()
        self._fh = None
        self._fh_pid = -1
        self.skipped = []
