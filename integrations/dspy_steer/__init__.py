"""STEER decoding for DSPy 3.4+: `steer_lm(...)` returns a `dspy.LM`; `FieldByFieldAdapter` makes small models parse;
`evaluation_mode()` (or `lm.frozen()`) keeps the negative pool fixed while a program is scored or compiled."""

from .adapter import DEFAULT_FIELD_STOPS, FieldByFieldAdapter
from .engine import AsyncSteerDSPyEngine, SteerDSPyEngine, register_engine
from .lm import SteerLM, steer_call_config, steer_lm, steer_options
from .modes import evaluation_mode
from .translation import STEER_METADATA_KEY

__all__ = [
    "DEFAULT_FIELD_STOPS",
    "STEER_METADATA_KEY",
    "AsyncSteerDSPyEngine",
    "FieldByFieldAdapter",
    "SteerDSPyEngine",
    "SteerLM",
    "evaluation_mode",
    "register_engine",
    "steer_call_config",
    "steer_lm",
    "steer_options",
]
