"""The augmenter's dataset card: a Hugging Face `README.md` next to its data or checkpoint.

The text comes from `steer_plugins.apps.card` (front matter the Hub reads, provenance body); this
module fills it with the augmenter's settings, seed, model fingerprints (they hash the weights),
row counts and deduplication counts, and writes it atomically under a name of its own, so workers
finishing at the same time never leave a half-written card.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from steer_plugins import SteerConfig
from steer_plugins.apps.card import card_path, render_card

__all__ = ["card_fields", "card_path", "card_text", "write_augment_card"]

DESCRIPTION = (
    "Rows grown from a seed dataset with STEER decoding (arXiv 2308.07645: contrastive expert guidance "
    "and negative prompting) by `datasets_steer.SteerAugmenter` of steer-plugins. Synthetic rows have "
    "`synthetic=True`; `steer_config`, `steer_negatives` and `steer_seed` record how each was made."
)


def card_fields(
    settings: Mapping[str, Any],
    config_fields: Mapping[str, Any],
    *,
    seed: int,
    models: Mapping[str, Mapping[str, Any]] | None,
    counts: Mapping[str, Any] | None,
    dedup: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The `render_card` fields of one augmenter run.

    Args:
        settings: the augmenter's own settings (prompt, n, columns, ...).
        config_fields: its `SteerConfig` fields; the card lists the merged config.
        seed: the base seed of the per-row seeds.
        models: role -> `{"name", "fingerprint"}`, or None when no engine was loaded here.
        counts: row and token counts; dedup: the dedup counts, or None when dedup is off.
    """
    config = SteerConfig().merged(**config_fields).model_dump(mode="json", exclude={"seed"})
    return {
        "title": "Synthetic data generated with STEER (datasets_steer.SteerAugmenter)",
        "description": DESCRIPTION,
        "settings": {**settings, **{k: v for k, v in config.items() if v is not None}},
        "seed": seed,
        "models": dict(models or {}),
        "counts": dict(counts or {}),
        "dedup": dict(dedup) if dedup else None,
    }


def card_text(*, data_files: Sequence[str], num_rows: int, fields: Mapping[str, Any]) -> str:
    """The card's text (`data_files`: paths or globs relative to the card's folder)."""
    return render_card(data_files=list(data_files), num_rows=num_rows, **fields)


def write_augment_card(
    path: str | os.PathLike[str],
    *,
    data_files: Sequence[str],
    num_rows: int,
    fields: Mapping[str, Any],
) -> Path:
    """Write the card to `path` (`data_files`: paths or globs relative to its folder).

    Raises:
        OSError: the card could not be written.
    """
    path = Path(path)
    text = card_text(data_files=data_files, num_rows=num_rows, fields=fields)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
