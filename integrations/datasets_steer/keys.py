"""Stable identities: row keys, per-output seeds, and the hashes that name checkpoint folders.

None of them depends on batching, sharding or resuming, which is what lets a checkpointed run pick up
where it stopped and `num_proc=2` reproduce the one-process output.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["row_key", "row_seed", "sha"]


def sha(obj: Any) -> str:
    """A short stable hash of `obj` (JSON, keys sorted; other values by `str`)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def row_key(row: dict[str, Any], key_column: str | None) -> str:
    """The key of one input row: `key_column`'s value, else a hash of the row's content."""
    if key_column is not None:
        return f"k:{row[key_column]}"
    return sha(row)


def row_seed(base_seed: int, key: str, j: int) -> int:
    """The seed of output `j` of the row with `key`: `sha256(base_seed | key | j)`, 56 bits."""
    digest = hashlib.sha256(f"{base_seed}|{key}|{j}".encode()).digest()
    return int.from_bytes(digest[:7], "big")
