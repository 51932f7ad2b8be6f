"""The STEER decode loop: every branch of every prompt is a row of one forward pass per model per step.

`run_decode` takes prepared `PromptJob`s and yields, step by step, the `StreamEvent`s of the prompts
that produced text; the last event of each prompt carries its `SteerResult`. Prompts that finish
leave the batch (their rows are dropped from every cache), so they stop costing compute.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from .combine import combine, guard_non_finite
from .config import SteerConfig
from .rows import RowBatch, UnmergeableCache
from .sampling import Sampler, make_sampler
from .sources import LoadedModels
from .stopping import TextTracker

__all__ = ["PromptJob", "SteerResult", "StreamEvent", "run_decode", "PEFT_MODES"]

PEFT_MODES = ("mixed", "two_pass")


@dataclass
class SteerResult:
    """One prompt's output.

    Attributes:
        text: the generated text (no prompt, cut before any stop string).
        token_ids: every generated token id (an EOS that ended generation included).
        finish_reason: "stop" (EOS, stop token or stop string), "length", or "cancelled".
        negatives_used: the negative examples in this prompt's negative context.
        negatives_dropped: drawn or given, but dropped to fit the token budget.
        prompt_tokens / completion_tokens: token counts (the prompt after any truncation).
        prompt_truncated_tokens: tokens cut from the left of a prompt longer than the context window.
        fallback_steps: steps whose combined scores were unusable (NaN/inf/all masked) and fell back
            to the expert's distribution.
        scores: with `return_scores=True`, `(completion_tokens, vocab)` fp32 combined scores s_t,
            log-softmax normalised, before temperature/top-k/top-p.
        seed: the seed this prompt sampled (and drew negatives) with; reuse it to reproduce.
        config: the resolved settings.
    """

    text: str
    token_ids: list[int]
    finish_reason: str
    negatives_used: list[str]
    negatives_dropped: list[str]
    prompt_tokens: int
    completion_tokens: int
    prompt_truncated_tokens: int
    fallback_steps: int
    seed: int
    config: SteerConfig
    scores: torch.Tensor | None = None

    @property
    def warnings(self) -> list[str]:
        """Human-readable notes on what was adjusted (truncation, dropped negatives, fallbacks)."""
        notes = []
        if self.prompt_truncated_tokens:
            notes.append(
                f"prompt truncated by {self.prompt_truncated_tokens} tokens to fit the context window"
            )
        if self.negatives_dropped:
            notes.append(f"{len(self.negatives_dropped)} negative example(s) dropped to fit the token budget")
        if self.fallback_steps:
            notes.append(f"{self.fallback_steps} step(s) fell back to the expert's distribution")
        return notes


@dataclass
class StreamEvent:
    """A text delta of one prompt. `index` is the prompt's position in its request; the final event
    of a prompt has `finish_reason` set and carries the full `result`."""

    index: int
    delta: str
    token_id: int | None = None
    finish_reason: str | None = None
    result: SteerResult | None = None


@dataclass
class PromptJob:
    """One prompt, ready to decode (tokenised, negatives chosen, seed fixed)."""

    prompt_ids: list[int]
    negative_contexts: list[list[int]]
    config: SteerConfig
    seed: int
    stop_token_ids: frozenset[int]
    negatives_used: list[str] = field(default_factory=list)
    negatives_dropped: list[str] = field(default_factory=list)
    prompt_truncated_tokens: int = 0
    return_scores: bool = False
    index: int = 0  # position in the caller's request
    base_prompt_ids: list[int] | None = None  # the base branch's own prompt (prompted experts)


@dataclass
class _Row:
    job: int
    slot: int
    context: list[int]
    weight: float


@dataclass
class _JobState:
    job: PromptJob
    generator: torch.Generator
    tracker: TextTracker
    tokens: list[int] = field(default_factory=list)
    scores: list[torch.Tensor] = field(default_factory=list)
    fallbacks: int = 0
    finish: str | None = None


def _plan_rows(job_index: int, job: PromptJob, base_is_expert: bool) -> tuple[list[_Row], list[_Row]]:
    """Rows of one prompt: (expert-model rows, base rows). Zero-weight branches get no row."""
    w = job.config.branch_weights()
    # The expert doubling as its own base on the same prompt is the same branch: fold the weights.
    fold = base_is_expert and job.base_prompt_ids is None
    head = w.expert + (w.base if fold else 0.0)
    expert_rows = [_Row(job_index, 0, job.prompt_ids, head)]
    base_rows: list[_Row] = []
    slot = 1
    if w.base != 0 and not fold:
        row = _Row(job_index, slot, job.base_prompt_ids or job.prompt_ids, w.base)
        (expert_rows if base_is_expert else base_rows).append(row)  # same weights: same forward
        slot += 1
    if w.negative != 0 and job.negative_contexts:
        share = w.negative / len(job.negative_contexts)
        for ctx in job.negative_contexts:
            expert_rows.append(_Row(job_index, slot, ctx, share))
            slot += 1
    return expert_rows, base_rows


class _Group:
    """A RowBatch plus which prompt/branch each of its rows belongs to."""

    def __init__(self, batch: RowBatch, rows: list[_Row]) -> None:
        self.batch, self.rows = batch, rows

    def drop_finished(self, finished: set[int]) -> None:
        keep = [i for i, r in enumerate(self.rows) if r.job not in finished]
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if self.rows:
            self.batch.select(torch.tensor(keep, dtype=torch.long))


def _build_groups(
    models: LoadedModels,
    jobs: Sequence[PromptJob],
    pad_id: int,
    peft_mode: str,
    min_rows: int = 1,
    first_index: int = 0,
) -> list[_Group]:
    """Plan the rows of `jobs` (numbered from `first_index`) and group them into RowBatches."""
    base_is_expert = models.base is models.expert
    expert_rows: list[_Row] = []
    base_rows: list[_Row] = []
    for i, job in enumerate(jobs, start=first_index):
        e, b = _plan_rows(i, job, base_is_expert)
        expert_rows += e
        base_rows += b
    groups: list[_Group] = []
    if models.shared_weights and base_rows and peft_mode == "mixed":
        active = models.expert.active_adapter
        rows = expert_rows + base_rows
        names = [active] * len(expert_rows) + ["__base__"] * len(base_rows)
        groups.append(
            _Group(RowBatch(models.expert, pad_id=pad_id, adapter_names=names, min_rows=min_rows), rows)
        )
        return groups
    groups.append(_Group(RowBatch(models.expert, pad_id=pad_id, min_rows=min_rows), expert_rows))
    if base_rows:
        if models.shared_weights:
            groups.append(
                _Group(
                    RowBatch(models.expert, pad_id=pad_id, disable_adapter=True, min_rows=min_rows), base_rows
                )
            )
        else:
            groups.append(_Group(RowBatch(models.base, pad_id=pad_id, min_rows=min_rows), base_rows))
    return groups


def _join_groups(
    groups: list[_Group],
    outputs: list[torch.Tensor],
    new_groups: list[_Group],
    new_outputs: list[torch.Tensor],
) -> None:
    """Merge freshly prefilled groups into running groups of the same kind (in place), keeping each
    group's output rows in the order of its rows. A group with no running counterpart, or whose cache
    cannot be merged, runs as a group of its own (always correct, one more forward per step)."""
    for ng, out in zip(new_groups, new_outputs, strict=True):
        for gi, g in enumerate(groups):
            if g.batch.compatible(ng.batch):
                try:
                    g.batch.merge(ng.batch)
                except UnmergeableCache:
                    continue
                g.rows = g.rows + ng.rows
                outputs[gi] = torch.cat([outputs[gi], out])
                break
        else:
            groups.append(ng)
            outputs.append(out)


def _gather_plan(groups: list[_Group], active: list[int], device: torch.device):
    """Index and weight tensors mapping the concatenated group outputs to (prompt, branch)."""
    offset = 0
    where: dict[int, dict[int, tuple[int, float]]] = {j: {} for j in active}
    for g in groups:
        for k, r in enumerate(g.rows):
            where[r.job][r.slot] = (offset + k, r.weight)
        offset += len(g.rows)
    width = max(len(v) for v in where.values())
    idx = torch.zeros((len(active), width), dtype=torch.long)
    w = torch.zeros((len(active), width), dtype=torch.float32)
    for p, j in enumerate(active):
        for s, (row, weight) in where[j].items():
            idx[p, s], w[p, s] = row, weight
    return idx.to(device), w.to(device)


def run_decode(
    models: LoadedModels,
    jobs: Sequence[PromptJob],
    *,
    pad_id: int,
    peft_mode: str = "mixed",
    min_rows: int = 1,
    cancelled: Callable[[int], bool] | None = None,
    admit: Callable[[int], Sequence[PromptJob]] | None = None,
    max_active: int | None = None,
) -> Iterator[list[tuple[int, StreamEvent]]]:
    """Decode all `jobs` together; yield `(job index, event)` lists, one list per step.

    Args:
        models: the expert/base pair (a LoRA expert shares weights with its base).
        jobs: prepared prompts; each may carry its own config (γ, η, sampling, stops, budget).
        pad_id: id used for left padding (masked out).
        peft_mode: "mixed" runs expert and base rows of a LoRA expert in one forward
            (PEFT mixed-adapter batch); "two_pass" runs base rows as a second forward, adapter off.
        min_rows: pad forwards of 2..min_rows-1 rows up to min_rows (see `RowBatch`).
        cancelled: called with a job index each step; True finishes that job ("cancelled").
        admit: continuous batching. Called at every step boundary (after finished prompts left, and
            after the consumer handled the step's events) with the number of free slots; returns up to
            that many new jobs, which are prefilled and join the running batch. They get the next job
            indices (`len(jobs)`, `len(jobs) + 1`, ... in order of admission). A prompt's tokens and
            scores do not depend on when it joined (up to float rounding of the padded forward).
        max_active: most prompts decoding at once (free slots = max_active - active); default
            `len(jobs)`.
    """
    if peft_mode not in PEFT_MODES:
        raise ValueError(f"`peft_mode` must be one of {PEFT_MODES}, got {peft_mode!r}")
    device = next(models.expert.parameters()).device
    capacity = max_active if max_active is not None else len(jobs)
    states: list[_JobState | None] = []

    def start(new_jobs: Sequence[PromptJob]) -> tuple[list[_Group], list[torch.Tensor]]:
        first = len(states)
        for job in new_jobs:
            gen = torch.Generator(device=device)
            gen.manual_seed(job.seed)
            states.append(_JobState(job, gen, TextTracker(models.tokenizer, job.config.stop)))
        new_groups = _build_groups(models, new_jobs, pad_id, peft_mode, min_rows, first)
        return new_groups, [g.batch.prefill([r.context for r in g.rows]) for g in new_groups]

    samplers: dict[tuple, Sampler] = {}
    groups, outputs = start(jobs)
    active = list(range(len(jobs)))
    idx, weights = _gather_plan(groups, active, device)

    while active:
        all_lp = torch.cat(outputs, dim=0)
        branch_lp = all_lp[idx]  # (prompts, branches, vocab)
        alphas = [states[j].job.config.alpha for j in active]
        alpha = (
            None
            if all(a is None for a in alphas)
            else torch.tensor([math.nan if a is None else a for a in alphas], device=device)
        )
        scores = combine(branch_lp, weights, alpha=alpha)
        scores, fell_back = guard_non_finite(scores, branch_lp[:, 0])
        scores = scores.log_softmax(-1)

        next_tokens = torch.empty(len(active), dtype=torch.long, device=device)
        by_sampler: dict[tuple, list[int]] = {}
        for p, j in enumerate(active):
            c = states[j].job.config
            by_sampler.setdefault((c.temperature, c.top_k, c.top_p, c.min_p), []).append(p)
        for key, rows in by_sampler.items():
            if key not in samplers:
                t, k, tp, mp = key
                samplers[key] = make_sampler(temperature=t, top_k=k, top_p=tp, min_p=mp)
            sel = torch.tensor(rows, device=device)
            next_tokens[sel] = samplers[key](scores[sel], [states[active[p]].generator for p in rows])

        events: list[tuple[int, StreamEvent]] = []
        finished: set[int] = set()
        token_list = next_tokens.tolist()
        for p, j in enumerate(active):
            st, tok = states[j], token_list[p]
            st.tokens.append(tok)
            st.fallbacks += int(fell_back[p])
            if st.job.return_scores:
                st.scores.append(scores[p].detach().to("cpu", copy=True))
            if tok in st.job.stop_token_ids:
                st.finish = "stop"
                delta = st.tracker.flush()
            else:
                delta = st.tracker.update(st.tokens)
                if st.tracker.stopped:
                    st.finish = "stop"
                elif len(st.tokens) >= st.job.config.max_new_tokens:
                    st.finish = "length"
                    delta += st.tracker.flush()
                elif cancelled is not None and cancelled(j):
                    st.finish = "cancelled"
            if st.finish is not None:
                finished.add(j)
                events.append((j, StreamEvent(st.job.index, delta, tok, st.finish, _result(st))))
            elif delta:
                events.append((j, StreamEvent(st.job.index, delta, tok)))
        if events:
            yield events
        changed = bool(finished)
        if finished:
            active = [j for j in active if j not in finished]
            for j in finished:
                states[j] = None  # its result is out; free its scores and generator
            for g in groups:
                g.drop_finished(finished)
            groups = [g for g in groups if g.rows]
        outputs = [
            g.batch.step(torch.tensor([states[r.job].tokens[-1] for r in g.rows], dtype=torch.long))
            for g in groups
        ]
        free = capacity - len(active)
        new_jobs = list(admit(free)) if admit is not None and free > 0 else []
        if len(new_jobs) > free:
            raise RuntimeError(f"`admit` returned {len(new_jobs)} jobs for {free} free slots")
        if new_jobs:
            first = len(states)
            new_groups, new_outputs = start(new_jobs)
            _join_groups(groups, outputs, new_groups, new_outputs)
            active += range(first, first + len(new_jobs))
            changed = True
        if not active:
            break
        if changed:
            idx, weights = _gather_plan(groups, active, device)


def _result(st: _JobState) -> SteerResult:
    job = st.job
    return SteerResult(
        text=st.tracker.text,
        token_ids=list(st.tokens),
        finish_reason=st.finish or "length",
        negatives_used=list(job.negatives_used),
        negatives_dropped=list(job.negatives_dropped),
        prompt_tokens=len(job.prompt_ids),
        completion_tokens=len(st.tokens),
        prompt_truncated_tokens=job.prompt_truncated_tokens,
        fallback_steps=st.fallbacks,
        seed=job.seed,
        config=job.config,
        scores=torch.stack(st.scores) if job.return_scores and st.scores else None,
    )
