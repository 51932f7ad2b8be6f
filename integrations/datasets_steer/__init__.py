"""STEER data augmentation for Hugging Face `datasets`: `ds.map(SteerAugmenter(...), batched=True)`."""

from .augmenter import ADDED_COLUMNS, DEFAULT_CHECKPOINT_ROOT, SteerAugmenter
from .checkpoint import CheckpointStore

__all__ = ["ADDED_COLUMNS", "DEFAULT_CHECKPOINT_ROOT", "CheckpointStore", "SteerAugmenter"]
