"""STEER data augmentation on Ray Data: `augment(ds, SteerAugmenter(...), num_actors=2)`."""

from .actors import AugmentActor, SharedPool
from .augment import augment

__all__ = ["AugmentActor", "SharedPool", "augment"]
