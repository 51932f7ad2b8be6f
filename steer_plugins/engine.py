"""`SteerEngine`: load an expert/base pair once, then generate, stream or serve many threads.

All decoding happens on one worker thread. Calls from any thread (LangChain, DSPy and Ray call
from several at once) become requests; requests that arrive together are coalesced into one
batch, so eight concurrent single-prompt calls cost about one batch of eight; calls that arrive
while a batch decodes join it at the next step (continuous batching, up to `max_batch_size`).
Each prompt keeps its own seed, so a result never depends on which other prompts shared its batch.
"""

from __future__ import annotations

import asyncio
import queue
import random
import secrets
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import torch

from .config import SteerConfig
from .decode import PromptJob, SteerResult, StreamEvent, run_decode
from .negatives import NegativePool, fit_negatives
from .scheduler import EngineStats, Request, Scheduler
from .sources import DEFAULT_MODEL, LoadedModels, context_window, load_models
from .stopping import eos_token_ids

__all__ = ["SteerEngine", "DEFAULT_MODEL"]

Negatives = Sequence[Sequence[str]] | None


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
        device, dtype: where and how to hold the weights (e.g. "cuda", torch.bfloat16).
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
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"`max_batch_size` must be >= 1, got {max_batch_size}")
        if config is not None and not isinstance(config, SteerConfig):
            raise TypeError(
                f"`config` must be a SteerConfig, got {type(config).__name__}: SteerConfig(**fields)"
            )
        self.config = config or SteerConfig()
        self.models: LoadedModels = load_models(
            expert, base, tokenizer, device=device, dtype=dtype, trust_remote_code=trust_remote_code
        )
        self.tokenizer = self.models.tokenizer
        self._name = name
        self.pool = pool if isinstance(pool, NegativePool) else NegativePool(pool or ())
        self.peft_mode = peft_mode
        self.context_window = context_window(self.models.expert)
        self.min_forward_rows = min_forward_rows or (4 if self.device.type == "cpu" else 1)
        self._eos = frozenset(eos_token_ids(self.tokenizer, self.models.expert))
        self._pad_id = self._pick_pad_id()
        self._scheduler = Scheduler(
            self._prepare_job, self._decode, max_batch_size=max_batch_size, coalesce_s=coalesce_ms / 1000
        )
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
        """Hash of the model pair and the (overridden) config: equal iff the outputs' distribution is."""
        import hashlib

        cfg = self.config.merged(**overrides)
        return hashlib.sha256(f"{self.name}|{cfg.fingerprint()}".encode()).hexdigest()[:12]

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

    def generate(
        self,
        prompts: Sequence[str],
        negatives: Negatives = None,
        return_scores: bool = False,
        *,
        add_to_pool: bool | None = None,
        seeds: Sequence[int] | None = None,
        base_prompts: Sequence[str] | None = None,
        pool: NegativePool | None = None,
        progress: bool = False,
        **overrides: Any,
    ) -> list[SteerResult]:
        """Generate one result per prompt with STEER decoding.

        Args:
            prompts: instruction prompts (plain text; see `apply_chat_template` for chat models).
            negatives: None to draw K from `self.pool` per prompt, or one list of strings per prompt
                (joined with `negative_separator` into that prompt's negative context).
            return_scores: keep the combined per-step scores in `result.scores`.
            add_to_pool: append outputs to the pool (default: when negatives came from the pool and
                the pool was seeded, as the paper does).
            progress: show a progress bar (prompts, tokens/s).
            seeds: one seed per prompt (default: `seed`, `seed+1`, ... or fresh entropy).
            base_prompts: one prompt per prompt for the base branch (default: the same prompt). This
                is the prompted expert: the expert branch sees a domain instruction and examples in
                context, the base branch the plain instruction, on the same weights.
            pool: draw negatives from (and append outputs to) this pool instead of `engine.pool`.
            **overrides: any `SteerConfig` field for this call.

        Returns:
            `SteerResult`s, in prompt order.
        """
        bar = None
        sink = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(prompts), unit="prompt", desc="steer")
            t0, tokens = time.perf_counter(), [0]

            def sink(events: list[StreamEvent]) -> None:
                for ev in events:
                    if ev.result is not None:
                        tokens[0] += ev.result.completion_tokens
                        bar.update(1)
                        bar.set_postfix(tok_s=f"{tokens[0] / (time.perf_counter() - t0):.1f}")

        req = self._submit(  # a synchronous call decodes on its own thread when the engine is idle
            prompts,
            negatives,
            return_scores,
            overrides,
            sink,
            add_to_pool,
            seeds,
            pool,
            base_prompts,
            run_here=True,
        )
        try:
            return req.future.result()
        finally:
            if bar is not None:
                bar.close()

    def stream(
        self,
        prompts: Sequence[str],
        negatives: Negatives = None,
        *,
        add_to_pool: bool | None = None,
        seeds: Sequence[int] | None = None,
        base_prompts: Sequence[str] | None = None,
        pool: NegativePool | None = None,
        **overrides: Any,
    ) -> Iterator[StreamEvent]:
        """Yield `StreamEvent` text deltas of every prompt as they are decoded (batch > 1 allowed).

        Closing the iterator early cancels the prompts still running.
        """
        q: queue.Queue = queue.Queue()
        req = self._submit(
            prompts, negatives, False, overrides, q.put, add_to_pool, seeds, pool, base_prompts
        )
        req.future.add_done_callback(lambda _: q.put(None))
        try:
            while (events := q.get()) is not None:
                yield from events
            req.future.result()  # re-raise a worker error
        finally:
            req.cancelled = True

    async def agenerate(
        self,
        prompts: Sequence[str],
        negatives: Negatives = None,
        return_scores: bool = False,
        *,
        add_to_pool: bool | None = None,
        seeds: Sequence[int] | None = None,
        base_prompts: Sequence[str] | None = None,
        pool: NegativePool | None = None,
        **overrides: Any,
    ) -> list[SteerResult]:
        """`generate` for asyncio: awaits the worker without blocking the event loop."""
        req = self._submit(
            prompts, negatives, return_scores, overrides, None, add_to_pool, seeds, pool, base_prompts
        )
        return await asyncio.wrap_future(req.future)

    async def astream(
        self,
        prompts: Sequence[str],
        negatives: Negatives = None,
        *,
        add_to_pool: bool | None = None,
        seeds: Sequence[int] | None = None,
        base_prompts: Sequence[str] | None = None,
        pool: NegativePool | None = None,
        **overrides: Any,
    ) -> AsyncIterator[StreamEvent]:
        """`stream` for asyncio."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        sink = lambda evs: loop.call_soon_threadsafe(q.put_nowait, evs)  # noqa: E731
        req = self._submit(prompts, negatives, False, overrides, sink, add_to_pool, seeds, pool, base_prompts)
        req.future.add_done_callback(lambda _: loop.call_soon_threadsafe(q.put_nowait, None))
        try:
            while (events := await q.get()) is not None:
                for ev in events:
                    yield ev
            req.future.result()
        finally:
            req.cancelled = True

    def logits_processor(self, negatives: Sequence[str] | None = None, **overrides: Any):
        """A `transformers.LogitsProcessor` applying STEER inside `expert.generate()` (see processor.py)."""
        from .processor import SteerLogitsProcessor

        return SteerLogitsProcessor(self, negatives=negatives, **overrides)

    # ------------------------------------------------------------------ request preparation
    def _pick_pad_id(self) -> int:
        for cand in (getattr(self.tokenizer, "pad_token_id", None), *sorted(self._eos)):
            if isinstance(cand, int):
                return cand
        return 0  # any id works: padded positions are masked out

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=4)

    def _submit(
        self,
        prompts: Sequence[str],
        negatives: Negatives,
        return_scores: bool,
        overrides: dict[str, Any],
        sink: Callable[[list[StreamEvent]], None] | None,
        add_to_pool: bool | None,
        seeds: Sequence[int] | None,
        pool: NegativePool | None,
        base_prompts: Sequence[str] | None = None,
        *,
        run_here: bool = False,
    ) -> Request:
        prompts = self._check_prompts(prompts, "prompts")
        cfg = self.config.merged(**overrides)
        if negatives is not None and (
            isinstance(negatives, str)
            or len(negatives) != len(prompts)
            or any(isinstance(n, str) or not all(isinstance(x, str) for x in n) for n in negatives)
        ):
            raise ValueError(
                f"`negatives` must be one list of strings per prompt ({len(prompts)} lists); for shared "
                "negatives pass [negs] * len(prompts), or None to draw from engine.pool"
            )
        if seeds is not None:
            seeds = list(seeds)
            if len(seeds) != len(prompts) or not all(isinstance(x, int) for x in seeds):
                raise ValueError(f"`seeds` must be one int per prompt ({len(prompts)}), got {seeds!r}")
        else:
            base_seed = cfg.seed if cfg.seed is not None else secrets.randbits(62)
            seeds = [base_seed + i for i in range(len(prompts))]
        if pool is not None and not isinstance(pool, NegativePool):
            raise TypeError(f"`pool` must be a NegativePool, got {type(pool).__name__}: NegativePool(texts)")
        pool = pool if pool is not None else self.pool
        if add_to_pool is None:
            add_to_pool = negatives is None and pool.num_real > 0
        req = Request(
            prompts=list(prompts),
            config=cfg,
            seeds=seeds,
            pool=pool,
            base_prompts=self._check_prompts(base_prompts, "base_prompts", len(prompts))
            if base_prompts is not None
            else None,
            negatives=negatives,
            return_scores=return_scores,
            add_to_pool=add_to_pool,
            sink=sink,
        )
        return self._scheduler.submit(req, run_here=run_here)

    @staticmethod
    def _check_prompts(prompts: Any, name: str, expected: int | None = None) -> list[str]:
        if isinstance(prompts, str) or not isinstance(prompts, Sequence):
            raise TypeError(
                f"`{name}` must be a list of strings, got {type(prompts).__name__}: wrap one prompt in a list"
            )
        if len(prompts) == 0:
            raise ValueError(f"`{name}` is empty: pass at least one prompt")
        if expected is not None and len(prompts) != expected:
            raise ValueError(f"`{name}` must have one entry per prompt ({expected}), got {len(prompts)}")
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise TypeError(f"{name.removesuffix('s')} #{i} must be a str, got {type(p).__name__}")
            if not p:
                raise ValueError(
                    f"{name.removesuffix('s')} #{i} is empty: STEER conditions expert and base on the prompt; pass text"
                )
        return list(prompts)

    def _prepare_job(self, req: Request, i: int) -> PromptJob:
        cfg, tok = req.config, self.tokenizer
        limit = self.context_window - cfg.max_new_tokens
        if limit < 1:
            raise ValueError(
                f"`max_new_tokens` ({cfg.max_new_tokens}) leaves no room for the prompt in the model's "
                f"{self.context_window}-token context window: lower max_new_tokens"
            )
        ids = tok(req.prompts[i]).input_ids
        truncated = max(0, len(ids) - limit)
        ids = ids[truncated:]
        base_ids = tok(req.base_prompts[i]).input_ids[-limit:] if req.base_prompts is not None else None
        if not ids:
            raise ValueError(f"prompt #{i} tokenises to nothing: pass text the tokenizer can encode")
        if req.negatives is not None:
            drawn = list(req.negatives[i])
        elif cfg.eta > 0 and len(req.pool) > 0:
            drawn = req.pool.draw(cfg.num_negatives, random.Random(req.seeds[i]))
        else:
            drawn = []
            if cfg.eta > 0:
                self._warn_once(
                    "empty-pool",
                    "eta > 0 but the negative pool is empty and no `negatives` were given: negative prompting "
                    "is off. Seed it with real examples: SteerEngine(..., pool=[...]) or engine.pool.add([...], real=True)",
                )
        budget = min(cfg.negative_max_tokens or limit, limit)
        contexts: list[list[int]] = []
        if cfg.negative_form == "concat":
            fit = fit_negatives(drawn, self.count_tokens, budget, cfg.negative_separator)
            if fit.used:
                contexts.append(tok(cfg.negative_separator.join(fit.used)).input_ids)
        else:
            fit = fit_negatives([], self.count_tokens, budget)
            for text in drawn:
                ctx = tok(text).input_ids
                (contexts.append(ctx), fit.used.append(text)) if len(ctx) <= budget else fit.dropped.append(
                    text
                )
        return PromptJob(
            prompt_ids=ids,
            negative_contexts=contexts,
            config=cfg,
            seed=req.seeds[i],
            stop_token_ids=(frozenset() if cfg.ignore_eos else self._eos) | frozenset(cfg.stop_token_ids),
            negatives_used=fit.used,
            negatives_dropped=fit.dropped,
            prompt_truncated_tokens=truncated,
            base_prompt_ids=base_ids,
            return_scores=req.return_scores,
            index=i,
        )

    def _decode(
        self,
        jobs: list[PromptJob],
        cancelled: Callable[[int], bool],
        admit: Callable[[int], list[PromptJob]] | None = None,
    ):
        return run_decode(
            self.models,
            jobs,
            pad_id=self._pad_id,
            peft_mode=self.peft_mode,
            min_rows=self.min_forward_rows,
            cancelled=cancelled,
            admit=admit,
            max_active=self._scheduler.max_batch_size,
        )

    @property
    def stats(self) -> EngineStats:
        """A snapshot of the decode worker's counters (`EngineStats`: batches started, prompts that
        started a batch, prompts admitted into a running batch, prompts decoded), e.g. to check that
        concurrent calls shared batches: `after.batches_started - before.batches_started`."""
        return self._scheduler.stats

    @property
    def coalesce_s(self) -> float:
        """Seconds the worker waits for concurrent calls to join a batch."""
        return self._scheduler.coalesce_s

    @coalesce_s.setter
    def coalesce_s(self, value: float) -> None:
        self._scheduler.coalesce_s = value

    @property
    def max_batch_size(self) -> int:
        """Most prompts decoded together."""
        return self._scheduler.max_batch_size

    def close(self) -> None:
        """Stop the worker thread (it also stops by itself after a short idle time)."""
        self._scheduler.close()
