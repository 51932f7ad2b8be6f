"""Run a `SteerAugmenter` on Ray Data: an actor pool, one engine per actor, a shared negative pool.

Every actor gets the augmenter's settings and its real texts (pickled with it, so real examples
reach every actor); the model loads once in each actor. Each `map_batches` batch is one augmenter
call in one actor, so one engine call (see `datasets_steer`); synthetic outputs are shared through
one small `SharedPool` actor (see `actors.py`), which also gathers each actor's counts for the
dataset card. Everything that can be checked is checked on the driver before any actor starts
(columns, texts, K against the real pool, the output folder). Parquet output replaces what an
earlier run wrote (`output.py`).
"""

from __future__ import annotations

import copy
import os
import uuid
from typing import Any, Literal

from datasets_steer import SteerAugmenter
from datasets_steer.card import card_text

from .actors import AugmentActor, SharedPool
from .output import check_output_path, write_parquet

__all__ = ["augment", "SharedPool", "AugmentActor"]

Output = Literal["ray", "hf", "parquet"]


def augment(
    data: Any,
    aug: SteerAugmenter,
    *,
    num_actors: int = 2,
    num_gpus: float = 0,
    num_cpus: float | None = None,
    batch_size: int = 8,
    output: Output = "ray",
    path: str | os.PathLike | None = None,
    share_outputs: bool = True,
    wait_for_actors_s: float = 600,
) -> Any:
    """Augment a Ray or Hugging Face dataset with `aug` on a pool of Ray actors.

    Args:
        data: a `ray.data.Dataset` or a `datasets.Dataset` (converted with `ray.data.from_huggingface`).
        aug: a `SteerAugmenter` built from a model id/folder or picklable factory (not `engine=`). If it
            was not fitted, its negative pool is seeded here from `data[aug.real_column]` (all rows are
            collected on the driver for that; pass `real_texts=` to the augmenter to avoid it).
        num_actors: actors in the pool (`ActorPoolStrategy(size=num_actors)`), one engine each.
        num_gpus: GPUs per actor (the engine then loads on `cuda` unless `engine_kwargs` says otherwise).
        num_cpus: CPUs per actor; default 1, or less so one CPU stays free on a small node.
        batch_size: rows per `map_batches` batch: one engine call per batch, and an actor syncs the
            shared pool once per batch.
        output: `"ray"` (a lazy `ray.data.Dataset`), `"hf"` (a `datasets.Dataset`) or `"parquet"`
            (files written to `path`, with a dataset card `README.md` unless `aug.card` is False;
            returns the path). A rerun replaces the folder's files: it never appends duplicates.
        path: the Parquet output folder (required for `output="parquet"`). A local folder must be
            new, empty, or an earlier output (Parquet files and a card only).
        share_outputs: share synthetic outputs between actors through a `SharedPool` actor.
        wait_for_actors_s: wait this long for all `num_actors` actors to load their model before the
            first batch is dispatched (so work spreads over the whole pool); sets
            `wait_for_min_actors_s` on this dataset's `DataContext` only.

    Returns:
        A `ray.data.Dataset`, a `datasets.Dataset` or the Parquet folder path, per `output`.

    Raises:
        ValueError / TypeError: bad arguments, a bad dataset, K (`num_negatives`) larger than the
            real pool, or an output folder holding other files; all before any actor starts.

    Example:
        >>> out = augment(hf_ds, SteerAugmenter(expert="smollm2-135m-instruct", n=2), num_actors=2, output="hf")
    """
    import ray
    import ray.data

    _check_args(aug, num_actors, output, path)
    if not ray.is_initialized():
        ray.init()
    aug = copy.copy(aug)
    aug.engine_kwargs = dict(aug.engine_kwargs)
    if num_gpus and "device" not in aug.engine_kwargs:
        aug.engine_kwargs["device"] = "cuda"
    ds = _to_ray(data, aug, num_actors)
    aug.check_pool_size()  # K > pool would fail inside every actor, after the models loaded

    pool = ray.remote(num_cpus=0)(SharedPool).options(name=f"steer-pool-{uuid.uuid4().hex[:8]}").remote()
    share = share_outputs and num_actors > 1
    cpus = _free_cpu_share(num_actors, num_cpus)
    ds.context.wait_for_min_actors_s = wait_for_actors_s  # all actors load their model before batch 1
    out = ds.map_batches(
        AugmentActor,
        fn_constructor_args=(aug, pool, max(1, int(cpus)), share),
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        num_cpus=cpus,
        num_gpus=num_gpus or None,
    )
    card = (lambda rows: _card_text(aug, pool, rows)) if aug.card else None
    return _deliver(out, output, path, card)


