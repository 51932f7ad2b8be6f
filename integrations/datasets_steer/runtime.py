"""What one process of an augmenter holds: its engine (seeded pool), checkpoint handle, finished
rows, dedup memory and progress. Rebuilt empty in every process (forked worker, Ray actor) and never
pickled; the augmenter (`augmenter.py`) keeps only settings."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from steer_plugins import SteerConfig, SteerEngine

from .card import card_fields, write_augment_card
from .checkpoint import CheckpointStore, Expected
from .dedup import OutputDedup
from .engines import ENGINES, load_engine
from .generate import generate_rows
from .keys import sha
from .plan import plan_rows
from .progress import Progress
from .template import fill_prompt

if TYPE_CHECKING:
    from .augmenter import SteerAugmenter

__all__ = ["Rows", "Runtime"]

Rows = dict[str, list[dict[str, Any]]]


class Runtime:
    """The per-process state of `aug` (see the module docstring).

    Attributes:
        engine: the loaded engine, or None before the first batch.
        model: `engine.fingerprint(**config_fields)` (weights and settings), recorded on each
            checkpoint line and checked when reading it.
        store: the checkpoint, when `checkpoint_dir` is set and it was read.
        progress: counters and the bar.
    """

    def __init__(self, aug: SteerAugmenter) -> None:
        self.aug = aug
        self.pid = os.getpid()
        self.engine: SteerEngine | None = None
        self.key: str | None = None
        self.model: str | None = None
        self.store: CheckpointStore | None = None
        self.done: Rows | None = None
        self.dedup: OutputDedup | None = None
        self.progress = Progress(aug.progress)

    # ------------------------------------------------------------------ engine and pool
    def get_engine(self, rank: int | None) -> SteerEngine:
        """This process's engine, loaded (and its pool seeded) on first use."""
        if self.engine is None:
            self.key = self.aug.engine_key
            engine = ENGINES.get_or_load(self.key, lambda: self._load(rank))
            self.engine, self.model = engine, engine.fingerprint(**self.aug.config_fields)
            self._seed_pool(engine)
        return self.engine

    def _load(self, rank: int | None) -> SteerEngine:
        aug = self.aug
        if aug.expert is None:
            raise RuntimeError(
                "this SteerAugmenter was built with engine=..., which lives only in the process "
                "that built it (and forked children); this process cannot see it. Build it with "
                "expert='model folder or id' (or a picklable factory) to run in spawned "
                "workers or Ray actors"
            )
        return load_engine(
            aug.expert,
            aug.base,
            aug.tokenizer,
            config=SteerConfig().merged(**aug.config_fields),
            seed=aug.base_seed,
            max_batch_size=aug.engine_batch_size,
            engine_kwargs=aug.engine_kwargs,
            rank=rank,
        )

    def _seed_pool(self, engine: SteerEngine) -> None:
        texts = self.aug.real_texts or []
        if not ENGINES.first_seeding(engine, sha(texts) + self.aug.settings_fingerprint):
            return
        engine.pool.add(texts, real=True)
        # Outputs of an interrupted run are negatives too (the pool "grows with the outputs").
        done = self.checkpoint()
        self.grow_pool([o["text"] for outs in done.values() for o in outs], share=False)

    def get_dedup(self) -> OutputDedup | None:
        """The dedup memory (None when `dedup` is off)."""
        if self.aug.dedup is not None and self.dedup is None:
            self.dedup = OutputDedup(self.aug.dedup, self.aug.dedup_threshold, self.aug.real_texts or [])
        return self.dedup

    def grow_pool(self, texts: list[str], *, share: bool = True) -> None:
        """Add outputs to the pool (without duplicates when `dedup` is on); with `share`, also queue
        them for other workers (`progress.drain_new_outputs`)."""
        dedup = self.get_dedup()
        new = dedup.new_for_pool(texts) if dedup is not None else texts
        self.get_engine(None).pool.add(new)
        if share:
            self.progress.joined_pool(new)

    # ------------------------------------------------------------------ one batch
    def outputs(self, rows: list[dict[str, Any]], keys: list[str], rank: int | None) -> Rows:
        """Every row's outputs: from the checkpoint, or generated now in one engine call."""
        aug = self.aug
        engine = self.get_engine(rank)
        done = self.checkpoint()
        plan = plan_rows(rows, keys, done, n=aug.n, render=self._renderer(engine), seed_of=aug.row_seed)
        self.progress.reused(plan.reused)
        if not plan:
            return done
        if engine.config.merged(**aug.config_fields).eta > 0 and engine.pool.num_real == 0:
            raise ValueError(
                "the negative pool was never seeded (eta > 0 but no real examples): call aug.fit(ds) on the "
                "whole dataset first (or SteerAugmenter.from_dataset(ds, ...), or pass real_texts=[...]); "
                "set eta=0 to turn negative prompting off"
            )
        # outputs join the pool here (the engine's rule: when the pool holds real examples), so that
        # dedup can keep duplicates out of it
        grow = self.grow_pool if engine.pool.num_real > 0 else None
        schema = getattr(aug, "schema_columns", None)  # schema=: every output decoded under it
        constraint = {} if schema is None else {"constraint": schema.schema}
        options = engine.call_options(
            len(plan), seeds=plan.seeds, add_to_pool=False, **constraint, **aug.config_fields
        )
        generate_rows(engine, plan, options, self.row_done, on_output=grow)
        return done

    def _renderer(self, engine: SteerEngine) -> Callable[[dict[str, Any]], str]:
        prompt, chat = self.aug.prompt, self.aug.chat

        def render(row: dict[str, Any]) -> str:
            text = fill_prompt(prompt, row)
            if chat:
                text = engine.apply_chat_template([{"role": "user", "content": text}])
            return text

        return render

    # ------------------------------------------------------------------ checkpoint
    def checkpoint(self) -> Rows:
        """Finished rows by key: the valid lines of the checkpoint, then every row finished here."""
        if self.done is None:
            self.done = {}
            if self.aug.checkpoint_dir is not None:
                self.store = CheckpointStore(self.aug.checkpoint_dir, self.aug.settings_fingerprint)
                self.done = self.store.load(self.expected())
                self._report_skipped(self.store.skipped)
        return self.done

    def expected(self) -> Expected:
        """What a valid checkpoint line of this run holds (needs the engine: its fingerprint)."""
        if self.model is None:
            raise RuntimeError("the engine loads before the checkpoint is read")
        return Expected(n=self.aug.n, model=self.model, seed_of=self.aug.row_seed)

    def _report_skipped(self, skipped: list[str]) -> None:
        self.progress.stats["checkpoint_skipped"] = len(skipped)
        if skipped:
            shown = "; ".join(skipped[:3]) + (f"; and {len(skipped) - 3} more" if len(skipped) > 3 else "")
            warnings.warn(
                f"checkpoint {self.aug.checkpoint_path}: skipped {len(skipped)} line(s) that do not fit "
                f"this run; their rows are generated again ({shown})",
                stacklevel=4,
            )

    def row_done(self, key: str, outputs: list[dict[str, Any]]) -> None:
        """Checkpoint one finished row, then count it and call the augmenter's `on_row`."""
        if self.store is not None:
            self.store.write(key, self.model or "", outputs)
        self.checkpoint()[key] = outputs
        self.progress.row_done(outputs)
        if self.aug.on_row is not None:
            self.aug.on_row(key, outputs)

    def report(self) -> dict[str, Any]:
        """`{"models", "counts", "dedup"}` of this process: the loaded model's name and fingerprint,
        `progress.stats`, and the dedup counts (None when off)."""
        models = {}
        if self.engine is not None:
            models = {"expert + base": {"name": self.engine.name, "fingerprint": self.model}}
        dedup = self.dedup.counts() if self.dedup is not None else None
        return {"models": models, "counts": dict(self.progress.stats), "dedup": dedup}

    def card_info(self) -> dict[str, Any]:
        """The `card_fields` of this process: settings, seed, model fingerprints, counts, dedup."""
        aug, report = self.aug, self.report()
        settings = {
            "prompt": aug.prompt,
            "n": aug.n,
            "keep_original": aug.keep_original,
            "real_column": aug.real_column,
            "output_column": aug.output_column,
            "chat": aug.chat,
            "real_texts": len(aug.real_texts or []),
            "settings_fingerprint": aug.settings_fingerprint,
        }
        return card_fields(settings, aug.config_fields, seed=aug.base_seed, **report)

    def write_checkpoint_card(self, info: dict[str, Any]) -> None:
        """Refresh the card of the checkpoint folder (`info`: `card_fields`; rows counted on disk)."""
        if self.store is None or self.model is None:
            return
        rows = len(self.store.load(self.expected()))
        worker = {f"last worker's {k}": v for k, v in info["counts"].items()}
        info = {**info, "counts": {"rows_in_checkpoint": rows, **worker}}
        info["description"] = (
            "The checkpoint of a `datasets_steer.SteerAugmenter` run: one JSON line per finished input "
            "row (`key`, `model` fingerprint, its `n` outputs with text, negatives, seed and config). "
            "Counts marked *last worker's* are those of the process that finished its shard last."
        )
        try:
            write_augment_card(
                self.store.dir / "README.md", data_files=["part-*.jsonl"], num_rows=rows, fields=info
            )
        except OSError as err:
            warnings.warn(f"could not write the dataset card in {self.store.dir}: {err}", stacklevel=3)

    def close(self) -> None:
        """Release the checkpoint file, the bar and (unless it is the caller's) the engine."""
        if self.store is not None:
            self.store.close()
        self.progress.close()
        engine = ENGINES.pop(self.key or self.aug.engine_key)
        if engine is not None and self.aug.expert is not None:
            engine.close()
