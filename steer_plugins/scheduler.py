"""Request coalescing: one worker thread turns requests from many threads into decode batches.

LangChain and DSPy call a model from several threads at once. Each call becomes a `Request`; the
worker waits `coalesce_s` for latecomers, takes up to `max_batch_size` prompts across requests, and
routes every decoded event back to the request that owns it. Requests that arrive while a batch is
decoding join it at the next step boundary (continuous batching) as long as fewer than
`max_batch_size` prompts are active, so calls skewed by more than `coalesce_s` still share forwards.
Requests larger than a batch run in chunks (their later prompts join as earlier ones finish). The
worker exits after `IDLE_S` without work and restarts on demand, and it is recreated after a fork
(datasets' `num_proc`), so an idle engine holds no thread.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace

from .config import SteerConfig
from .decode import PromptJob, SteerResult, StreamEvent
from .negatives import NegativePool

__all__ = ["EngineStats", "Request", "Scheduler", "IDLE_S"]

IDLE_S = 2.0

Prepare = Callable[["Request", int], PromptJob]
Admit = Callable[[int], list[PromptJob]]
Decode = Callable[[list[PromptJob], Callable[[int], bool], Admit], Iterator[list[tuple[int, StreamEvent]]]]

_LIVE: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for scheduler in list(_LIVE):
        scheduler.close()


@dataclass
class EngineStats:
    """Counters of an engine's decode worker since the engine was created (`engine.stats` is a
    snapshot; subtract two snapshots to measure a period).

    Attributes:
        batches_started: decode batches started. A batch runs until no prompt is left in it;
            prompts that join it while it runs do not start a new one.
        prompts_started: prompts that started a batch (taken after the `coalesce_ms` wait).
        prompts_admitted: prompts that joined a batch already decoding (continuous batching).
        prompts_decoded: prompts that finished (stop, length or cancelled).
    """

    batches_started: int = 0
    prompts_started: int = 0
    prompts_admitted: int = 0
    prompts_decoded: int = 0


@dataclass(eq=False)
class Request:
    """One generate/stream call: its prompts, resolved settings, and where its results go."""

    prompts: list[str]
    config: SteerConfig
    seeds: list[int]
    negatives: Sequence[Sequence[str]] | None
    return_scores: bool
    add_to_pool: bool
    pool: NegativePool
    base_prompts: list[str] | None = None
    sink: Callable[[list[StreamEvent]], None] | None = None
    future: Future = field(default_factory=Future)
    cancelled: bool = False
    results: dict[int, SteerResult] = field(default_factory=dict)
    taken: set[int] = field(default_factory=set)


class Scheduler:
    """Serve `Request`s on one worker thread, batching those that arrive together.

    Args:
        prepare: turns (request, prompt index) into a `PromptJob` (tokenise, draw negatives); called
            on the worker when the prompt starts decoding (a batch starts or it joins one), so it sees
            the pool as it stands then.
        decode: runs a list of jobs, yielding `(job index, event)` lists; gets a `cancelled(job)` probe
            and an `admit(free_slots)` callback that returns jobs to join the running batch.
        max_batch_size: most prompts decoding at once.
        coalesce_s: how long to wait for more requests before starting a batch.
    """

    def __init__(self, prepare: Prepare, decode: Decode, *, max_batch_size: int, coalesce_s: float) -> None:
        self.prepare, self.decode = prepare, decode
        self.max_batch_size, self.coalesce_s = max_batch_size, coalesce_s
        self._start_lock = threading.Lock()
        self._lock = threading.Condition()
        self._pending: list[Request] = []
        self._worker: threading.Thread | None = None
        self._pid = os.getpid()
        self._closed = False
        self._stats = EngineStats()

    @property
    def stats(self) -> EngineStats:
        """A snapshot of the worker's counters."""
        return replace(self._stats)

    def submit(self, req: Request, *, run_here: bool = False) -> Request:
        """Queue `req` and make sure a worker serves it (the worker only exits, under the same lock,
        when nothing is pending, so no request is ever left unserved).

        With `run_here=True` (synchronous callers) and no worker running, the calling thread becomes
        the worker and returns once nothing is pending. Decoding then stays on the thread that called,
        which matters on CPU: torch work split across two threads' OpenMP pools ran about 30% slower
        here (benchmarks/bench_speed.py) than the same work on one thread.
        """
        lead = False
        with self._start_lock:
            if self._pid != os.getpid():  # a forked child: the parent's thread and locks are not ours
                self._lock, self._pending, self._worker, self._pid = (
                    threading.Condition(),
                    [],
                    None,
                    os.getpid(),
                )
            with self._lock:
                self._closed = False
                self._pending.append(req)
                self._lock.notify_all()
                if self._worker is None or not self._worker.is_alive():
                    _LIVE.add(self)
                    if run_here:
                        self._worker, lead = threading.current_thread(), True
                    else:
                        self._worker = threading.Thread(target=self._serve, name="steer-engine", daemon=True)
                        self._worker.start()
        if lead:
            try:
                self._serve(idle_s=0.0)
            finally:
                with self._lock:
                    if self._worker is threading.current_thread():  # left early (an error): hand over
                        self._worker = None
                        if self._pending:
                            self._worker = threading.Thread(
                                target=self._serve, name="steer-engine", daemon=True
                            )
                            self._worker.start()
        return req

    def close(self) -> None:
        """Stop the worker once it has finished what it is doing."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        worker = self._worker
        if worker is not None and worker.is_alive() and worker is not threading.current_thread():
            worker.join(timeout=5)

    def _take_batch(self, idle_s: float = IDLE_S) -> list[tuple[Request, list[int]]] | None:
        """Wait for work, let latecomers join for `coalesce_s`, take up to `max_batch_size` prompts.
        Returns None when the worker should exit (closed, or idle for `idle_s`)."""
        with self._lock:
            idle_until = time.monotonic() + idle_s
            while not self._pending:
                left = idle_until - time.monotonic()
                if self._closed or left <= 0:
                    self._worker = None
                    return None
                self._lock.wait(left)
            deadline = time.monotonic() + self.coalesce_s
            while sum(len(r.prompts) - len(r.taken) for r in self._pending) < self.max_batch_size:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(left)
            return self._take(self.max_batch_size)

    def _take(self, room: int) -> list[tuple[Request, list[int]]]:
        """Take up to `room` pending prompts, oldest request first (call with `_lock` held)."""
        batch: list[tuple[Request, list[int]]] = []
        for req in self._pending:
            if room == 0:
                break
            take = (
                [] if req.future.done() else [i for i in range(len(req.prompts)) if i not in req.taken][:room]
            )
            if take:
                batch.append((req, take))
                req.taken.update(take)
                room -= len(take)
        self._pending = [r for r in self._pending if len(r.taken) < len(r.prompts) and not r.future.done()]
        return batch

    def _prepare(
        self, batch: list[tuple[Request, list[int]]], owners: list[Request | None]
    ) -> list[PromptJob]:
        """Prepare the jobs of `batch`, appending each job's request to `owners`."""
        jobs: list[PromptJob] = []
        for req, indices in batch:
            try:
                prepared = [self.prepare(req, i) for i in indices]
            except Exception as err:  # one request's bad input fails that request only
                req.cancelled = True
                req.future.set_exception(err)
                continue
            jobs += prepared
            owners += [req] * len(prepared)
        return jobs

    def _admit(self, free: int, owners: list[Request | None]) -> list[PromptJob]:
        """Jobs to join the running batch: whatever is pending now (no coalescing wait)."""
        if free <= 0 or not self._pending:  # unlocked peek: a request missed now joins next step
            return []
        with self._lock:
            batch = self._take(free)
        jobs = self._prepare(batch, owners)
        self._stats.prompts_admitted += len(jobs)
        return jobs

    def _serve(self, idle_s: float = IDLE_S) -> None:
        while (batch := self._take_batch(idle_s)) is not None:
            owners: list[Request | None] = []  # job index -> request (None once its result is out)
            jobs = self._prepare(batch, owners)
            if not jobs:
                continue
            self._stats.batches_started += 1
            self._stats.prompts_started += len(jobs)
            try:
                for events in self.decode(
                    jobs,
                    lambda k, owners=owners: owners[k].cancelled,
                    lambda free, owners=owners: self._admit(free, owners),
                ):
                    self._route(events, owners)
                    for k, ev in events:
                        if ev.result is not None:
                            owners[k] = None
                            self._stats.prompts_decoded += 1
            except Exception as err:
                for req in {r for r in owners if r is not None}:
                    if not req.future.done():
                        req.future.set_exception(err)

    @staticmethod
    def _route(events: list[tuple[int, StreamEvent]], owners: list[Request | None]) -> None:
        by_req: dict[Request, list[StreamEvent]] = {}
        for k, ev in events:
            req = owners[k]
            if req.future.done():
                continue
            by_req.setdefault(req, []).append(ev)
            if ev.result is not None:
                req.results[ev.index] = ev.result
                if req.add_to_pool and ev.result.finish_reason != "cancelled":
                    req.pool.add([ev.result.text])  # later batches draw it as a negative
        for req, evs in by_req.items():
            if req.sink is not None:
                req.sink(evs)
            if len(req.results) == len(req.prompts):
                req.future.set_result([req.results[i] for i in range(len(req.prompts))])
