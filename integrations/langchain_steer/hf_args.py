"""`HuggingFacePipeline` construction arguments, mapped onto a STEER engine before any weights load.

`HuggingFacePipeline.from_model_id(model_id, task, device=, device_map=, model_kwargs=,
pipeline_kwargs=, batch_size=)` and `HuggingFacePipeline(pipeline=pipe)` are how LangChain users
build a local model. `SteerLLM` and `ChatSteer` take the same arguments: each is either mapped onto
the engine (the expert source, `SteerEngine` arguments, `SteerConfig` fields) or refused with a
`ValueError` naming it, and all of this happens before the engine is built, so a typo never costs
a model load.

    model_id                      -> expert
    pipeline=<text-generation>    -> expert = pipeline.model, tokenizer = pipeline.tokenizer
    device=-1 / k / "cuda:1"      -> SteerEngine(device="cpu" / f"cuda:{k}" / "cuda:1")
    device_map="cpu" / "cuda:0"   -> the same device (one device only: STEER holds both models on it)
    batch_size                    -> SteerEngine(max_batch_size=...)
    model_kwargs                  -> torch_dtype / dtype, trust_remote_code, device_map
    pipeline_kwargs               -> max_new_tokens, temperature, top_k, top_p, do_sample=False
                                     (greedy), return_full_text=False
    max_tokens (LangChain's name) -> max_new_tokens
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["HF_ARGS", "translate_hf_args"]

#: Construction arguments of `HuggingFacePipeline` that SteerLLM/ChatSteer translate.
HF_ARGS = (
    "model_id",
    "pipeline",
    "task",
    "backend",
    "device",
    "device_map",
    "batch_size",
    "model_kwargs",
    "pipeline_kwargs",
    "max_tokens",
)
PIPELINE_KWARGS = ("max_new_tokens", "temperature", "top_k", "top_p", "do_sample", "return_full_text")
MODEL_KWARGS = ("torch_dtype", "dtype", "trust_remote_code", "device_map")
_SPREAD_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def translate_hf_args(data: dict[str, Any]) -> dict[str, Any]:
    """`data` (constructor keywords) with every `HF_ARGS` entry mapped onto `expert`,
    `engine_kwargs` and `SteerConfig` fields; raises `ValueError` naming what has no STEER meaning."""
    data = dict(data)
    hf = {k: data.pop(k) for k in HF_ARGS if k in data}
    if not hf:
        return data
    engine_kwargs = dict(data.get("engine_kwargs") or {})
    _check_task(hf.get("task", "text-generation"), hf.get("backend", "default"))
    if "max_tokens" in hf:
        _set_once(data, "max_new_tokens", hf["max_tokens"], "max_tokens")
    for key, value in _pipeline_kwargs(hf.get("pipeline_kwargs")).items():
        _set_once(data, key, value, f"pipeline_kwargs[{key!r}]")
    if hf.get("model_id") is not None:
        _set_once(data, "expert", hf["model_id"], "model_id")
    if hf.get("pipeline") is not None:
        expert, tokenizer = _from_pipeline(hf["pipeline"])
        _set_once(data, "expert", expert, "pipeline")
        _set_once(engine_kwargs, "tokenizer", tokenizer, "pipeline")
    model_kwargs = dict(hf.get("model_kwargs") or {})
    unknown = sorted(set(model_kwargs) - set(MODEL_KWARGS))
    if unknown:
        raise ValueError(
            f"`model_kwargs` {unknown} have no STEER equivalent (SteerEngine loads the weights itself; it "
            f"takes {list(MODEL_KWARGS)}). Load the model yourself and pass `pipeline=` or `expert=` instead"
        )
    for key in ("torch_dtype", "dtype"):
        if key in model_kwargs:
            _set_once(engine_kwargs, "dtype", _dtype(model_kwargs[key]), f"model_kwargs[{key!r}]")
    if "trust_remote_code" in model_kwargs:
        flag = model_kwargs["trust_remote_code"]
        if not isinstance(flag, bool):
            raise TypeError(f"`model_kwargs['trust_remote_code']` must be True or False, got {flag!r}")
        _set_once(engine_kwargs, "trust_remote_code", flag, "model_kwargs['trust_remote_code']")
    maps = [(n, v) for n, v in (("device_map", hf.get("device_map")),) if v is not None]
    maps += (
        [("model_kwargs['device_map']", model_kwargs["device_map"])] if "device_map" in model_kwargs else []
    )
    if hf.get("device") is not None and maps:
        raise ValueError("pass `device` or `device_map`, not both (as HuggingFacePipeline requires)")
    if hf.get("device") is not None:
        _set_once(engine_kwargs, "device", _device(hf["device"]), "device")
    for name, value in maps:
        _set_once(engine_kwargs, "device", _device_of_map(value, name), name)
    if hf.get("batch_size") is not None:
        size = hf["batch_size"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"`batch_size` must be an int >= 1, got {size!r}")
        _set_once(engine_kwargs, "max_batch_size", size, "batch_size")
    if engine_kwargs:
        data["engine_kwargs"] = engine_kwargs
    return data


def _check_task(task: Any, backend: Any) -> None:
    if task != "text-generation":
        raise ValueError(f"`task` must be 'text-generation' for STEER decoding, got {task!r}")
    if backend != "default":
        raise ValueError(
            f"`backend={backend!r}` is not supported: STEER decodes with PyTorch (backend='default')"
        )


def _pipeline_kwargs(given: Any) -> dict[str, Any]:
    """`pipeline_kwargs` as SteerConfig fields (do_sample=False: greedy; return_full_text only False)."""
    if given is None:
        return {}
    if not isinstance(given, dict):
        raise TypeError(f"`pipeline_kwargs` must be a dict, got {type(given).__name__}")
    pk = dict(given)
    unknown = sorted(set(pk) - set(PIPELINE_KWARGS))
    if unknown:
        raise ValueError(
            f"`pipeline_kwargs` {unknown} are not supported; use {list(PIPELINE_KWARGS)} or SteerConfig "
            "fields as keyword arguments"
        )
    if pk.pop("return_full_text", False):
        raise ValueError("`return_full_text=True` is not supported: STEER returns the completion only")
    if pk.pop("do_sample", True) is False:
        pk["temperature"] = 0.0
    return pk


def _from_pipeline(pipe: Any) -> tuple[Any, Any]:
    """(model, tokenizer) of a ready `transformers` text-generation pipeline."""
    model, tokenizer = getattr(pipe, "model", None), getattr(pipe, "tokenizer", None)
    if not isinstance(model, torch.nn.Module) or tokenizer is None:
        raise TypeError(
            f"`pipeline` must be a transformers text-generation pipeline (with .model and .tokenizer), got "
            f"{type(pipe).__name__}"
        )
    task = getattr(pipe, "task", "text-generation")
    if task != "text-generation":
        raise ValueError(f"`pipeline` is a {task!r} pipeline; STEER needs a 'text-generation' one")
    return model, tokenizer


def _device(value: Any) -> str | torch.device:
    """`device` as pipelines take it: -1 is the CPU, k >= 0 the k-th CUDA device."""
    if isinstance(value, bool):
        raise TypeError(f"`device` must be an int, a str or a torch.device, got {value!r}")
    if isinstance(value, int):
        if value < -1:
            raise ValueError(f"`device` must be -1 (CPU) or a CUDA index >= 0, got {value}")
        return "cpu" if value == -1 else f"cuda:{value}"
    if isinstance(value, str | torch.device):
        return value
    raise TypeError(f"`device` must be an int, a str or a torch.device, got {type(value).__name__}")


def _device_of_map(value: Any, name: str) -> str | torch.device:
    """The one device a `device_map` names; maps that spread a model over devices are refused."""
    if isinstance(value, dict):
        devices = set(value.values())
        if set(value) == {""} and len(devices) == 1:
            return _device(devices.pop())
        raise ValueError(
            f"`{name}` places layers on several devices ({sorted(map(str, devices))}); STEER holds the expert "
            "and base on one device: pass device='cuda' (or one device_map entry {'': 'cuda:0'})"
        )
    if value in _SPREAD_MAPS:
        raise ValueError(
            f"`{name}={value!r}` lets accelerate spread the model over devices; STEER holds the expert and base "
            "on one device: pass device='cuda' / 'cpu' (or device_map='cuda:0')"
        )
    return _device(value)


def _dtype(value: Any) -> torch.dtype | None:
    """A dtype given as a torch.dtype or its name ('auto' keeps the checkpoint's)."""
    if value is None or value == "auto":
        return None
    if isinstance(value, torch.dtype):
        return value
    found = getattr(torch, str(value).removeprefix("torch."), None) if isinstance(value, str) else None
    if not isinstance(found, torch.dtype):
        raise ValueError(f"`torch_dtype` must be a torch dtype or its name (e.g. 'bfloat16'), got {value!r}")
    return found


def _set_once(target: dict[str, Any], key: str, value: Any, source: str) -> None:
    """`target[key] = value`, refusing a second, different value for the same setting."""
    if key in target and target[key] is not None and target[key] is not value and target[key] != value:
        raise ValueError(f"`{source}` sets {key}={value!r}, but {key}={target[key]!r} was also given")
    target[key] = value
