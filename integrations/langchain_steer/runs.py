"""One `SteerLLM.generate` over n seeded prompts as n single-prompt calls (for LangChain's cache).

LangChain's LLM cache keys a prompt by its text and the model's settings, but in one seeded call
prompt *i* is decoded with `seed + i`: two equal prompts of a batch would share one key, and a
prompt cached at position 3 would be served for a call where it stands at position 0. So, while a
cache is in use, a seeded multi-prompt call runs each prompt as its own call with its own seed
(its own cache entry and callback run) on a thread each; the engine's scheduler coalesces the
threads' prompts into one decode batch.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from langchain_core.callbacks import BaseCallbackManager
from langchain_core.outputs import LLMResult

__all__ = ["merge_results", "per_prompt_runs", "run_each"]

#: Threads at most for one call's prompts (the engine batches them anyway).
MAX_THREADS = 32
_PER_PROMPT = ("tags", "metadata", "run_name", "run_id")


def per_prompt_runs(n: int, callbacks: Any, kwargs: dict[str, Any]) -> list[tuple[Any, dict[str, Any]]]:
    """(callbacks, kwargs) of each of `n` prompts. `BaseLLM.batch` hands `generate` one entry per
    prompt for callbacks, tags, metadata and run names (LangChain's own test for that form);
    otherwise every prompt gets the same, except a single `run_id`, which cannot be shared."""
    listed = (
        isinstance(callbacks, list)
        and bool(callbacks)
        and (isinstance(callbacks[0], list | BaseCallbackManager) or callbacks[0] is None)
    )
    runs = []
    for i in range(n):
        kw = dict(kwargs)
        for key in _PER_PROMPT:
            value = kw.get(key)
            if listed and isinstance(value, list) and len(value) == n:
                kw[key] = value[i]
            elif key == "run_id" and value is not None:
                kw[key] = value[i] if isinstance(value, list) and len(value) == n else None
        runs.append((callbacks[i] if listed else callbacks, kw))
    return runs


def run_each(n: int, call: Callable[[int], LLMResult]) -> list[LLMResult]:
    """`call(i)` for i in range(n), on up to `MAX_THREADS` threads, in order."""
    with ThreadPoolExecutor(max_workers=min(n, MAX_THREADS)) as pool:
        return list(pool.map(call, range(n)))


def merge_results(results: list[LLMResult]) -> LLMResult:
    """One `LLMResult` of single-prompt results: generations in order, token usage summed."""
    usage: dict[str, int] = {}
    output: dict[str, Any] = {}
    for r in results:
        for k, v in ((r.llm_output or {}).get("token_usage") or {}).items():
            usage[k] = usage.get(k, 0) + v
        output.update({k: v for k, v in (r.llm_output or {}).items() if k != "token_usage"})
    runs = [info for r in results for info in (r.run or [])]
    return LLMResult(
        generations=[g for r in results for g in r.generations],
        llm_output={**output, "token_usage": usage},
        run=runs or None,
    )
