"""`SteerEngine`: load an expert/base pair once, then generate, stream or serve many threads.

A call travels one way: `CallOptions.build` validates it once (config overrides, negatives, seeds,
stops, pool, base prompts) -> the `Scheduler` (the only place that gathers requests into batches and
the owner of the step loop) -> the `Decoder` -> events -> the call's future. Calls from many threads
(LangChain, DSPy, Ray) are coalesced into one batch; calls that arrive while a batch decodes join it
at the next step (continuous batching, up to `max_batch_size`). Each prompt keeps its own seed, so a
result never depends on which other prompts shared its batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import queue
import time
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Literal

import torch

from . import kernels, lora
from .config import SteerConfig
from .decode import Decoder
from .jobs import TokenContext
from .kv_cache import kv_elements_per_token
from .negatives import NegativePool
from .options import CallOptions, check_prompts
from .results import SteerResult, StreamEvent
from .scheduler import EngineStats, Request, Scheduler
from .sources import DEFAULT_MODEL, LoadedModels, context_window, load_models
from .stopping import eos_token_ids

__all__ = ["SteerEngine", "DEFAULT_MODEL"]


class SteerEngine:
    """STEER decoding over an expert and its base, with a negative pool.

    Args:
        expert: the fine-tuned model: an HF id or folder, a `.gguf` file, a PEFT adapter folder,
            `"smollm2-135m-instruct"` (the embedded default), or a loaded model (`PeftModel` included).
        base: the model the expert was tuned from; None with a PEFT expert means "the expert with
            its adapter off" (one set of weights in memory). None otherwise: the expert is its own
            base, so γ has no effect.
        tokenizer: needed only when the expert is given as a loaded model.
        config: default `SteerConfig`; every generate call may override fields.
        pool: real examples (a list of strings or a `NegativePool`) that seed the negative pool.
        device: where to hold the weights (e.g. "cuda").
        dtype: how to hold them (e.g. torch.bfloat16).
        trust_remote_code: off by default.
        peft_mode: "mixed" (expert and base rows in one forward) or "two_pass"; see benchmarks.
        max_batch_size: most prompts decoded together; larger requests run in chunks, each
            chunk drawing negatives from the pool as it stands (so earlier outputs count).
        coalesce_ms: how long the worker waits for concurrent calls before starting a batch; calls
            that arrive later join the running batch at its next step while it has free slots.
        name: a stable identity for cache keys (models given as objects are otherwise named by their
            config path plus their id in memory, which differs between processes).
        min_forward_rows: run forwards of 2-3 rows as 4 (default on CPU, where MKL's small-GEMM kernel
            makes 2-3 rows slower than 4; see benchmarks/bench_speed.py); 1 turns padding off.
        guidance_kv_dtype: store the KV cache of the rows that only guide (the base on the prompt,
            the expert on each negative context) in this dtype, e.g. `torch.bfloat16`; the expert's
            own row (the head) stays exact. Opt-in and not exact (scores move by about 1e-2): for
            batches whose memory is dominated by K negatives per prompt (see
            benchmarks/bench_memory.py). Part of `fingerprint()`.
        negative_prefill_dtype: prefill the negative-context rows (the expert on K negatives and
            the prompt: most of a batch's prefill FLOPs) under autocast to this dtype, e.g.
            `torch.bfloat16`; their KV cache keeps the model's dtype and decode steps stay exact.
            Opt-in and not exact. Pays on GPUs and on CPUs with native bf16 (AVX-512 BF16, AMX): 2.5x
            faster prefill there; on other CPUs bf16 is emulated and slower (a warning says so).
            Its quality against fp32 is in docs/quality.md. Part of `fingerprint()`.
        fast_linear: run the large fp32 linear layers of the engine's forwards with faster CPU
            kernels (`kernels.py`): oneDNN instead of PyTorch's default MKL, and in decode steps of
            up to 32 rows oneDNN or MKL with weights packed once instead of on every call (one more
            copy of the weights while a batch that fits its cache budget decodes; `close()` frees
            it). Still fp32, results differ by summation order only. None (default): on a CPU, each
            where a quick timing says it is at least 15 % faster here (oneDNN on AMD CPUs with
            AVX-512: about 1.3x at 24 rows, packed oneDNN 1.8x; packed MKL on Intel CPUs: 1.5x);
            True: oneDNN and packed oneDNN weights (packed MKL without oneDNN) whenever available;
            False: neither. Other users of the same model object keep PyTorch's kernels.
        max_cache_mb: bound the KV cache of the prompts decoding at once (estimated from each
            prompt's rows: expert, base and K negative contexts, each with room for its new tokens).
            A prompt that does not fit waits, with its negatives already drawn, until finished
            prompts free room; one prompt always runs. Exact: a prompt's output does not depend on
            what shares its batch. "auto" (default): `AUTO_CACHE_SHARE` (3/4) of the loaded weights'
            size, and at least `AUTO_CACHE_FLOOR_MB` (K negative contexts per prompt otherwise make the cache
            the largest memory cost: at 32 prompts and K = 10 it is 2.3x SmolLM2-135M's weights);
            a number: that many MB; None: no bound, `max_batch_size` alone decides (fastest for
            large batches).
            `engine.cache_budget_mb` is the bound in force, `engine.stats.peak_cache_mb` the
            estimate's high-water mark.

    Example:
        >>> engine = SteerEngine("smollm2-135m-instruct", pool=["Is dark matter cold?"])
        >>> r = engine.generate(["Write a question about stars:"], max_new_tokens=20, num_negatives=1)[0]
        >>> r.text, r.finish_reason, r.negatives_used
    """

    def __init__(
        self,
        expert: Any,
        base: Any = None,
        tokenizer: Any = None,
        config: SteerConfig | None = None,
        *,
        pool: NegativePool | Sequence[str] | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        trust_remote_code: bool = False,
        peft_mode: str = "mixed",
        max_batch_size: int = 32,
        coalesce_ms: float = 5.0,
        min_forward_rows: int | None = None,
        name: str | None = None,
        guidance_kv_dtype: torch.dtype | None = None,
        negative_prefill_dtype: torch.dtype | None = None,
        fast_linear: bool | None = None,
        max_cache_mb: float | Literal["auto"] | None = "auto",
    ) -> None:
        _check_arguments(
            max_batch_size=max_batch_size,
            max_cache_mb=max_cache_mb,
            config=config,
            guidance_kv_dtype=guidance_kv_dtype,
            negative_prefill_dtype=negative_prefill_dtype,
        )
        self.config = config or SteerConfig()
        self.models: LoadedModels = load_models(
            expert, base, tokenizer, device=device, dtype=dtype, trust_remote_code=trust_remote_code
        )
        self.models.guidance_kv_dtype = guidance_kv_dtype
        self.models.negative_prefill_dtype = negative_prefill_dtype
        self.models.fast_linear, self.models.packed_linear = _fast_linear(self.models, fast_linear)
        for model in self.models.distinct():  # PEFT LoRA layers: the lean forward in engine forwards
            lora.install(model)
        self.tokenizer = self.models.tokenizer
        self._name = name
        self.pool = pool if isinstance(pool, NegativePool) else NegativePool(pool or ())
        self.peft_mode = peft_mode
        self.context_window = context_window(self.models.expert)
        eos = frozenset(eos_token_ids(self.tokenizer, self.models.expert))
        self.pad_id = _pick_pad_id(self.tokenizer, eos)
        decoder = Decoder(
            self.models,
            pad_id=self.pad_id,
            peft_mode=peft_mode,
            min_forward_rows=min_forward_rows or (4 if self.device.type == "cpu" else 1),
        )
        tokens = TokenContext(self.tokenizer, self.context_window, eos)
        if max_cache_mb == "auto":
            known = kv_elements_per_token(self.models.expert) is not None
            auto = AUTO_CACHE_SHARE * _weights_mb(self.models)
            max_cache_mb = max(auto, AUTO_CACHE_FLOOR_MB) if known else None
        elif max_cache_mb is not None and kv_elements_per_token(self.models.expert) is None:
            raise ValueError(
                "`max_cache_mb` needs the size of a token's KV cache, and the expert's config does not "
                "give num_hidden_layers / num_attention_heads / hidden_size; leave max_cache_mb=None "
                "and bound the batch with max_batch_size instead"
            )
        self._scheduler = Scheduler(
            decoder,
            tokens,
            max_batch_size=max_batch_size,
            coalesce_ms=coalesce_ms,
            max_cache_bytes=None if max_cache_mb is None else int(max_cache_mb * 2**20),
        )
        self.cache_budget_mb: float | None = max_cache_mb
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ public API
    @property
    def name(self) -> str:
        """A readable identity of the expert/base pair (`name=` if given: stable across processes)."""
        return self._name or self.models.name

    @property
    def device(self) -> torch.device:
        return next(self.models.expert.parameters()).device

    def fingerprint(self, **overrides: Any) -> str:
        """Hash of the model pair's weights and the (overridden) config: equal iff the outputs'
        distribution is. Retraining an adapter in place changes it (the weights are hashed)."""
        import hashlib

        cfg = self.config.merged(**overrides)
        blob = f"{self.name}|{self.models.name}|{cfg.fingerprint()}"
        for field in ("negative_prefill_dtype", "guidance_kv_dtype"):  # not exact: other outputs
            if getattr(self.models, field) is not None:
                blob += f"|{field}={getattr(self.models, field)}"
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def count_tokens(self, text: str) -> int:
        """Tokens in `text`, tokenised the way prompts are."""
        return len(self.tokenizer(text).input_ids)

    def apply_chat_template(
        self,
        messages: Sequence[dict[str, str]],
        *,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
    ) -> str:
        """Render chat `messages` (`{"role", "content"}` dicts) with the tokenizer's chat template.

        `continue_final_message=True` leaves a final assistant message open, so generation continues
        it (a prefill); it implies `add_generation_prompt=False`.

        Raises:
            ValueError: no chat template, or a role the template cannot render.
        """
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                "the tokenizer has no chat template: pass plain-text prompts, or set tokenizer.chat_template"
            )
        for i, m in enumerate(messages):
            if (
                not isinstance(m, dict)
                or not isinstance(m.get("role"), str)
                or not isinstance(m.get("content"), str)
            ):
                raise TypeError(f"message #{i} must be a dict with str `role` and `content`, got {m!r}")
        try:
            return self.tokenizer.apply_chat_template(
                list(messages),
                tokenize=False,
                add_generation_prompt=add_generation_prompt and not continue_final_message,
                continue_final_message=continue_final_message,
            )
        except Exception as err:  # jinja2 TemplateError and raise_exception() both land here
            roles = sorted({m["role"] for m in messages})
            raise ValueError(
                f"the chat template could not render roles {roles}: {err}. Use roles the model's template "
                "supports (usually system/user/assistant) or merge the message into a user turn"
            ) from err

    def call_options(
        self,
        n: int,
        negatives: Sequence[Sequence[str]] | None = None,
        return_scores: bool = False,
        *,
        stop: Sequence[str] | str | None = None,
        **kwargs: Any,
    ) -> CallOptions:
        """Validate one call over `n` prompts into `CallOptions` (what adapters hand to `generate`).

        Args:
            n: number of prompts.
            negatives: None to draw K from the pool per prompt, or one list of strings per prompt.
            return_scores: keep the combined per-step scores in `result.scores`.
            stop: stop strings merged after the config's own (LangChain's and DSPy's `stop`).
            **kwargs: any `SteerConfig` field, and `seeds` (one per prompt; default `seed`, `seed+1`,
                ... or fresh entropy), `base_prompts` (one per prompt for the base branch: the
                prompted expert), `pool` (a `NegativePool` to draw from and grow instead of
                `engine.pool`), `add_to_pool` (default: when negatives come from a seeded pool, as the
                paper does).
        """
        opts = CallOptions.build(
            self.config, n, {**kwargs, "negatives": negatives, "return_scores": return_scores}, stop=stop
        )
        return self._resolve_pool(opts)

    def _resolve_pool(self, opts: CallOptions) -> CallOptions:
        """Fill in the pool (the engine's unless the call gave one) and whether outputs join it."""
        pool = opts.pool if opts.pool is not None else self.pool
        add = opts.add_to_pool
        if add is None:
            add = opts.negatives is None and pool.num_real > 0
        if opts.negatives is None and opts.config.eta > 0 and len(pool) == 0:
            self._warn_once(
                "empty-pool",
                "eta > 0 but the negative pool is empty and no `negatives` were given: negative prompting "
                "is off. Seed it with real examples: SteerEngine(..., pool=[...]) or "
                "engine.pool.add([...], real=True)",
            )
        return dataclasses.replace(opts, pool=pool, add_to_pool=add)

    def generate(
        self,
        prompts: Sequence[str],
        negatives: Sequence[Sequence[str]] | None = None,
        return_scores: bool = False,
        *,
        options: CallOptions | None = None,
        progress: bool = False,
        **kwargs: Any,
    ) -> list[SteerResult]:
        """Generate one result per prompt with STEER decoding.

        Args:
            prompts: instruction prompts (plain text; see `apply_chat_template` for chat models).
            negatives: see `call_options`.
            return_scores: see `call_options`.
            options: ready `CallOptions` (from `call_options`) instead of the per-call keywords.
            **kwargs: see `call_options` (any `SteerConfig` field, `seeds`, `base_prompts`, `pool`,
                `add_to_pool`).
            progress: show a progress bar (prompts, tokens/s).

        Returns:
            `SteerResult`s, in prompt order.
        """
        req = self._request(prompts, options, negatives, return_scores, kwargs)
        bar = _ProgressBar(len(req.prompts)) if progress else None
        req.sink = bar.update if bar is not None else None
        self._scheduler.submit(req, run_here=True)  # decodes on this thread when the engine is idle
        try:
            return req.future.result()
        finally:
            req.cancelled = True
            if bar is not None:
                bar.close()

    def stream(
        self,
        prompts: Sequence[str],
        negatives: Sequence[Sequence[str]] | None = None,
        *,
        options: CallOptions | None = None,
        **kwargs: Any,
    ) -> Iterator[StreamEvent]:
        """Yield `StreamEvent` text deltas of every prompt as they are decoded (batch > 1 allowed).

        Closing the iterator early cancels the prompts still running."""
        q: queue.Queue = queue.Queue()
        req = self._request(prompts, options, negatives, False, kwargs)
        req.sink = q.put
        req.future.add_done_callback(lambda _: q.put(None))
        self._scheduler.submit(req)
        try:
            while (events := q.get()) is not None:
                yield from events
            req.future.result()  # re-raise a worker error
        finally:
            req.cancelled = True

    async def agenerate(
        self,
        prompts: Sequence[str],
        negatives: Sequence[Sequence[str]] | None = None,
        return_scores: bool = False,
        *,
        options: CallOptions | None = None,
        **kwargs: Any,
    ) -> list[SteerResult]:
        """`generate` for asyncio: awaits the worker without blocking the event loop; cancelling the
        awaiting task cancels the request's prompts."""
        req = self._scheduler.submit(self._request(prompts, options, negatives, return_scores, kwargs))
        try:
            return await asyncio.wrap_future(req.future)
        finally:
            req.cancelled = True

    async def astream(
        self,
        prompts: Sequence[str],
        negatives: Sequence[Sequence[str]] | None = None,
        *,
        options: CallOptions | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[StreamEvent]:
        """`stream` for asyncio. Leaving the loop early (or closing the event loop) cancels this
        request's prompts and nothing else."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        req = self._request(prompts, options, negatives, False, kwargs)
        req.sink = lambda evs: loop.call_soon_threadsafe(q.put_nowait, evs)
        req.future.add_done_callback(lambda _: _call_soon(loop, q.put_nowait, None))
        self._scheduler.submit(req)
        try:
            while (events := await q.get()) is not None:
                for ev in events:
                    yield ev
            req.future.result()
        finally:
            req.cancelled = True

    def expect(self, n: int) -> contextlib.AbstractContextManager[None]:
        """Announce that `n` prompts are about to arrive from other threads (e.g. LangChain's batch):
        a batch starting meanwhile waits for them, so they decode together.

        Example:
            >>> with engine.expect(len(inputs)):
            ...     results = run_on_threads(inputs)  # each thread calls engine.generate([prompt])
        """
        return self._scheduler.expect(n)

    def logits_processor(self, negatives: Sequence[str] | None = None, **overrides: Any):
        """A `transformers.LogitsProcessor` applying STEER inside `expert.generate()` (see processor.py)."""
        from .processor import SteerLogitsProcessor

        return SteerLogitsProcessor(self, negatives=negatives, **overrides)

    @property
    def token_context(self) -> TokenContext:
        """The tokenizer facts jobs are prepared with (tokenizer, context window, EOS ids)."""
        return self._scheduler.tokens

    @property
    def stats(self) -> EngineStats:
        """A snapshot of the decode loop's counters (`EngineStats`: batches started, prompts that
        started a batch, prompts admitted into a running batch, prompts decoded), e.g. to check that
        concurrent calls shared batches: `after.batches_started - before.batches_started`."""
        return self._scheduler.stats

    @property
    def coalesce_ms(self) -> float:
        """Milliseconds the scheduler waits for concurrent calls to join a batch."""
        return self._scheduler.coalesce_ms

    @coalesce_ms.setter
    def coalesce_ms(self, value: float) -> None:
        self._scheduler.coalesce_ms = value

    @property
    def coalesce_s(self) -> float:
        """`coalesce_ms` in seconds (the old name, kept as an alias)."""
        return self.coalesce_ms / 1000

    @coalesce_s.setter
    def coalesce_s(self, value: float) -> None:
        self.coalesce_ms = value * 1000

    @property
    def max_batch_size(self) -> int:
        """Most prompts decoded together."""
        return self._scheduler.max_batch_size

    @property
    def min_forward_rows(self) -> int:
        """Forwards of 2..min_forward_rows-1 rows run padded to this many rows (see `RowBatch`)."""
        return self._scheduler.decoder.min_forward_rows

    def close(self) -> None:
        """Stop the worker thread (it also stops by itself after a short idle time) and free the
        packed weights of `fast_linear` (the next batch packs again)."""
        self._scheduler.close()
        for model in self.models.distinct():
            kernels.drop_packs(model)

    # ------------------------------------------------------------------ internals
    def _request(
        self,
        prompts: Sequence[str],
        options: CallOptions | None,
        negatives: Sequence[Sequence[str]] | None,
        return_scores: bool,
        kwargs: dict[str, Any],
    ) -> Request:
        prompts = check_prompts(prompts)
        if options is None:
            options = self.call_options(len(prompts), negatives, return_scores, **kwargs)
        elif negatives is not None or return_scores or kwargs:
            raise TypeError("pass either `options=` or per-call keywords, not both")
        elif options.num_prompts != len(prompts):
            raise ValueError(f"`options` were built for {options.num_prompts} prompts, got {len(prompts)}")
        else:
            options = self._resolve_pool(options)
        return Request(prompts=prompts, options=options)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=4)


def _pick_pad_id(tokenizer: Any, eos: frozenset[int]) -> int:
    for cand in (getattr(tokenizer, "pad_token_id", None), *sorted(eos)):
        if isinstance(cand, int):
            return cand
    return 0  # any id works: padded positions are masked out


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Any, *args: Any) -> None:
    """`loop.call_soon_threadsafe` that does nothing once the loop is closed (an abandoned astream)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, *args)


class _ProgressBar:
    """A tqdm bar over a call's prompts, fed with its stream events (prompts done, tokens/s)."""

    def __init__(self, total: int) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, unit="prompt", desc="steer")
        self.t0, self.tokens = time.perf_counter(), 0

    def update(self, events: list[StreamEvent]) -> None:
        for ev in events:
            if ev.result is not None:
                self.tokens += ev.result.completion_tokens
                self.bar.update(1)
                self.bar.set_postfix(tok_s=f"{self.tokens / (time.perf_counter() - self.t0):.1f}")

    def close(self) -> None:
        self.bar.close()


def _check_arguments(
    *,
    max_batch_size: int,
    max_cache_mb: Any,
    config: Any,
    guidance_kv_dtype: Any,
    negative_prefill_dtype: Any,
) -> None:
    """`SteerEngine`'s arguments that can be checked before any model loads."""
    if max_batch_size < 1:
        raise ValueError(f"`max_batch_size` must be >= 1, got {max_batch_size}")
    if not (
        max_cache_mb is None
        or max_cache_mb == "auto"
        or (isinstance(max_cache_mb, int | float) and not isinstance(max_cache_mb, bool) and max_cache_mb > 0)
    ):
        raise ValueError(
            "`max_cache_mb` must be a positive number of MB, 'auto' (the weights' size) or None "
            f"(no bound), got {max_cache_mb!r}"
        )
    if config is not None and not isinstance(config, SteerConfig):
        raise TypeError(f"`config` must be a SteerConfig, got {type(config).__name__}: SteerConfig(**fields)")
    for field, value in (
        ("guidance_kv_dtype", guidance_kv_dtype),
        ("negative_prefill_dtype", negative_prefill_dtype),
    ):
        if value is not None and not (isinstance(value, torch.dtype) and value.is_floating_point):
            raise TypeError(f"`{field}` must be a floating torch.dtype such as torch.bfloat16, got {value!r}")


#: the least cache `max_cache_mb="auto"` allows: below it memory is not what limits a run
AUTO_CACHE_FLOOR_MB = 256.0
#: `max_cache_mb="auto"` bounds the cache estimate by this share of the weights' size: what the
#: estimate leaves out (length-bucket padding, spare columns, the known-words lists, the allocator's
#: slack) adds about 65 % to it, and peak RSS at B=32 with K=10 stays within 1.5x plain sampling's
AUTO_CACHE_SHARE = 0.75


def _weights_mb(models: LoadedModels) -> float:
    """MB of the loaded weights: the expert, plus the base when it is a separate model."""
    mods = [models.expert] + ([] if models.base in (None, models.expert) else [models.base])
    seen: set[int] = set()
    total = 0
    for m in mods:
        for t in [*m.parameters(), *m.buffers()]:
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
    return total / 2**20


def _fast_linear(models: LoadedModels, wanted: bool | None) -> tuple[bool, str | None]:
    """Whether engine forwards use oneDNN linear layers, and which packed weights (`kernels.PACKINGS`)
    decode steps use (see `SteerEngine(fast_linear=...)`); installs the layers on the expert and the
    base when either."""
    param = next(models.expert.parameters())
    if wanted is False or param.device.type != "cpu" or param.dtype != torch.float32:
        return False, None
    onednn = kernels.available()
    packed = next((k for k in kernels.PACKINGS if kernels.packing_available(k)), None)
    if wanted is None and (onednn or packed):  # measured on the model's own largest per-layer projection
        shapes = Counter(
            (m.in_features, m.out_features)
            for m in models.expert.modules()
            if isinstance(m, torch.nn.Linear) and min(m.in_features, m.out_features) >= kernels.MIN_FEATURES
        )
        repeated = [s for s, n in shapes.items() if n > 1]  # per-layer projections, not the LM head
        if not repeated:
            return False, None
        shape = max(repeated, key=lambda s: s[0] * s[1])
        threads = torch.get_num_threads()
        onednn = onednn and kernels.faster_than_default(*shape, threads=threads)
        packed = kernels.best_packing(*shape, threads=threads, onednn=onednn)
    if not (onednn or packed):
        return False, None
    found = sum(kernels.install(m) for m in models.distinct())
    return onednn and found > 0, packed if found > 0 else None
