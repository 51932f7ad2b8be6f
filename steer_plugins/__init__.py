"""STEER decoding engine: contrastive expert guidance and negative prompting (arXiv 2308.07645)."""

from .core.combine import combine, guard_non_finite, head_mask
from .core.config import PRESETS, BranchWeights, SteerConfig, register_preset
from .core.decode import SteerResult, StreamEvent
from .core.engine import SteerEngine
from .core.grammar import Grammar, GrammarError, Regex, compile_grammar
from .core.negatives import NegativePool
from .core.options import CALL_KEYS, CallOptions, merge_stops, shared_negatives, usage
from .core.sampling import make_sampler
from .core.scheduler import EngineStats
from .core.sources import DEFAULT_MODEL, load_model, load_models

__all__ = [
    "DEFAULT_MODEL",
    "PRESETS",
    "BranchWeights",
    "CALL_KEYS",
    "CallOptions",
    "EngineStats",
    "Grammar",
    "GrammarError",
    "NegativePool",
    "Regex",
    "SteerConfig",
    "SteerEngine",
    "SteerResult",
    "StreamEvent",
    "combine",
    "compile_grammar",
    "guard_non_finite",
    "head_mask",
    "load_model",
    "load_models",
    "make_sampler",
    "merge_stops",
    "shared_negatives",
    "usage",
    "register_preset",
]
