"""LangChain adapters for STEER decoding: `SteerLLM` (a BaseLLM) and `ChatSteer` (a BaseChatModel)."""

from .chat_models import ChatSteer
from .llms import SteerLLM
from .persist import register_engine

__all__ = ["ChatSteer", "SteerLLM", "register_engine"]