def _check_args(aug: Any, num_actors: Any, output: Any, path: Any) -> None:
    if isinstance(num_actors, bool) or not isinstance(num_actors, int) or num_actors < 1:
        raise ValueError(f"`num_actors` must be an integer >= 1, got {num_actors!r}")
    if output not in ("ray", "hf", "parquet"):
        raise ValueError(f"`output` must be 'ray', 'hf' or 'parquet', got {output!r}")
    if output == "parquet" and path is None:
        raise ValueError(
            "`output='parquet'` needs `path=` (a folder every node can write, e.g. s3:// or NFS)"
        )
    if output == "parquet":
        check_output_path(path)
    if not isinstance(aug, SteerAugmenter):
        raise TypeError(f"`aug` must be a datasets_steer.SteerAugmenter, got {type(aug).__name__}")
    if aug.expert is None:
        raise ValueError(
            "`aug` was built with engine=..., which cannot travel to Ray actors: build it with "
            "expert='model folder or id' (or a picklable factory) so each actor loads its own engine"
        )


def _deliver(out: Any, output: Output, path: str | os.PathLike | None, card: Any) -> Any:
    """The mapped dataset as `output` asks: lazy Ray dataset, Parquet folder, or `datasets.Dataset`."""
    if output == "ray":
        return out
    if output == "parquet":
        assert path is not None
        return write_parquet(out, path, card)
    import datasets
    import pyarrow as pa
    import ray

    tables = [t for t in ray.get(out.to_arrow_refs()) if t.num_rows]
    return datasets.Dataset(pa.concat_tables(tables, promote_options="default"))


def _card_text(aug: SteerAugmenter, pool: Any, num_rows: int) -> str:
    """The dataset card of a finished run: the augmenter's settings, the actors' model fingerprints,
    and their counts summed."""
    import ray

    reports = list(ray.get(pool.reports.remote()).values())
    info = aug.card_info()
    counts: dict[str, int] = {}
    dedup: dict[str, Any] | None = None
    for report in reports:
        info["models"].update(report["models"] or {})
        for name, value in report["counts"].items():
            counts[name] = counts.get(name, 0) + value
        if report["dedup"]:
            dedup = dedup or {k: report["dedup"][k] for k in ("mode", "threshold")}
            for name in ("checked", "kept", "duplicates"):
                dedup[name] = dedup.get(name, 0) + report["dedup"][name]
    info.update(counts={"actors": len(reports), **counts}, dedup=dedup)
    return card_text(data_files=["*.parquet"], num_rows=num_rows, fields=info)


def _free_cpu_share(num_actors: int, num_cpus: float | None) -> float:
    """CPUs per actor: 1, or less so that one CPU stays free for Ray's own tasks on a small node."""
    import ray

    if num_cpus is not None:
        return num_cpus
    total = float(ray.cluster_resources().get("CPU", 1))
    if num_actors + 1 <= total:
        return 1.0
    return max(0.1, round((total - 1) / num_actors, 2)) if total > 1 else round(total / (num_actors + 1), 2)


def _to_ray(data: Any, aug: SteerAugmenter, num_actors: int):
    """A Ray dataset with at least `num_actors` blocks (no shuffle), the augmenter fitted and checked."""
    import ray.data

    if isinstance(data, ray.data.Dataset):
        names = data.schema().names if data.schema() is not None else []
        if not names or data.count() == 0:
            raise ValueError("the Ray dataset is empty (0 rows): there is nothing to augment")
        aug.check_columns(names, need_real=aug.real_texts is None)
        if aug.real_texts is None:
            rows = data.select_columns([aug.real_column]).take_all()
            texts = aug.check_texts([r[aug.real_column] for r in rows], f"column {aug.real_column!r}")
            aug.real_texts = sorted(texts)  # Ray returns rows in no fixed order: one pool per run
        return data
    if hasattr(data, "column_names") and hasattr(data, "features"):  # a datasets.Dataset
        if aug.real_texts is None:
            aug.fit(data)
        elif len(data) == 0:
            raise ValueError("the dataset is empty (0 rows): there is nothing to augment")
        else:
            aug.check_columns(list(data.column_names), need_real=False)
        blocks = max(1, min(len(data), 2 * num_actors))
        return ray.data.from_huggingface(data, override_num_blocks=blocks)
    raise TypeError(f"`data` must be a ray.data.Dataset or a datasets.Dataset, got {type(data).__name__}")
