"""A crash-safe, append-only JSONL checkpoint of finished rows, shared by processes and actors.

Layout: ``<root>/<settings fingerprint>/part-<host>-<pid>-<random>.jsonl``. Each writer owns one
part file, so processes never interleave writes; each line is one finished input row (all of its
`n` outputs), written and flushed after the row is done. A line cut short by a crash is ignored on
reading, and a key written twice (two workers raced on the same row) is read once, first wins.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
from pathlib import Path
from typing import Any

__all__ = ["CheckpointStore"]


class CheckpointStore:
    """Finished rows of one augmentation setting, keyed by a stable row key.

    Args:
        root: the checkpoint directory (created if missing); on a cluster, a path every node shares.
        fingerprint: the augmenter's settings fingerprint; runs with other settings use another folder.
    """

    def __init__(self, root: str | os.PathLike, fingerprint: str) -> None:
        self.dir = Path(root) / fingerprint
        self._lock = threading.Lock()
        self._fh = None
        self._fh_pid = -1
        self._done: dict[str, list[dict[str, Any]]] | None = None

    def load(self) -> dict[str, list[dict[str, Any]]]:
        """Every finished row on disk: key -> its outputs (re-read on each call)."""
        done: dict[str, list[dict[str, Any]]] = {}
        if self.dir.is_dir():
            for part in sorted(self.dir.glob("part-*.jsonl")):
                with part.open(encoding="utf-8") as fh:
                    for line in fh:
                        try:
                            rec = json.loads(line)
                        except json.JSONDecodeError:
                            continue  # a line cut short by a crash: that row is regenerated
                        if isinstance(rec, dict) and "key" in rec and "outputs" in rec:
                            done.setdefault(rec["key"], rec["outputs"])
        return done

    def write(self, key: str, outputs: list[dict[str, Any]]) -> None:
        """Append one finished row and flush it to the OS (survives the process being killed)."""
        line = json.dumps({"key": key, "outputs": outputs}, ensure_ascii=False) + "\n"
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
        self._done = None
