"""The scheduler: the one place that gathers requests into batches, and the owner of the step loop.

A call becomes a `Request` (its prompts and one validated `CallOptions`). The scheduler waits
`coalesce_ms` for latecomers (or until the prompts an adapter announced with `expect(n)` are in),
prepares each prompt (`Request.job`, a pure function), inserts the jobs into the `Decoder`, and steps
it; every step's events are routed to the request that owns them, and a request's future resolves
when its last prompt finishes. Requests that arrive while the batch decodes join it at the next step
(continuous batching) while fewer than `max_batch_size` prompts are active and, with a cache budget
(`max_cache_bytes`), while their KV cache fits in it: a prompt that does not fit waits, already
prepared, until finished prompts free room (the oldest first; one prompt always runs).

One way down, one way back: the decoder never calls the scheduler, and the scheduler never calls
the engine. Faults stay with their request: a request whose preparation fails, whose consumer
went away (a closed event loop, a broken sink) or that was cancelled ends alone; an interrupt
(KeyboardInterrupt) on the thread running the loop re-queues the other requests of the batch (same
seeds, so the same results) instead of abandoning them. A synchronous caller runs the loop on its own
thread when the engine is idle and hands it to a worker thread as soon as its own request is done.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field, replace

from .decode import Decoder
from .jobs import PromptJob, TokenContext, draw_negatives, prepare_job
from .options import CallOptions
from .results import SteerResult, StreamEvent

__all__ = ["EngineStats", "Request", "Scheduler", "IDLE_S", "EXPECT_WAIT_S"]

IDLE_S = 2.0
#: Longest wait for prompts announced with `Scheduler.expect` before a batch starts without them.
EXPECT_WAIT_S = 1.0

Sink = Callable[[list[StreamEvent]], None]

_LIVE: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for scheduler in list(_LIVE):
        scheduler.close()


@dataclass
class EngineStats:
    """Counters of an engine's decode loop since the engine was created (`engine.stats` is a
    snapshot; subtract two snapshots to measure a period).

    Attributes:
        batches_started: decode batches started. A batch runs until no prompt is left in it;
            prompts that join it while it runs do not start a new one.
        prompts_started: prompts that started a batch (taken after the `coalesce_ms` wait).
        prompts_admitted: prompts that joined a batch already decoding (continuous batching).
        prompts_decoded: prompts that finished (stop, length or cancelled).
        steps: decode steps run (one token for every active prompt each).
        prompts_waited: prompts that were held back, prepared, at least once because their KV cache
            did not fit in the cache budget (`SteerEngine(max_cache_mb=...)`).
        peak_cache_mb: the largest estimated KV cache of the prompts decoding together (each
            prompt's rows with room for their new tokens; tracked only under a cache budget), in MB.
    """

    batches_started: int = 0
    prompts_started: int = 0
    prompts_admitted: int = 0
    prompts_decoded: int = 0
    steps: int = 0
    prompts_waited: int = 0
    peak_cache_mb: float = 0.0


@dataclass(eq=False)
class Request:
    """One generate/stream call: its prompts, its resolved options, and where its results go."""

    prompts: list[str]
    options: CallOptions
    sink: Sink | None = None
    future: Future = field(default_factory=Future)
    cancelled: bool = False
    results: dict[int, SteerResult] = field(default_factory=dict)
    taken: set[int] = field(default_factory=set)
    streamed: bool = False  # a sink received events (it cannot be replayed after an interrupt)
    shared_negatives: list[str] | None = None  # `share_negatives`: the call's one draw
    prepared: dict[int, PromptJob] = field(default_factory=dict)  # held back by the cache budget
    waited: set[int] = field(default_factory=set)  # prompts the cache budget ever held back

    def job(self, tokens: TokenContext, i: int) -> PromptJob:
        """Prompt `i` prepared for the decoder (a pure function of the request and the pool; a prompt
        held back by the cache budget keeps the job it was first prepared as)."""
        if i in self.prepared:
            return self.prepared.pop(i)
        o = self.options
        negatives = None if o.negatives is None else o.negatives[i]
        if negatives is None and o.config.share_negatives:  # drawn once, by the call's first seed
            if self.shared_negatives is None:
                self.shared_negatives = draw_negatives(o.config, o.pool, random.Random(o.seeds[0]))
            negatives = self.shared_negatives
        return prepare_job(
            tokens,
            self.prompts[i],
            o.config,
            seed=o.seeds[i],
            pool=o.pool,
            negatives=negatives,
            base_prompt=None if o.base_prompts is None else o.base_prompts[i],
            return_scores=o.return_scores,
            index=i,
            constraint=o.constraint,
        )

    @property
    def done(self) -> bool:
        return self.cancelled or self.future.done()

    def fail(self, err: BaseException) -> None:
        """End this request with `err` (no effect once its future is resolved or cancelled)."""
        self.cancelled = True
        with contextlib.suppress(InvalidStateError):
            self.future.set_exception(err)


class Scheduler:
    """Serve `Request`s with one `Decoder`, one thread stepping it at a time.

    Args:
        decoder: the decoder to drive.
        tokens: the tokenizer facts jobs are prepared with (`Request.job`, called when a prompt
            enters the decoder, so it sees the pool as it stands then).
        max_batch_size: most prompts decoding at once.
        coalesce_ms: how long to wait for more requests before starting a batch.
        max_cache_bytes: most KV cache (estimated by `Decoder.cache_bytes`) of the prompts decoding
            at once; None: no bound.
    """

    def __init__(
        self,
        decoder: Decoder,
        tokens: TokenContext,
        *,
        max_batch_size: int,
        coalesce_ms: float,
        max_cache_bytes: int | None = None,
    ) -> None:
        self.decoder, self.tokens = decoder, tokens
        self.max_batch_size, self.coalesce_ms = max_batch_size, coalesce_ms
        self.max_cache_bytes = max_cache_bytes
        self._costs: dict[int, int] = {}  # decoder job id -> its estimated cache bytes
        self._next_cost = 0  # the cache bytes of the oldest held prompt (0: none held)
        self._lock = threading.Condition()
        self._pending: list[Request] = []
        self._owners: dict[int, tuple[Request, int]] = {}  # decoder job id -> (request, prompt index)
        self._expectations: list[list[int]] = []  # [announced, arrived] per open `expect`
        self._worker: threading.Thread | None = None
        self._pid = os.getpid()
        self._closed = False
        self._stats = EngineStats()

    @property
    def stats(self) -> EngineStats:
        """A snapshot of the loop's counters."""
        return replace(self._stats)

    # ------------------------------------------------------------------ the calling side
    def submit(self, req: Request, *, run_here: bool = False) -> Request:
        """Queue `req` and make sure a thread serves it.

        With `run_here=True` (synchronous callers) and no loop running, the calling thread runs the
        loop until its own request is done, then hands the loop to a worker thread if other work is
        left. Decoding then stays on the thread that called, which matters on CPU: torch work split
        across two threads' OpenMP pools ran about 30% slower here than on one thread.
        """
        lead = False
        self._after_fork()  # before taking the lock: a forked child must not wait on the parent's
        with self._lock:
            self._closed = False
            self._pending.append(req)
            for announcement in self._expectations:
                announcement[1] += len(req.prompts)
            self._lock.notify_all()
            if self._worker is None:
                _LIVE.add(self)
                if run_here:
                    self._worker, lead = threading.current_thread(), True
                else:
                    self._start_worker()
        if lead:
            self._lead(req)
        return req

    @contextlib.contextmanager
    def expect(self, n: int) -> Iterator[None]:
        """Tell the scheduler that `n` prompts are about to arrive (e.g. from LangChain's batch
        threads): a batch starting meanwhile waits for them (at most `EXPECT_WAIT_S`). Prompts
        submitted after the announcement count towards it; the announcement ends with the block."""
        announcement = [n, 0]
        with self._lock:
            self._expectations.append(announcement)
        try:
            yield
        finally:
            with self._lock:
                self._expectations.remove(announcement)
                self._lock.notify_all()

    def _still_expected(self) -> int:
        """Announced prompts that have not arrived yet (call with `_lock` held)."""
        return sum(max(0, n - arrived) for n, arrived in self._expectations)

    def close(self) -> None:
        """Stop the worker once it has finished what it is doing."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
            worker = self._worker
        if worker is not None and worker.is_alive() and worker is not threading.current_thread():
            worker.join(timeout=5)

    # ------------------------------------------------------------------ threads
    def _after_fork(self) -> None:
        """A forked child (datasets' num_proc) starts with no loop: the parent's thread is not ours."""
        if self._pid != os.getpid():
            self._lock, self._pending, self._owners, self._costs = threading.Condition(), [], {}, {}
            self._next_cost = 0
            self._worker, self._pid, self._expectations = None, os.getpid(), []
            self.decoder = self.decoder.fresh()

    def _start_worker(self) -> None:
        """Start a background loop (call with `_lock` held, when no thread runs the loop)."""
        self._worker = threading.Thread(target=self._serve, name="steer-engine", daemon=True)
        self._worker.start()

    def _lead(self, req: Request) -> None:
        """Run the loop on the calling thread until `req` is done, then hand it over."""
        try:
            self._serve(until=req, idle_s=0.0)
        except BaseException as err:  # an interrupt on this thread: nobody else may be left waiting
            req.fail(err)
            self._abandon_batch(err)
            raise
        finally:
            with self._lock:
                if self._worker is threading.current_thread():
                    self._worker = None
                    if self._pending or len(self.decoder):
                        self._start_worker()

    def _abandon_batch(self, err: BaseException) -> None:
        """The step loop was interrupted mid-step: the decoder's state cannot be trusted. Requests
        that streamed events fail (a replay would repeat text); the others go back to the queue and
        restart their unfinished prompts with the same seeds (the same results)."""
        owners = {req for req, _ in self._owners.values()}
        self._owners, self._costs, self._next_cost = {}, {}, 0
        self.decoder = self.decoder.fresh()
        with self._lock:
            for req in owners:
                if req.done:
                    continue
                if req.streamed:
                    req.fail(
                        RuntimeError(f"decoding was interrupted by {type(err).__name__} in another caller")
                    )
                    continue
                req.taken = set(req.results)
                if req not in self._pending:
                    self._pending.append(req)

    # ------------------------------------------------------------------ the loop
    def _serve(self, until: Request | None = None, idle_s: float = IDLE_S) -> None:
        while until is None or not until.done:
            if not len(self.decoder):
                batch = self._take_batch(idle_s)
                if batch is None:
                    return
                if self._insert(batch):
                    self._stats.batches_started += 1
                continue
            self._step()
            if until is not None and until.done:
                return  # the caller's request is done: hand the loop over (see `_lead`)
            self._insert(self._take_now(), admitted=True)

    def _step(self) -> None:
        for job_id, (req, _) in self._owners.items():
            if req.done:
                self.decoder.cancel(job_id)
        try:
            events = self.decoder.step()
            self._stats.steps += 1
        except Exception as err:  # an engine fault: fail this batch, keep serving
            self._fail_batch(err)
            return
        self._route(events)

    def _take_batch(self, idle_s: float) -> list[tuple[Request, list[int]]] | None:
        """Wait for work, let latecomers join, take up to `max_batch_size` prompts. Returns None
        when this thread should stop serving (closed, or idle for `idle_s`)."""
        with self._lock:
            idle_until = time.monotonic() + idle_s
            while not self._live_pending():
                left = idle_until - time.monotonic()
                if self._closed or left <= 0:
                    if self._worker is threading.current_thread():
                        self._worker = None
                    return None
                self._lock.wait(left)
            start = time.monotonic()
            while self._waiting_count() < self.max_batch_size:
                want_more = self._still_expected() > 0
                limit = EXPECT_WAIT_S if want_more else self.coalesce_ms / 1000
                left = start + limit - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(left)
            return self._take(self.max_batch_size)

    def _take_now(self) -> list[tuple[Request, list[int]]]:
        """Prompts that can join the running batch now (no coalescing wait)."""
        free = self.max_batch_size - len(self.decoder)
        if free <= 0 or not self._pending:  # unlocked peek: a request missed now joins next step
            return []
        if self.max_cache_bytes is not None:  # the oldest held prompt goes first: wait until it fits
            in_use = sum(self._costs.values())
            if in_use >= self.max_cache_bytes or in_use + self._next_cost > self.max_cache_bytes:
                return []
        with self._lock:
            return self._take(free)

    def _live_pending(self) -> bool:
        self._pending = [r for r in self._pending if not r.done and len(r.taken) < len(r.prompts)]
        return bool(self._pending)

    def _waiting_count(self) -> int:
        return sum(len(r.prompts) - len(r.taken) for r in self._pending if not r.done)

    def _take(self, room: int) -> list[tuple[Request, list[int]]]:
        """Take up to `room` pending prompts, oldest request first (call with `_lock` held)."""
        batch: list[tuple[Request, list[int]]] = []
        for req in self._pending:
            if room <= 0:
                break
            take = [] if req.done else [i for i in range(len(req.prompts)) if i not in req.taken][:room]
            if take:
                batch.append((req, take))
                req.taken.update(take)
                room -= len(take)
        self._live_pending()
        return batch

    def _insert(self, batch: list[tuple[Request, list[int]]], admitted: bool = False) -> int:
        """Prepare and insert `batch`; a request whose preparation fails fails alone."""
        jobs: list[PromptJob] = []
        owners: list[tuple[Request, int]] = []
        for req, indices in batch:
            try:
                prepared = [req.job(self.tokens, i) for i in indices]
            except Exception as err:
                req.fail(err)
                continue
            jobs += prepared
            owners += [(req, i) for i in indices]
        costs = [self.decoder.cache_bytes(j) for j in jobs] if self.max_cache_bytes is not None else []
        held_back = False
        if costs:
            taken = len(jobs)
            jobs, owners, costs = self._fit(jobs, owners, costs)
            held_back = len(jobs) < taken or any(i in req.waited for req, i in owners)
        if jobs:  # one prefill for every request taken together
            try:
                # leaves the running batch unchanged if it raises
                ids = self.decoder.insert(jobs, memory_bound=held_back)
            except Exception as err:
                for req, _ in owners:
                    req.fail(err)
                return 0
            for job_id, owner in zip(ids, owners, strict=True):
                self._owners[job_id] = owner
            if costs:
                self._costs.update(zip(ids, costs, strict=True))
                in_use = sum(self._costs.values()) / 2**20
                self._stats.peak_cache_mb = max(self._stats.peak_cache_mb, in_use)
        inserted = len(jobs)
        if admitted:
            self._stats.prompts_admitted += inserted
        else:
            self._stats.prompts_started += inserted
        return inserted

    def _fit(
        self, jobs: list[PromptJob], owners: list[tuple[Request, int]], costs: list[int]
    ) -> tuple[list[PromptJob], list[tuple[Request, int]], list[int]]:
        """The prefix of `jobs` whose caches fit in the budget next to the running batch (at least
        one job when nothing runs). The rest go back to the queue as prepared jobs, ahead of
        prompts not taken yet, so a held prompt keeps its place and its negatives."""
        in_use = sum(self._costs.values())
        n = 0
        while n < len(jobs) and (in_use + costs[n] <= self.max_cache_bytes or (n == 0 and not self._costs)):
            in_use += costs[n]
            n += 1
        self._next_cost = costs[n] if n < len(jobs) else 0
        if n == len(jobs):
            return jobs, owners, costs
        with self._lock:
            held: list[Request] = []
            for job, (req, i) in zip(jobs[n:], owners[n:], strict=True):
                req.prepared[i] = job
                req.taken.discard(i)
                if i not in req.waited:
                    req.waited.add(i)
                    self._stats.prompts_waited += 1
                if req not in held:
                    held.append(req)
            self._pending = held + [r for r in self._pending if r not in held]
        return jobs[:n], owners[:n], costs[:n]

    def _route(self, events: list[tuple[int, StreamEvent]]) -> None:
        """Send each event to its request; resolve requests whose last prompt finished."""
        by_req: dict[Request, list[StreamEvent]] = {}
        for job_id, ev in events:
            req, _ = self._owners[job_id]
            if ev.result is not None:
                del self._owners[job_id]
                self._costs.pop(job_id, None)
                self._stats.prompts_decoded += 1
            if req.done:
                continue
            by_req.setdefault(req, []).append(ev)
            if ev.result is not None:
                req.results[ev.index] = ev.result
                opts = req.options
                if opts.add_to_pool and ev.result.finish_reason != "cancelled":
                    opts.pool.add([ev.result.text])  # later prompts draw it as a negative
        for req, evs in by_req.items():
            if req.sink is not None:
                try:
                    req.sink(evs)
                    req.streamed = True
                except Exception as err:  # its consumer went away: end this request only
                    req.fail(err)
                    continue
            if len(req.results) == len(req.prompts):
                with contextlib.suppress(InvalidStateError):
                    req.future.set_result([req.results[i] for i in range(len(req.prompts))])

    def _fail_batch(self, err: Exception) -> None:
        for req, _ in list(self._owners.values()):
            req.fail(err)
        self._owners, self._costs, self._next_cost = {}, {}, 0
        self.decoder = self.decoder.fresh()
