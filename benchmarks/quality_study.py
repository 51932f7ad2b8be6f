"""Quality study: is STEER more diverse than the usual samplers at equal fidelity, and where does it collapse?

On the astronomy hypotheses in `../shared/data/astro_hypotheses.jsonl` (read in place, never copied):

1. Split (seeded, seed 0): a **reference** split (`--n-ref`, default 200) used only for scoring, and
   the **train** split (the rest) that seeds every method's negative pool.
2. The expert is the shipped `hypotheses-lora` adapter over SmolLM2-135M-Instruct (trained on the
   package's own 91 seed hypotheses, none of which is in the astro data), or `--expert PATH`.
3. Every set (see `methods`) is generated for each seed with the same prompt, `--max-new-tokens`
   new tokens, stop at "?". Generation grows in stages (`--stages 48,96,200`): every set reaches
   48 rows for seed 0 before any set goes further, so an interrupted run still gives a balanced
   table. Files: `<out>/samples/<set>/seed<k>.jsonl` (resumable: rerunning skips finished rows).
   Each (set, seed) starts from a fresh pool of the train split; its outputs join that pool.
4. `--score` evaluates every set that reached the common size on the same seeds against the
   reference split (`steer_plugins.apps.eval`), averages over seeds, and takes 95 % intervals from
   the half-sample bootstrap averaged replicate by replicate over the seeds. It also checks the
   issue's rule for the default (`steer_plugins.apps.tune.meets_budget` against expert top-k 10) and
   the done-when check (invented-word rate <= plain + 0.5 pt, normalised 3-grams >= 1.05x plain).

Run in the background on a shared machine (resumable; `--score` can run at any time after):
    nohup nice -n 19 python benchmarks/quality_study.py > benchmarks/results/quality_study.log 2>&1 &
    python benchmarks/quality_study.py --score
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / ".." / "shared" / "data" / "astro_hypotheses.jsonl"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "quality_study"
DEFAULT_IMG = ROOT / "docs" / "img" / "quality_study"
DEFAULT_EXPERT = ROOT / "steer_plugins" / "assets" / "adapters" / "hypotheses-lora"
SPLIT_SEED = 0
PLAIN = "expert top-k 10"
#: real examples from the train split scored like a generated set: what each fidelity metric reads
#: for data that is real by construction (the ceiling every generator is measured against)
TRAIN = "real (train split)"
DONE_WHEN_CANDIDATES = (
    "STEER γ0.2 η0.6",
    "γ0.2 η0.6 α0.1",
    "γ0.2 η1 α0.1",
    "γ0.2 η1.5 α0.1",
    "γ0.2 η1 α0.1 words",
    "γ0.2 η0.4 α0.05 words",
    "γ0.2 η0.4 α0.05 words, synthetic negatives",
    "γ0.2 η0.4 α0.05 words, synthetic negatives, spelling 0.2",
    "γ0.2 η0.5 α0.05 words, synthetic negatives, spelling 0.2",
    "γ0.2 η0.6 α0.05 words, synthetic negatives, spelling 0.2",
    "γ0.2 η0.8 α0.05 words, synthetic negatives, spelling 0.2",
)


def methods() -> list[tuple[str, str, dict]]:
    """(name, model, SteerConfig overrides) in generation priority; model "expert" or "base"."""
    steer = lambda g, e, **kw: {"gamma": g, "eta": e, **kw}  # noqa: E731
    plain = {"gamma": 0.0, "eta": 0.0}
    out = [
        (PLAIN, "expert", plain),
        ("STEER γ0.2 η0.6", "expert", steer(0.2, 0.6)),
        ("γ0.2 η0.6 α0.1", "expert", steer(0.2, 0.6, alpha=0.1)),
        ("γ0.2 η1 α0.1", "expert", steer(0.2, 1.0, alpha=0.1)),
        ("γ0.2 η1.5 α0.1", "expert", steer(0.2, 1.5, alpha=0.1)),
        ("expert top-p 0.92", "expert", {**plain, "top_k": None, "top_p": 0.92}),
        ("expert min-p 0.1 T1", "expert", {**plain, "top_k": None, "min_p": 0.1}),
        ("expert min-p 0.1 T1.5", "expert", {**plain, "top_k": None, "min_p": 0.1, "temperature": 1.5}),
        ("base top-k 10", "base", plain),
        (TRAIN, "real", {}),
        ("γ0.2 η1 (no mask)", "expert", steer(0.2, 1.0)),
    ]
    out += [
        (f"γ0.2 η{e:g} α{a:g}", "expert", steer(0.2, e, alpha=a))
        for a in (0.05, 0.2)
        for e in (0.6, 1.0, 1.5)
    ]
    out += [("γ0.2 η1.5 (no mask)", "expert", steer(0.2, 1.5))]
    grid = [(g, e) for g in (0.0, 0.4, 0.8) for e in (0.0, 0.4, 0.8) if (g, e) != (0.0, 0.0)]
    out += [(f"γ{g:g} η{e:g}", "expert", steer(g, e)) for g, e in grid]
    # whole_words: steer only where a word starts (the expert spells each word)
    out += [
        (
            f"γ0.2 η{e:g}{'' if a is None else f' α{a:g}'} words",
            "expert",
            steer(0.2, e, alpha=a, whole_words=True),
        )
        for e, a in (
            (0.6, None),
            (1.0, None),
            (1.0, 0.05),
            (1.5, 0.05),
            (0.6, 0.05),
            (0.6, 0.1),
            (1.0, 0.1),
            (0.4, None),
            (0.4, 0.05),
        )
    ]
    # negative prompting alone (γ 0 costs no centroid in the grid) with the word mask and the head mask
    out += [
        (f"γ{g:g} η{e:g} α0.05 words", "expert", steer(g, e, alpha=0.05, whole_words=True))
        for g, e in ((0.0, 0.4), (0.0, 0.6), (0.0, 0.8), (0.1, 0.6))
    ]
    # the same default with the base and negative rows' KV cache stored in bf16 (opt-in memory saving)
    out += [
        (
            "γ0.2 η1 α0.1 words, bf16 guidance KV",
            "expert bf16 KV",
            steer(0.2, 1.0, alpha=0.1, whole_words=True),
        )
    ]
    # the product default with one negative draw per 48-row chunk (`share_negatives`, opt-in speed)
    out += [
        (
            "γ0.2 η0.4 α0.05 words, shared negatives",
            "expert",
            steer(0.2, 0.4, alpha=0.05, whole_words=True, share_negatives=True),
        )
    ]
    # negatives drawn from the run's own outputs (`negatives_from="synthetic"`): away from what was made,
    # not from the real data
    out += [
        (
            f"γ{g:g} η{e:g} α0.05 words, synthetic negatives",
            "expert",
            steer(g, e, alpha=0.05, whole_words=True, negatives_from="synthetic"),
        )
        for g, e in ((0.2, 0.4), (0.2, 0.6))
    ]
    # synthetic negatives with the spelling floor (`spelling_min_p`): the expert continues a word only
    # with a piece at least that share as likely as its best token
    out += [
        (
            f"γ{g:g} η{e:g} α0.05 words, synthetic negatives, spelling {sp:g}",
            "expert",
            steer(g, e, alpha=0.05, whole_words=True, negatives_from="synthetic", spelling_min_p=sp),
        )
        for g, e, sp in (
            (0.2, 0.4, 0.2),
            (0.2, 0.5, 0.2),
            (0.2, 0.6, 0.2),
            (0.2, 0.8, 0.2),
            (0.2, 0.5, 0.5),
            (0.2, 0.6, 0.5),
        )
    ]
    # the spelling floor's default with known words (`known_words`): every word a steered row writes is
    # English (wordfreq) or a word of the train split or the prompt
    out += [
        (
            f"γ{g:g} η{e:g} α0.05 words, synthetic negatives, spelling 0.5, known words",
            "expert",
            steer(
                g,
                e,
                alpha=0.05,
                whole_words=True,
                negatives_from="synthetic",
                spelling_min_p=0.5,
                known_words=True,
            ),
        )
        for g, e in ((0.2, 0.6), (0.2, 0.8))
    ]
    # the product default with the negative contexts prefilled in bf16 (opt-in speed on native-bf16 hardware)
    out += [
        (
            "γ0.2 η0.4 α0.05 words, bf16 negative prefill",
            "expert bf16 negatives",
            steer(0.2, 0.4, alpha=0.05, whole_words=True),
        )
    ]
    return out


def slug(name: str) -> str:
    """File-system name of a set: `γ0.2 η1 α0.1` -> `g0.2_e1_a0.1`."""
    for a, b in (("γ", "g"), ("η", "e"), ("α", "a"), (",", ""), (" ", "_"), ("(", ""), (")", "")):
        name = name.replace(a, b)
    return name


def split(texts: list[str], n_ref: int) -> tuple[list[str], list[str]]:
    """(train, reference), shuffled with `SPLIT_SEED`."""
    idx = list(range(len(texts)))
    random.Random(SPLIT_SEED).shuffle(idx)
    return [texts[i] for i in idx[n_ref:]], [texts[i] for i in idx[:n_ref]]


def sample_path(out: Path, name: str, seed: int) -> Path:
    """`<out>/samples/<set>/seed<k>.jsonl`."""
    return out / "samples" / slug(name) / f"seed{seed}.jsonl"


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _log(*a) -> None:
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def _load_meta(out: Path) -> dict:
    path = out / "results.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _save_meta(out: Path, meta: dict) -> None:
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(out / "results.json")


def generate(args) -> None:
    """Grow every (set, seed) file stage by stage; records rows, CPU and wall seconds per set."""
    import torch

    from steer_plugins import DEFAULT_MODEL, NegativePool, SteerConfig, SteerEngine
    from steer_plugins.apps.data_io import count_jsonl_rows, read_texts
    from steer_plugins.apps.pipeline import generate_to_file
    from steer_plugins.apps.recipe import read_recipe_prompt

    torch.set_num_threads(args.threads)
    train, ref = split(read_texts(args.data), args.n_ref)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = _load_meta(out)
    prompt = read_recipe_prompt(args.expert)
    meta.update(
        data=str(args.data), expert=str(args.expert), prompt=prompt, max_new_tokens=args.max_new_tokens,
        stop=["?"], split={"train": len(train), "reference": len(ref), "seed": SPLIT_SEED},
        threads=args.threads, stages=args.stages, seeds=args.seeds,
    )  # fmt: skip
    gens = meta.setdefault("generation", {})
    # every set is the paper's rule plus its own overrides (the product defaults add α and whole words)
    cfg = SteerConfig.preset("paper", max_new_tokens=args.max_new_tokens, stop=["?"])
    engines: dict[str, object] = {}
    chosen = [m for m in methods() if not args.only or m[0] in args.only]
    for stage in args.stages:
        for seed in args.seeds:
            for name, which, overrides in chosen:
                path = sample_path(out, name, seed)
                if path.exists() and count_jsonl_rows(path) >= stage:
                    continue
                if which == "real":  # a seeded shuffle of the train split: stages are prefixes
                    order = list(range(len(train)))
                    random.Random(seed).shuffle(order)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    rows = [{"text": train[i], "finish_reason": "stop", "seed": i} for i in order[:stage]]
                    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
                    continue
                if which not in engines:
                    spec = str(args.expert) if which.startswith("expert") else DEFAULT_MODEL
                    low = torch.bfloat16 if which.endswith("bf16 KV") else None
                    neg = torch.bfloat16 if which.endswith("bf16 negatives") else None
                    engines[which] = SteerEngine(
                        spec,
                        config=cfg,
                        max_batch_size=args.batch,
                        guidance_kv_dtype=low,
                        negative_prefill_dtype=neg,
                    )
                pool = NegativePool(train, seed=seed)
                cpu0, wall0 = _cpu_seconds(), time.perf_counter()
                stats = generate_to_file(
                    engines[which], prompt, stage, path, pool=pool, close_with="?", seed=seed * 100_000,
                    chunk_size=args.batch, **overrides,
                )  # fmt: skip
                rec = gens.setdefault(name, {}).setdefault(
                    str(seed), {"cpu_s": 0.0, "wall_s": 0.0, "tokens": 0}
                )
                rec.update(rows=stats.total, overrides=overrides, model=which)
                rec["cpu_s"] = round(rec["cpu_s"] + _cpu_seconds() - cpu0, 1)
                rec["wall_s"] = round(rec["wall_s"] + time.perf_counter() - wall0, 1)
                rec["tokens"] += stats.completion_tokens
                _save_meta(out, meta)
                _log(f"{name} seed {seed}: {stats.total} rows (+{stats.generated}), {rec['cpu_s']} CPU s")
    for engine in engines.values():
        engine.close()


def _available(out: Path, seeds: list[int]) -> dict[str, dict[int, int]]:
    """set name -> seed -> rows on disk."""
    from steer_plugins.apps.data_io import count_jsonl_rows

    found: dict[str, dict[int, int]] = {}
    for name, _, _ in methods():
        for seed in seeds:
            path = sample_path(out, name, seed)
            if path.exists():
                found.setdefault(name, {})[seed] = count_jsonl_rows(path)
    return found


def _common_design(found: dict[str, dict[int, int]], n: int | None) -> tuple[int, list[int], list[str]]:
    """(n, seeds, sets): the largest design every scored set completes; PLAIN must be in it."""
    plain = found.get(PLAIN, {})
    if not plain:
        raise SystemExit(f"nothing to score: `{PLAIN}` has no samples yet")
    seeds = sorted(s for s, rows in plain.items() if rows >= (n or 2))
    n = n or min(plain[s] for s in seeds)
    sets = [name for name, rows in found.items() if all(rows.get(s, 0) >= n for s in seeds)]
    return n, seeds, sets


REAL = "real (reference)"


def _score_one(
    out: Path,
    name: str,
    seed: int,
    n: int,
    ref: list[str],
    resamples: int,
    costly_b: int,
    metrics: list[str] | None = None,
) -> tuple:
    """(point row, replicates) of one set and seed, cached in `<out>/scores/` by its texts and design."""
    import hashlib

    import numpy as np

    from steer_plugins.apps.data_io import read_texts
    from steer_plugins.apps.eval import compute, prepare, read_finish_reasons, replicates
    from steer_plugins.apps.eval.bootstrap import costly

    texts = list(ref) if name == REAL else read_texts(sample_path(out, name, seed))[:n]
    reasons = None if name == REAL else (read_finish_reasons(sample_path(out, name, seed)) or [None] * n)[:n]
    what = [texts, reasons, ref, n, resamples, costly_b] + ([metrics] if metrics else [])
    key = hashlib.sha256(json.dumps(what).encode()).hexdigest()[:16]
    # a subset of metrics (`--metrics`) has its own file, so it never evicts a full scoring
    tag = "" if not metrics else "_m" + hashlib.sha256(",".join(metrics).encode()).hexdigest()[:6]
    cache = out / "scores" / f"{slug(name)}_seed{seed}_n{n}{tag}.json"
    if cache.exists() and (hit := json.loads(cache.read_text()))["key"] == key:
        return hit["point"], {m: np.array(v, dtype=float) for m, v in hit["replicates"].items()}
    if name == REAL:  # the reference on its own: its n-gram ratios, Vendi, leave-one-out invented words
        chosen, inputs = prepare({"_": ref}, ref, metrics, seed=0, sample_size=n, reference_name=REAL)
    else:
        chosen, inputs = prepare(
            {name: texts}, ref, metrics, seed=0, sample_size=n, finish_reasons={name: reasons}
        )
    given = inputs[name]
    # the same bootstrap seed for every study seed: replicate b shares its reference half-sample
    reps = replicates(chosen, given, resamples=resamples, seed=0, fewer=costly(costly_b))
    point = compute(chosen, given)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(
        json.dumps({"key": key, "point": point, "replicates": {m: v.tolist() for m, v in reps.items()}})
    )
    _log(f"scored {name} seed {seed}")
    return point, reps


def _score_seed(names: list[str], out: Path, seed: int, n: int, ref: list[str], args) -> dict:
    """set -> (point row, replicates) for one seed, every set cut to its first `n` rows."""
    return {
        name: _score_one(out, name, seed, n, ref, args.resamples, args.costly_resamples, args.metrics)
        for name in [*names, REAL]
    }


def _average(per_seed: list[dict]) -> dict:
    """Mean over seeds of every metric, intervals from the replicate-wise mean of the replicates."""
    import numpy as np

    from steer_plugins.apps.eval import interval

    rows = {}
    for name in per_seed[0]:
        points = [s[name][0] for s in per_seed]
        row = {"sample_size": points[0]["sample_size"], "seeds": len(points), "ci": {}, "per_seed": {}}
        for metric in per_seed[0][name][1]:
            values = [float(p[metric]) for p in points]
            row[metric] = float(np.mean(values))
            row["per_seed"][metric] = values
            reps = np.mean([s[name][1][metric] for s in per_seed], axis=0)
            lo, hi = interval(row[metric], reps)
            floor, ceil = (1.0, float("inf")) if metric == "vendi" else (0.0, 1.0)
            row["ci"][metric] = [min(max(lo, floor), ceil), min(max(hi, floor), ceil)]
        rows[name] = row
    return rows


def _checks(rows: dict) -> dict:
    """The issue's rule for the default, and the done-when check, against plain sampling (PLAIN)."""
    from steer_plugins.apps.tune import Budget, best_setting, meets_budget

    plain = rows[PLAIN]
    # only the fidelity metrics that were scored (`--metrics` may leave out the costly ones)
    budget = Budget(within=tuple(m for m in Budget().within if m in plain))
    rule = {}
    for name, row in rows.items():
        if name not in (REAL, PLAIN, TRAIN):
            rule[name] = {"misses": meets_budget(row, plain, budget), budget.diversity: row[budget.diversity]}
    done_when = {}
    for name in [PLAIN, *DONE_WHEN_CANDIDATES]:
        if name in rows:
            row = rows[name]
            inv_ok = row["invented_word_rate"] <= plain["invented_word_rate"] + 0.005
            div_ok = row["normalised_3grams"] >= 1.05 * plain["normalised_3grams"]
            done_when[name] = {
                "invented_word_rate": row["invented_word_rate"],
                "normalised_3grams": row["normalised_3grams"],
                "ratio_to_plain": row["normalised_3grams"] / plain["normalised_3grams"],
                "passes": bool(inv_ok and div_ok),
            }
    steer = {k: v for k, v in rule.items() if k.startswith(("STEER", "γ"))}
    return {
        "rule": rule,
        "winner": best_setting(rule, budget),
        "winner_steer": best_setting(steer, budget),
        "done_when": done_when,
    }


