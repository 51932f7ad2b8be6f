"""STEER data augmentation on Ray Data: `augment(ds, SteerAugmenter(...), num_actors=2)`."""

from .augment import AugmentActor, SharedPool, augment

__all__ = ["AugmentActor", "SharedPool", "augment"]
