"""STEER decoding for DSPy 3.4+: `steer_lm(...)` returns a `dspy.LM`; `FieldByFieldAdapter` makes small models parse."""

from .adapter import DEFAULT_FIELD_STOPS, FieldByFieldAdapter
from .engine import AsyncSteerDSPyEngine, SteerDSPyEngine, register_engine
from .lm import steer_call_config, steer_lm, steer_options
from .translation import STEER_METADATA_KEY

__all__ = [
    "DEFAULT_FIELD_STOPS",
    "STEER_METADATA_KEY",
    "AsyncSteerDSPyEngine",
    "FieldByFieldAdapter",
    "SteerDSPyEngine",
    "register_engine",
    "steer_call_config",
    "steer_lm",
    "steer_options",
]