def _view_dirs(args) -> tuple[Path, Path]:
    """(where results.json, table.md and report.html go, where the plots go): the study's own
    files, or with `--view NAME` a separate scoring of the same samples under `views/NAME`."""
    if not args.view:
        return Path(args.out), Path(args.img)
    return Path(args.out) / "views" / args.view, Path(args.img) / args.view


def score(args) -> None:
    """Score what is on disk; writes results.json (`scores`, `design`, `checks`), table.md and plots."""
    from steer_plugins.apps.data_io import read_texts

    out = Path(args.out)
    res_dir, _ = _view_dirs(args)
    res_dir.mkdir(parents=True, exist_ok=True)
    meta = _load_meta(res_dir)
    _, ref = split(read_texts(args.data), args.n_ref)
    found = _available(out, args.score_seeds or args.seeds)
    n, seeds, names = _common_design(found, args.n_score)
    cpu0, wall0 = _cpu_seconds(), time.perf_counter()
    _log(f"scoring {len(names)} sets, n={n}, seeds {seeds}")
    per_seed = [_score_seed(names, out, seed, n, ref, args) for seed in seeds]
    rows = _average(per_seed)
    missing = {name: rows_ for name, rows_ in found.items() if name not in names}
    meta["design"] = {"n": n, "seeds": seeds, "sets": names, "not_scored": missing, "resamples": args.resamples,
                      "costly_resamples": args.costly_resamples}  # fmt: skip
    meta["scores"] = rows
    meta["checks"] = _checks(rows)
    meta["scoring"] = {
        "cpu_s": round(_cpu_seconds() - cpu0, 1),
        "wall_s": round(time.perf_counter() - wall0, 1),
    }
    if args.view:  # the generation record of the scored sets, from the study's own file
        gens = _load_meta(out).get("generation", {})
        meta["generation"] = {name: gens[name] for name in names if name in gens}
    _save_meta(res_dir, meta)
    report(args)


