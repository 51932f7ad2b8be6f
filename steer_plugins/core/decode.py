"""The STEER decoder: every branch of every prompt is a row of one forward pass per model per step.

`Decoder` is driven from outside (mlx-lm's `BatchGenerator` style): `insert(jobs)` prefills prepared
`PromptJob`s into the running batch, `step()` decodes one token for every active prompt and returns
the `(job id, StreamEvent)`s of the prompts that produced text (the last event of a prompt carries its
`SteerResult`), `cancel(job id)` ends a prompt at the next step. Prompts that finish leave the batch
(their rows are dropped from every cache), so they stop costing compute. The decoder holds no
reference to whoever feeds it: the scheduler decides when to insert and when to step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from . import kernels, lora
from .combine import cached_continuation_tokens, combine, guard_non_finite
from .config import BranchWeights
from .constraints import Constraint, apply_constraints, parsed_output
from .jobs import PromptJob
from .kv_cache import kv_elements_per_token
from .lexicon import WordGuard, guard_bias
from .results import SteerResult, StreamEvent
from .rows import RowBatch, UnmergeableCache
from .sampling import Sampler, make_sampler
from .sources import LoadedModels
from .stopping import TextTracker

__all__ = ["PEFT_MODES", "Decoder", "PromptJob", "SteerResult", "StreamEvent", "head_weight"]

PEFT_MODES = ("mixed", "two_pass")


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


def head_weight(weights: BranchWeights, fold_base: bool) -> float:
    """The weight of the expert-on-prompt row. An expert doubling as its own base on the same prompt
    is the same branch, so the base weight folds into it (`fold_base`)."""
    return weights.expert + (weights.base if fold_base else 0.0)


def _plan_rows(job_index: int, job: PromptJob, base_is_expert: bool) -> tuple[list[_Row], list[_Row]]:
    """Rows of one prompt: (expert-model rows, base rows). Zero-weight branches get no row."""
    w = job.config.branch_weights()
    fold = base_is_expert and job.base_prompt_ids is None
    head = head_weight(w, fold)
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
    negative_prefill_dtype: torch.dtype | None = None,
) -> list[_Group]:
    """Plan the rows of `jobs` (numbered from `first_index`) and group them into RowBatches.
    `negative_prefill_dtype` (default: `models.negative_prefill_dtype` when set) prefills the
    negative-context rows in that dtype, and `models.guidance_kv_dtype` stores the KV cache of every
    row but the heads (base and negative rows) in its dtype: both opt-in and not exact (see `RowBatch`)."""
    base_is_expert = models.base is models.expert
    expert_rows: list[_Row] = []
    base_rows: list[_Row] = []
    negative: set[int] = set()  # id() of the negative-context rows
    guidance: set[int] = set()  # id() of every row but the heads (base and negative rows)
    for i, job in enumerate(jobs, start=first_index):
        e, b = _plan_rows(i, job, base_is_expert)
        expert_rows += e
        base_rows += b
        negative.update(id(r) for r in e if any(r.context is c for c in job.negative_contexts))
        guidance.update(id(r) for r in e + b if r.slot != 0)
    low = negative_prefill_dtype or models.negative_prefill_dtype
    kv_low = models.guidance_kv_dtype
    common = {
        "pad_id": pad_id,
        "min_rows": min_rows,
        "new_tokens": max(j.config.max_new_tokens for j in jobs),
        "fast_linear": models.fast_linear,
    }

    def batch(model, rows: list[_Row], **kw) -> _Group:
        if kv_low is not None:  # prefill_dtype goes with kv_dtype: both apply to `reduced_rows`
            kw.update(kv_dtype=kv_low, reduced_rows=[id(r) in guidance for r in rows])
        elif low is not None:
            kw.update(reduced_rows=[id(r) in negative for r in rows])
        if low is not None:
            kw.update(prefill_dtype=low)
        return _Group(RowBatch(model, **common, **kw), rows)

    if base_rows and models.shared_weights:  # base rows: the expert with its adapter off per row
        lora.require_unmerged(models.expert)
        if peft_mode == "mixed":
            active = models.expert.active_adapter
            names = [active] * len(expert_rows) + ["__base__"] * len(base_rows)
            return [batch(models.expert, expert_rows + base_rows, adapter_names=names)]
    groups = [batch(models.expert, expert_rows)]
    if base_rows:
        if models.shared_weights:
            groups.append(batch(models.expert, base_rows, disable_adapter=True))
        else:
            groups.append(batch(models.base, base_rows))
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


@dataclass
class _StepPlan:
    """Per-step tensors that change only when the batch does (prompts join or leave): where each
    prompt's branch rows sit in the concatenated outputs, their weights, the head-mask α per prompt,
    and the prompts grouped by sampler."""

    active: list[int]
    idx: torch.Tensor
    weights: torch.Tensor
    alpha: torch.Tensor | None
    whole_words: torch.Tensor | None  # (prompts,) bool, None when no prompt asks for it
    head_top_k: torch.Tensor | None  # (prompts,) the sampler's top-k (vocab size when off), with whole_words
    spelling_min_p: torch.Tensor | None  # (prompts,) NaN = off, with whole_words
    samplers: list[tuple[Sampler, torch.Tensor, list[int]]]
    constrained: list[tuple[int, Constraint]]  # (position, constraint) of constrained prompts
    guarded: list[tuple[int, WordGuard]]  # (position, word guard) of steered `known_words` prompts


class Decoder:
    """A running decode batch, driven by `insert`, `step` and `cancel`.

    Args:
        models: the expert/base pair (a LoRA expert shares weights with its base).
        pad_id: id used for left padding (masked out).
        peft_mode: "mixed" runs expert and base rows of a LoRA expert in one forward (PEFT
            mixed-adapter batch); "two_pass" runs base rows as a second forward, adapter off.
        min_forward_rows: pad forwards of 2..min_forward_rows-1 rows up to min_forward_rows (see
            `RowBatch`).

    A prompt's tokens and scores do not depend on when it joined or what shared its batch (each job
    samples from its own seeded generator; up to float rounding of the padded forward).
    """

    def __init__(
        self, models: LoadedModels, *, pad_id: int, peft_mode: str = "mixed", min_forward_rows: int = 1
    ) -> None:
        if peft_mode not in PEFT_MODES:
            raise ValueError(f"`peft_mode` must be one of {PEFT_MODES}, got {peft_mode!r}")
        self.models, self.pad_id, self.peft_mode = models, pad_id, peft_mode
        self.min_forward_rows = min_forward_rows
        self.device = next(models.expert.parameters()).device
        self._states: dict[int, _JobState] = {}
        self._next_id = 0
        self._groups: list[_Group] = []
        self._outputs: list[torch.Tensor] = []  # latest next-token log-probs, one tensor per group
        self._cancelled: set[int] = set()
        self._plan: _StepPlan | None = None
        self._samplers: dict[tuple, Sampler] = {}
        self._continues: torch.Tensor | None = None
        # packed weights (`kernels`: the weights' size again) while, since this batch was last empty,
        # it has stayed within `PACK_MAX_ROWS` rows and the cache budget has held no prompt back: a
        # large job's last wave does not pack (the job's peak memory is the cache's)
        self._packs = models.packed_linear

    def cache_bytes(self, job: PromptJob) -> int:
        """An estimate of the KV cache `job` holds at its longest: every row of the prompt (expert,
        base, one per negative context) keeps its context plus `max_new_tokens` tokens, in the
        row's cache dtype. Padding to a length bucket's longest row is not counted. 0 when the
        models' configs do not say how large a token's cache is."""
        expert_rows, base_rows = _plan_rows(0, job, self.models.base is self.models.expert)
        guide = self.models.guidance_kv_dtype
        total = 0
        for model, rows in ((self.models.expert, expert_rows), (self.models.base, base_rows)):
            per_token = kv_elements_per_token(model) if rows else None
            if per_token is None:
                continue
            own = next(model.parameters()).dtype.itemsize
            for r in rows:
                size = own if r.slot == 0 or guide is None else guide.itemsize
                total += (len(r.context) + job.config.max_new_tokens) * per_token * size
        return total

    @property
    def active(self) -> list[int]:
        """Ids of the prompts decoding now, in insertion order."""
        return list(self._states)

    def __len__(self) -> int:
        return len(self._states)

    def fresh(self) -> Decoder:
        """An empty decoder with the same models and settings (after a fault or a fork)."""
        return Decoder(
            self.models, pad_id=self.pad_id, peft_mode=self.peft_mode, min_forward_rows=self.min_forward_rows
        )

    def insert(self, jobs: Sequence[PromptJob], *, memory_bound: bool = False) -> list[int]:
        """Prefill `jobs` and join them to the running batch; returns their job ids. If the prefill
        raises, the running batch is unchanged. `memory_bound`: the cache budget is holding prompts
        back (or held these): the batch then keeps no packed weights until it has emptied."""
        first = self._next_id
        ids = list(range(first, first + len(jobs)))
        for model in self.models.distinct():  # a PEFT merge edits weights where packs cannot see it
            if lora.merges_changed(model):
                kernels.drop_packs(model)
        groups = _build_groups(self.models, jobs, self.pad_id, self.peft_mode, self.min_forward_rows, first)
        if not self._states:
            self._packs = self.models.packed_linear
        rows = sum(len(g.rows) for g in self._groups + groups)
        if self._packs and (memory_bound or rows > kernels.PACK_MAX_ROWS):
            self._packs = None  # and free them before this prefill adds its cache
            for model in self.models.distinct():
                kernels.drop_packs(model)
        for g in self._groups + groups:  # the one place a batch's `packed_linear` is set
            g.batch.packed_linear = self._packs
        outputs = [g.batch.prefill([r.context for r in g.rows]) for g in groups]
        self._next_id += len(jobs)
        for i, job in zip(ids, jobs, strict=True):
            gen = torch.Generator(device=self.device)
            gen.manual_seed(job.seed)
            self._states[i] = _JobState(job, gen, TextTracker(self.models.tokenizer, job.config.stop))
        _join_groups(self._groups, self._outputs, groups, outputs)
        self._plan = None
        return ids

    def cancel(self, job_id: int) -> None:
        """End `job_id` at the next step with finish reason "cancelled" (unknown ids are ignored)."""
        if job_id in self._states:
            self._cancelled.add(job_id)

    def step(self) -> list[tuple[int, StreamEvent]]:
        """Decode one token for every active prompt; finished prompts leave the batch.

        Steps, in order: combine each prompt's branch log-probs; sample; detokenise and check stops;
        drop finished prompts' rows; run the next forward for the rest."""
        if not self._states:
            return []
        plan = self._plan or self._make_plan()
        scores, fell_back = self._combine(plan)
        tokens = self._sample(plan, scores)
        events, finished = self._advance(plan, tokens, scores, fell_back)
        self._retire(finished)
        self._forward()
        return events

    # ---- the phases of a step
    def _make_plan(self) -> _StepPlan:
        active = self.active
        idx, weights = _gather_plan(self._groups, active, self.device)
        alphas = [self._states[j].job.config.alpha for j in active]
        alpha = (
            None
            if all(a is None for a in alphas)
            else torch.tensor([math.nan if a is None else a for a in alphas], device=self.device)
        )
        words = [self._states[j].job.config.whole_words for j in active]
        whole_words = torch.tensor(words, device=self.device) if any(words) else None
        ks = [self._states[j].job.config.top_k or 2**31 - 1 for j in active]
        head_top_k = torch.tensor(ks, device=self.device) if any(words) else None
        mins = [self._states[j].job.config.spelling_min_p for j in active]
        spelling_min_p = (
            torch.tensor([math.nan if m is None else m for m in mins], device=self.device)
            if any(words) and any(m is not None for m in mins)
            else None
        )
        by_key: dict[tuple, list[int]] = {}
        for p, j in enumerate(active):
            c = self._states[j].job.config
            by_key.setdefault((c.temperature, c.top_k, c.top_p, c.min_p), []).append(p)
        samplers = []
        for key, positions in by_key.items():
            if key not in self._samplers:
                t, k, tp, mp = key
                self._samplers[key] = make_sampler(temperature=t, top_k=k, top_p=tp, min_p=mp)
            sel = torch.tensor(positions, device=self.device)
            samplers.append(
                (self._samplers[key], sel, [self._states[active[p]].generator for p in positions])
            )
        constrained = [
            (p, self._states[j].job.constraint)
            for p, j in enumerate(active)
            if self._states[j].job.constraint is not None
        ]
        plain = (weights[:, 0] == 1) & ((weights != 0).sum(-1) == 1)  # combine's rule: nothing steered
        guarded = [
            (p, self._states[j].job.guard)
            for p, j in enumerate(active)
            # a grammar spells its own keys and values: constrained rows are left to it
            if self._states[j].job.guard is not None
            and self._states[j].job.constraint is None
            and not bool(plain[p])
        ]
        self._plan = _StepPlan(
            active,
            idx,
            weights,
            alpha,
            whole_words,
            head_top_k,
            spelling_min_p,
            samplers,
            constrained,
            guarded,
        )
        return self._plan

    def _combine(self, plan: _StepPlan) -> tuple[torch.Tensor, torch.Tensor]:
        # Rows hold raw logits after a step and log-probs after a prefill: everything below is
        # unchanged by a constant per row (the sum is renormalised, α compares with the head's max).
        outs = self._outputs
        branch_lp = (outs[0] if len(outs) == 1 else torch.cat(outs))[plan.idx]  # (prompts, branches, vocab)
        if plan.guarded:  # known words: before the branches combine, so floors measure from allowed tokens
            pos = torch.tensor([p for p, _ in plan.guarded], device=branch_lp.device)
            head = branch_lp[pos, 0]
            branch_lp[pos, 0] = head + guard_bias(head, [g for _, g in plan.guarded]).to(head.dtype)
        words = plan.whole_words
        continuation = self._continuation(branch_lp.shape[-1]) if words is not None else None
        scores = combine(
            branch_lp,
            plan.weights,
            alpha=plan.alpha,
            continuation=continuation,
            whole_words=words,
            head_top_k=plan.head_top_k,
            spelling_min_p=plan.spelling_min_p,
        )
        scores, fallback = apply_constraints(scores, branch_lp[:, 0], plan.constrained)
        scores, fell_back = guard_non_finite(scores, fallback)
        return scores.log_softmax(-1), fell_back

    def _continuation(self, vocab: int) -> torch.Tensor:
        """The word-continuing tokens of the expert's vocabulary (`combine.continuation_tokens`), once."""
        if self._continues is None or len(self._continues) != vocab:  # on this device, once
            self._continues = cached_continuation_tokens(self.models.tokenizer, vocab).to(self.device)
        return self._continues

    def _sample(self, plan: _StepPlan, scores: torch.Tensor) -> list[int]:
        tokens = torch.empty(len(plan.active), dtype=torch.long, device=self.device)
        for sampler, sel, generators in plan.samplers:
            tokens[sel] = sampler(scores[sel], generators)
        return tokens.tolist()

    def _advance(
        self, plan: _StepPlan, tokens: list[int], scores: torch.Tensor, fell_back: torch.Tensor
    ) -> tuple[list[tuple[int, StreamEvent]], set[int]]:
        """Append each prompt's token, find stops, and build the step's events."""
        events: list[tuple[int, StreamEvent]] = []
        finished: set[int] = set()
        fell = fell_back.tolist()
        for p, j in enumerate(plan.active):
            st, tok = self._states[j], tokens[p]
            st.tokens.append(tok)
            st.fallbacks += int(fell[p])
            if st.job.return_scores:
                st.scores.append(scores[p].detach().to("cpu", copy=True))
            delta = self._finish_check(j, st, tok)
            if st.finish is not None:
                finished.add(j)
                events.append((j, StreamEvent(st.job.index, delta, tok, st.finish, _result(st))))
            elif delta:
                events.append((j, StreamEvent(st.job.index, delta, tok)))
        return events, finished

    def _finish_check(self, j: int, st: _JobState, tok: int) -> str:
        """Set `st.finish` if the prompt ends at this token; return the text delta to emit."""
        if st.job.constraint is not None:
            st.job.constraint.advance(tok)
        if st.job.guard is not None:
            st.job.guard.advance(tok)
        if tok in st.job.stop_token_ids:
            st.finish = "stop"
            return st.tracker.flush()
        delta = st.tracker.update(st.tokens)
        if st.tracker.stopped or (st.job.constraint is not None and st.job.constraint.is_finished):
            st.finish = "stop"
            delta += st.tracker.flush() if not st.tracker.stopped else ""
        elif len(st.tokens) >= st.job.config.max_new_tokens:
            st.finish = "length"
            delta += st.tracker.flush()
        elif j in self._cancelled:
            st.finish = "cancelled"
        return delta

    def _retire(self, finished: set[int]) -> None:
        if not finished:
            return
        for j in finished:
            del self._states[j]  # its result is out; free its scores and generator
            self._cancelled.discard(j)
        for g in self._groups:
            g.drop_finished(finished)
        keep = [k for k, g in enumerate(self._groups) if g.rows]
        self._groups = [self._groups[k] for k in keep]
        self._outputs = [self._outputs[k] for k in keep]
        self._plan = None

    def _forward(self) -> None:
        self._outputs = [
            g.batch.step(
                torch.tensor([self._states[r.job].tokens[-1] for r in g.rows], dtype=torch.long),
                logprobs=False,
            )
            for g in self._groups
        ]


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
        parsed=parsed_output(job.constraint, st.tracker.text, st.finish),
    )
