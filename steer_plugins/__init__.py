"""STEER decoding engine: contrastive expert guidance and negative prompting (arXiv 2308.07645)."""

from .combine import combine, guard_non_finite, head_mask
from .config import PRESETS, BranchWeights, SteerConfig, register_preset
from .decode import SteerResult, StreamEvent
from .engine import SteerEngine
from .negatives import NegativePool
from .sampling import make_sampler
from .scheduler import EngineStats
from .sources import DEFAULT_MODEL, load_model, load_models

__all__ = [
    "DEFAULT_MODEL",
    "PRESETS",
    "BranchWeights",
    "EngineStats",
    "NegativePool",
    "SteerConfig",
    "SteerEngine",
    "SteerResult",
    "StreamEvent",
    "combine",
    "guard_non_finite",
    "head_mask",
    "load_model",
    "load_models",
    "make_sampler",
    "register_preset",
]