def report(args) -> None:
    """table.md, the Pareto plot, the grid heat maps and report.html from results.json."""
    from steer_plugins.apps.eval import markdown_table
    from steer_plugins.apps.report import write_report
    from steer_plugins.apps.sweep import plot_heatmaps, plot_pareto

    out = Path(args.out)
    res_dir, img = _view_dirs(args)
    img.mkdir(parents=True, exist_ok=True)
    meta = _load_meta(res_dir)
    rows, design = meta["scores"], meta["design"]
    cols = ["normalised_3grams", "diversity", "self_bleu", "vendi", "invented_word_rate", "completion_rate",
            "cosine_centroid", "mauve", "adversarial_auroc"]  # fmt: skip
    cols = [c for c in cols if any(c in r for r in rows.values())]
    (res_dir / "table.md").write_text(markdown_table(rows, columns=cols) + "\n")
    points = [
        (k, r["normalised_3grams"], r["cosine_centroid"]) for k, r in rows.items() if "cosine_centroid" in r
    ]
    title = f"n={design['n']} x {len(design['seeds'])} seed(s): diversity vs fidelity"
    plots = [plot_pareto(points, img / "pareto.png", title=title)]
    grid = {}
    for name, row in rows.items():
        parts = name.split()
        if len(parts) == 2 and parts[0].startswith("γ") and parts[1].startswith("η"):
            grid[(float(parts[0][1:]), float(parts[1][1:]))] = row
    if PLAIN in rows:
        grid[(0.0, 0.0)] = rows[PLAIN]
    gammas, etas = sorted({k[0] for k in grid}), sorted({k[1] for k in grid})
    if len(gammas) > 1 and len(etas) > 1:
        metrics = ["normalised_3grams", "cosine_centroid", "mauve", "adversarial_auroc", "invented_word_rate"]
        plots += plot_heatmaps(grid, gammas, etas, img, metrics, title_prefix="astro: ")
    samples = {}
    for name in rows:
        if name != REAL:
            from steer_plugins.apps.data_io import read_texts

            samples[name] = read_texts(sample_path(out, name, design["seeds"][0]))[: design["n"]]
    _, ref = split(read_texts(args.data), args.n_ref)
    write_report(res_dir / "report.html", title="quality study (astro hypotheses)", results=rows, samples=samples,
                 reference=ref, pareto=points, images={p.stem: p for p in plots[1:]},
                 notes=[f"design: {json.dumps({k: design[k] for k in ('n', 'seeds')})}"])  # fmt: skip
    print((res_dir / "table.md").read_text())
    print(json.dumps(meta["checks"], indent=1, ensure_ascii=False))


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def parse_args(argv=None) -> argparse.Namespace:
    """The study's command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--img", type=Path, default=DEFAULT_IMG)
    p.add_argument("--expert", type=Path, default=DEFAULT_EXPERT)
    p.add_argument("--n-ref", type=int, default=200, help="reference split size")
    p.add_argument("--stages", type=_ints, default=[48, 96, 200], help="rows per (set, seed), grown in order")
    p.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    p.add_argument(
        "--only", type=lambda s: [x.strip() for x in s.split(";")], help="set names, ';'-separated"
    )
    p.add_argument("--batch", type=int, default=48, help="rows decoded together")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on busy cores)")
    p.add_argument("--score", action="store_true", help="score what is on disk (no generation)")
    p.add_argument("--n-score", type=int, help="common sample size to score (default: plain's rows)")
    p.add_argument("--score-seeds", type=_ints, help="seeds to score (default: all with enough rows)")
    p.add_argument("--resamples", type=int, default=200, help="bootstrap resamples")
    p.add_argument("--costly-resamples", type=int, default=30, help="resamples for self-BLEU, MAUVE, AUROC")
    p.add_argument("--report-only", action="store_true", help="rebuild table and plots from results.json")
    p.add_argument(
        "--view",
        help="score into <out>/views/VIEW and <img>/VIEW instead of the study's own files (e.g. one seed "
        "at a size the other seeds have not reached)",
    )
    p.add_argument(
        "--metrics",
        type=lambda s: [m.strip() for m in s.split(",") if m.strip()],
        help="metrics to score, comma-separated (default: all; MAUVE and AUROC cost the most)",
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    """Generate (default), `--score`, or `--report-only`."""
    args = parse_args(argv)
    if not args.data.exists():
        print(f"skipping: data file {args.data} not found (expected ../shared/data next to the repo)")
        return 0
    if args.report_only:
        report(args)
    elif args.score:
        score(args)
    else:
        generate(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
