"""`steer tune`: the most diverse STEER setting whose fidelity stays within a budget, on the user's data.

1. The real examples are split (seeded): a **dev** split, never a negative, scores every setting;
   the rest seed the negative pool.
2. The **anchor**, plain sampling from the expert (γ = η = 0, top-k as configured), is generated
   and scored with bootstrap intervals (`steer_plugins.apps.eval.bootstrap`).
3. A small grid of (γ, η, α) is generated and scored, then refined around the best setting
   (`refine_points`), for `rounds` rounds.
4. A setting **meets the budget** (`Budget`, `meets_budget`) when each fidelity metric in
   `Budget.within` is no worse than the anchor's interval allows (higher-is-better metrics at least
   its lower end, lower-is-better at most its upper end) and its invented-word rate is at most the
   anchor's plus `Budget.invented_slack`. The winner is the budget-meeting setting with the highest
   `Budget.diversity` metric; when none meets it, the anchor itself (γ = η = 0).
5. The winner is written as a config file `steer generate --config` loads (`RECIPE_NAME`), with
   `tune.json` (everything tried, why each setting passed or failed) and `report.html`.

Time budget (`max_seconds`; `steer tune --max-minutes`, 15 by default): the anchor and the first
grid setting always run (the product default's setting goes first when it is in the grid); after
that, a setting that is not already on disk starts only if the time spent so far plus the mean time
of the STEER settings run so far fits in the budget. Settings left out are listed in `tune.json`
(`skipped`) and the report; rerunning with a larger budget runs them and reuses everything finished.

Resumable: each setting's rows go to `<out>/settings/<name>.jsonl`, and its scores to one line of
`<out>/results.jsonl` keyed by the setting, the engine's fingerprint (weights and config), `n`, the
seed and the dev split; a rerun with the same key skips it.

Example:
    >>> anchor = {"mauve": 0.9, "invented_word_rate": 0.01, "ci": {"mauve": [0.8, 0.95]}}
    >>> meets_budget({"mauve": 0.85, "invented_word_rate": 0.012}, anchor, Budget(within=("mauve",)))
    []
    >>> meets_budget({"mauve": 0.7, "invented_word_rate": 0.02}, anchor, Budget(within=("mauve",)))
    ['mauve 0.700 below the anchor interval [0.800, 0.950]', 'invented_word_rate 0.020 > anchor 0.010 + 0.005']
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..core.config import DEFAULT_ALPHA, DEFAULT_ETA, DEFAULT_GAMMA
from .eval.metrics import higher_is_better

__all__ = [
    "Budget",
    "Setting",
    "RECIPE_NAME",
    "DEFAULT_GAMMAS",
    "DEFAULT_ETAS",
    "DEFAULT_ALPHAS",
    "DEFAULT_WHOLE_WORDS",
    "DEFAULT_MAX_MINUTES",
    "SEARCHED_FIELDS",
    "meets_budget",
    "best_setting",
    "initial_grid",
    "refine_points",
    "split_dev",
    "run_tune",
    "Tuned",
    "load_tuned",
    "default_first",
]

RECIPE_NAME = "steer_tuned.json"
"""The tuned config file: `steer generate --config <out>/steer_tuned.json --n 500 --out synth.jsonl`."""
DEFAULT_GAMMAS = (DEFAULT_GAMMA,)
DEFAULT_ETAS = tuple(sorted({0.6, DEFAULT_ETA, 1.0}))  # around the default: (0.6, 0.8, 1.0)
DEFAULT_ALPHAS: tuple[float | None, ...] = (DEFAULT_ALPHA, 0.1)
"""The default grid: 6 settings around the product default (γ 0.2, η 0.6, α 0.05, whole words, the
spelling floor), which is tried first; refinement moves γ and η by 0.2. Without the head mask, η >= 0.8
collapses into invented words (the quality study); `--alphas none,0.05` adds unmasked settings."""
DEFAULT_WHOLE_WORDS: tuple[bool, ...] = (True,)
DEFAULT_MAX_MINUTES = 15.0
"""`steer tune`'s default time budget (see the module docstring)."""
ANCHOR = "anchor γ0 η0"


@dataclass(frozen=True)
class Budget:
    """What a setting must keep, relative to the anchor (plain sampling from the expert).

    Attributes:
        within: fidelity metrics whose value must stay inside the anchor's interval on the bad side.
        invented_slack: allowed rise of the invented-word rate over the anchor's (0.005 = 0.5 pt).
        diversity: the metric the winner maximises.
    """

    within: tuple[str, ...] = ("adversarial_auroc", "mauve", "cosine_centroid")
    invented_slack: float = 0.005
    diversity: str = "normalised_3grams"

    def metrics(self) -> list[str]:
        """Every metric the budget reads (what `run_tune` computes)."""
        return list(dict.fromkeys([self.diversity, *self.within, "invented_word_rate", "completion_rate"]))


@dataclass(frozen=True)
class Setting:
    """One point of the search: γ, η, the head mask α (None = off) and `whole_words`."""

    gamma: float
    eta: float
    alpha: float | None = None
    whole_words: bool = False

    @property
    def name(self) -> str:
        """`γ0.2 η1 α0.1` (no α part when the mask is off, ` words` with `whole_words`)."""
        mask = "" if self.alpha is None else f" α{self.alpha:g}"
        return f"γ{self.gamma:g} η{self.eta:g}{mask}{' words' if self.whole_words else ''}"

    @property
    def slug(self) -> str:
        """File stem: `g0.2_e1_a0.1` (`_w` with `whole_words`)."""
        mask = "" if self.alpha is None else f"_a{self.alpha:g}"
        return f"g{self.gamma:g}_e{self.eta:g}{mask}{'_w' if self.whole_words else ''}"

    def overrides(self) -> dict[str, Any]:
        """The `SteerConfig` fields of this setting."""
        return {"gamma": self.gamma, "eta": self.eta, "alpha": self.alpha, "whole_words": self.whole_words}


SEARCHED_FIELDS = ("gamma", "eta", "alpha", "whole_words")
"""The `SteerConfig` fields a setting decides; the anchor is γ = η = 0 with the rest off."""
ANCHOR_OVERRIDES: dict[str, Any] = {"gamma": 0.0, "eta": 0.0, "alpha": None, "whole_words": False}


def meets_budget(row: Mapping[str, Any], anchor: Mapping[str, Any], budget: Budget) -> list[str]:
    """Why `row` misses the budget against `anchor` (a row with `ci`); an empty list when it meets it."""
    misses = []
    for metric in budget.within:
        value = row.get(metric, float("nan"))
        lo, hi = anchor.get("ci", {}).get(metric, (anchor.get(metric), anchor.get(metric)))
        if not (isinstance(value, float | int) and math.isfinite(value)):
            misses.append(f"{metric} is undefined")
        elif higher_is_better(metric) and value < lo:
            misses.append(f"{metric} {value:.3f} below the anchor interval [{lo:.3f}, {hi:.3f}]")
        elif not higher_is_better(metric) and value > hi:
            misses.append(f"{metric} {value:.3f} above the anchor interval [{lo:.3f}, {hi:.3f}]")
    inv, base = row.get("invented_word_rate"), anchor.get("invented_word_rate")
    if inv is not None and base is not None and inv > base + budget.invented_slack + 1e-12:
        misses.append(f"invented_word_rate {inv:.3f} > anchor {base:.3f} + {budget.invented_slack:g}")
    return misses


def best_setting(rows: Mapping[str, Mapping[str, Any]], budget: Budget) -> str | None:
    """The name of the row with the highest diversity among those whose `misses` list is empty."""
    ok = [(row[budget.diversity], name) for name, row in rows.items() if not row.get("misses")]
    ok = [(v, name) for v, name in ok if isinstance(v, float | int) and math.isfinite(v)]
    sign = 1 if higher_is_better(budget.diversity) else -1
    return max(ok, key=lambda p: sign * p[0])[1] if ok else None


def initial_grid(
    gammas: Sequence[float] = DEFAULT_GAMMAS,
    etas: Sequence[float] = DEFAULT_ETAS,
    alphas: Sequence[float | None] = DEFAULT_ALPHAS,
    whole_words: Sequence[bool] = DEFAULT_WHOLE_WORDS,
) -> list[Setting]:
    """Every (γ, η, α, whole_words) of the grid, η > 0 or γ > 0 (γ = η = 0 is the anchor itself)."""
    return [
        Setting(g, e, a, w)
        for w in whole_words
        for a in alphas
        for g in gammas
        for e in etas
        if e > 0 or g > 0
    ]


def refine_points(best: Setting, *, step_gamma: float = 0.2, step_eta: float = 0.2) -> list[Setting]:
    """Neighbours of `best`: γ ± step, η ± step (η > 0, γ >= 0), the same α, rounded to 0.01."""
    out = []
    for dg, de in ((-step_gamma, 0), (step_gamma, 0), (0, -step_eta), (0, step_eta)):
        g, e = round(best.gamma + dg, 2), round(best.eta + de, 2)
        if g >= 0 and e > 0:
            out.append(Setting(g, e, best.alpha, best.whole_words))
    return out


def split_dev(texts: Sequence[str], dev_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(pool, dev): a seeded `dev_fraction` of the texts (at least 2) is held out for scoring."""
    if len(texts) < 4:
        raise ValueError(
            f"`steer tune` needs at least 4 real examples (2 for the dev split), got {len(texts)}"
        )
    if not 0 < dev_fraction < 1:
        raise ValueError(f"`dev_fraction` must be in (0, 1), got {dev_fraction!r}")
    idx = list(range(len(texts)))
    random.Random(seed).shuffle(idx)
    k = min(len(texts) - 2, max(2, round(dev_fraction * len(texts))))
    dev = [texts[i] for i in sorted(idx[:k])]
    return [texts[i] for i in sorted(idx[k:])], dev


# --------------------------------------------------------------------------------- the search


@dataclass
class _Run:
    """What every setting of one tune run shares."""

    engine: Any
    prompt: str
    pool: list[str]
    dev: list[str]
    out: Path
    n: int
    seed: int
    budget: Budget
    resamples: int
    close_with: str | None
    key_base: dict[str, Any]
    done: dict[str, dict[str, Any]]
    on_setting: Callable[[str, dict[str, Any]], None] | None = None
    max_seconds: float | None = None
    started: float = 0.0
    steer_seconds: list[float] = field(default_factory=list)  # wall time of each fresh STEER setting

    def fits(self) -> bool:
        """Whether one more fresh STEER setting fits in the time budget (always before the first)."""
        if self.max_seconds is None or not self.steer_seconds:
            return True
        estimate = sum(self.steer_seconds) / len(self.steer_seconds)
        return time.monotonic() - self.started + estimate <= self.max_seconds

    def key(self, setting: Setting | None) -> str:
        """Hash of what decides a setting's result (the setting, weights+config, n, seed, dev split)."""
        what = {**self.key_base, "setting": None if setting is None else asdict(setting)}
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def _score(run: _Run, name: str, path: Path, *, ci: bool) -> dict[str, Any]:
    """Evaluate the rows in `path` against the dev split (with intervals for the anchor)."""
    from .data_io import read_texts
    from .eval.bootstrap import DEFAULT_COSTLY_RESAMPLES, costly, evaluate_with_ci
    from .eval.lexicon import read_finish_reasons
    from .eval.metrics import evaluate

    texts = read_texts(path)[: run.n]
    reasons = (read_finish_reasons(path) or [None] * len(texts))[: run.n]
    kwargs = {"metrics": run.budget.metrics(), "seed": run.seed, "finish_reasons": {name: reasons}}
    if ci:
        fewer = costly(min(run.resamples, DEFAULT_COSTLY_RESAMPLES))
        row = evaluate_with_ci({name: texts}, run.dev, resamples=run.resamples, fewer=fewer, **kwargs)[name]
    else:
        row = evaluate({name: texts}, run.dev, **kwargs)[name]
    return row


def _try(run: _Run, setting: Setting | None) -> dict[str, Any] | None:
    """Generate (or resume) and score one setting (None = the anchor); cached in results.jsonl.
    Returns None for a setting not on disk that does not fit in the time budget."""
    from .data_io import append_jsonl
    from .pipeline import generate_to_file

    key = run.key(setting)
    name = ANCHOR if setting is None else setting.name
    if key in run.done:
        if run.on_setting is not None:
            run.on_setting(name, run.done[key])
        return run.done[key]
    if setting is not None and not run.fits():
        return None
    from ..core.negatives import NegativePool

    t0 = time.monotonic()

    slug = "anchor" if setting is None else setting.slug
    path = run.out / "settings" / f"{slug}.jsonl"
    overrides = dict(ANCHOR_OVERRIDES) if setting is None else setting.overrides()
    pool = NegativePool(run.pool, seed=run.seed)
    stats = generate_to_file(
        run.engine, run.prompt, run.n, path, pool=pool, seed=run.seed, close_with=run.close_with, **overrides
    )
    row = _score(run, name, path, ci=setting is None)
    record = {
        "key": key,
        "name": name,
        "setting": overrides,
        "scores": row,
        "seconds": round(stats.seconds, 1),
    }
    append_jsonl(run.out / "results.jsonl", [record])
    run.done[key] = record
    if setting is not None:
        run.steer_seconds.append(time.monotonic() - t0)
    if run.on_setting is not None:
        run.on_setting(name, record)
    return record


def _load_done(path: Path) -> dict[str, dict[str, Any]]:
    from .data_io import read_jsonl

    return {r["key"]: r for r in read_jsonl(path)} if path.exists() else {}


def _rank(run: _Run, anchor: dict[str, Any], tried: Mapping[Setting, dict[str, Any]]) -> Setting | None:
    """The setting to refine around: the best budget-meeting one, else the one missing least."""
    rows = {}
    for setting, record in tried.items():
        row = dict(record["scores"])
        row["misses"] = meets_budget(row, anchor["scores"], run.budget)
        rows[setting] = row
    ok = best_setting({s.name: r for s, r in rows.items()}, run.budget)
    if ok is not None:
        return next(s for s in rows if s.name == ok)
    if not rows:
        return None
    return min(rows, key=lambda s: (len(rows[s]["misses"]), -rows[s].get(run.budget.diversity, 0.0)))


def _write_outputs(
    run: _Run,
    anchor: dict[str, Any],
    tried: dict[Setting, dict[str, Any]],
    settings: Mapping[str, Any],
    skipped: Sequence[Setting] = (),
) -> dict[str, Any]:
    """tune.json, the recipe of the winner and report.html; returns the tune.json content."""
    rows: dict[str, dict[str, Any]] = {ANCHOR: {**anchor["scores"], "misses": []}}
    for setting, record in tried.items():
        rows[setting.name] = {
            **record["scores"],
            "misses": meets_budget(record["scores"], anchor["scores"], run.budget),
        }
    winner_name = best_setting({k: v for k, v in rows.items() if k != ANCHOR}, run.budget)
    winner = next((s for s in tried if s.name == winner_name), None)
    chosen = winner.overrides() if winner else dict(ANCHOR_OVERRIDES)
    # the draw, the spelling floor and the known-words guard the settings were measured with, so a
    # later change of a default does not change the recipe
    engine_cfg = run.engine.config
    drawn = {
        "negatives_from": engine_cfg.negatives_from,
        "spelling_min_p": engine_cfg.spelling_min_p,
        "known_words": engine_cfg.known_words,
    }
    recipe = {**settings, "config": {**drawn, **settings.get("config", {}), **chosen}}
    recipe_path = run.out / RECIPE_NAME
    recipe_path.write_text(json.dumps(recipe, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    result = {
        "format": "steer-tune/1",
        "winner": winner_name or ANCHOR,
        "winner_setting": chosen,
        "budget": asdict(run.budget),
        "anchor": ANCHOR,
        "n": run.n,
        "seed": run.seed,
        "dev_size": len(run.dev),
        "pool_size": len(run.pool),
        "results": rows,
        "tried": [
            {"name": r["name"], "setting": r["setting"], "seconds": r["seconds"]}
            for r in [anchor, *tried.values()]
        ],
        "recipe": str(recipe_path),
        "time_budget_s": run.max_seconds,
        "elapsed_s": round(time.monotonic() - run.started, 1),
        "skipped": [s.name for s in skipped],
    }
    (run.out / "tune.json").write_text(
        json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    from .report import write_report

    samples = {ANCHOR: _texts(run.out / "settings" / "anchor.jsonl", run.n)}
    samples.update({s.name: _texts(run.out / "settings" / f"{s.slug}.jsonl", run.n) for s in tried})
    notes = [f"winner: {result['winner']} ({json.dumps(chosen)}); recipe: {recipe_path.name}"]
    notes += [f"{name}: misses {'; '.join(r['misses'])}" for name, r in rows.items() if r["misses"]]
    if skipped:
        notes.append(
            f"not tried within the time budget ({run.max_seconds:.0f} s): {', '.join(s.name for s in skipped)}; "
            "rerun with a larger budget to add them (finished settings are reused)"
        )
    points = [
        (name, r.get(run.budget.diversity, math.nan), r.get("cosine_centroid", math.nan))
        for name, r in rows.items()
    ]
    write_report(
        run.out / "report.html",
        title="steer tune",
        results=rows,
        samples=samples,
        reference=run.dev,
        notes=notes,
        pareto=points,
    )
    return result


def _texts(path: Path, n: int) -> list[str]:
    from .data_io import read_texts

    return read_texts(path)[:n] if path.exists() else []


def run_tune(
    engine: Any,
    prompt: str,
    real: Sequence[str],
    out_dir: str | os.PathLike[str],
    *,
    n: int = 48,
    dev_fraction: float = 0.25,
    budget: Budget | None = None,
    grid: Sequence[Setting] | None = None,
    rounds: int = 1,
    seed: int = 0,
    resamples: int = 200,
    close_with: str | None = None,
    settings: Mapping[str, Any] | None = None,
    on_setting: Callable[[str, dict[str, Any]], None] | None = None,
    max_seconds: float | None = None,
) -> dict[str, Any]:
    """Search (γ, η, α) for the most diverse setting within `budget`; see the module docstring.

    Args:
        engine: a `SteerEngine` over the expert (its config supplies everything but γ, η, α).
        prompt: the prompt every setting decodes from.
        real: the user's real examples (split into pool and dev).
        out_dir: where settings, results.jsonl, tune.json, the recipe and report.html go.
        n: rows generated per setting.
        dev_fraction: share of `real` held out for scoring.
        budget: the fidelity budget (default `Budget()`).
        grid: the first settings to try (default `initial_grid()`).
        rounds: refinement rounds around the best setting after the grid.
        seed: seeds the split, the negative draws, the sampling and the bootstrap.
        resamples: bootstrap resamples for the anchor's intervals.
        close_with: re-append this stop string (e.g. "?") to texts that ended on it.
        settings: run keys (expert, pool, prompt, ...) and `config` fields copied into the recipe.
        on_setting: called with (name, record) after each setting is scored (progress).
        max_seconds: the time budget (None: no limit); settings that do not fit are skipped and
            listed in the result's `skipped`.

    Returns:
        The content of `tune.json` (winner, its setting, every row with its misses, the recipe path).
    """
    if n < 2:
        raise ValueError(f"`n` must be >= 2, got {n}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pool, dev = split_dev(list(real), dev_fraction, seed)
    budget = budget or Budget()
    key_base = {
        "engine": engine.fingerprint(),
        "n": n,
        "seed": seed,
        "dev": hashlib.sha256("\n".join(dev).encode()).hexdigest()[:16],
        "budget": budget.metrics(),
        "resamples": resamples,
    }
    run = _Run(
        engine,
        prompt,
        pool,
        dev,
        out,
        n,
        seed,
        budget,
        resamples,
        close_with,
        key_base,
        _load_done(out / "results.jsonl"),
        on_setting,
        max_seconds,
        time.monotonic(),
    )
    anchor = _try(run, None)
    assert anchor is not None  # the anchor always runs
    tried, skipped = _search(run, anchor, grid if grid is not None else initial_grid(), rounds)
    return _write_outputs(run, anchor, tried, dict(settings or {}), skipped)


def _search(
    run: _Run, anchor: dict[str, Any], grid: Sequence[Setting], rounds: int
) -> tuple[dict[Setting, dict[str, Any]], list[Setting]]:
    """The grid (the product default first), then `rounds` of refinement around the best setting;
    returns (setting -> record of those tried, settings skipped by the time budget)."""
    tried: dict[Setting, dict[str, Any]] = {}
    skipped: list[Setting] = []

    def attempt(setting: Setting) -> None:
        record = _try(run, setting)
        if record is None:
            skipped.append(setting)
        else:
            tried[setting] = record

    for setting in default_first(grid):
        attempt(setting)
    for _ in range(max(0, rounds)):
        centre = _rank(run, anchor, tried)
        fresh = [s for s in refine_points(centre) if s not in tried and s not in skipped] if centre else []
        if not fresh:
            break
        for setting in fresh:
            attempt(setting)
    return tried, skipped


def default_first(grid: Sequence[Setting]) -> list[Setting]:
    """`grid` with the product default's setting (`SteerConfig()`) first when it is in it: under a
    tight time budget the default is always measured."""
    from ..core.config import SteerConfig

    cfg = SteerConfig()
    default = Setting(cfg.gamma, cfg.eta, cfg.alpha, cfg.whole_words)
    return sorted(grid, key=lambda s: s != default)


@dataclass(frozen=True)
class Tuned:
    """What `load_tuned` returns: an engine set up as the recipe says, and the prompt it was tuned on.

    Attributes:
        engine: a `SteerEngine` over the recipe's expert (and base), its config the winner's, its
            negative pool the recipe's real examples. Pass it to any integration:
            `SteerLLM(engine=tuned.engine)`, `ChatSteer(engine=...)`, `steer_lm(engine=...)`,
            `SteerAugmenter(engine=...)`.
        prompt: the prompt every setting was generated from.
        close_with: the stop string to re-append to outputs that ended on it, or None.
    """

    engine: Any
    prompt: str | None
    close_with: str | None


def load_tuned(path: str | os.PathLike[str], **engine_kwargs: Any) -> Tuned:
    """Build an engine from a `steer tune` recipe (`<out>/steer_tuned.json`).

    Args:
        path: the recipe file.
        **engine_kwargs: passed to `SteerEngine` (e.g. `device="cuda"`, `max_batch_size=16`).

    Raises:
        ValueError: the file is not a recipe (no `expert` or a `config` that `SteerConfig` refuses).
    """
    from ..core.config import SteerConfig
    from ..core.engine import SteerEngine
    from .data_io import read_texts

    recipe = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(recipe, dict) or not isinstance(recipe.get("expert"), str):
        raise ValueError(f"{path} is not a `steer tune` recipe (no `expert`): pass <out>/{RECIPE_NAME}")
    config = SteerConfig().merged(**recipe.get("config", {}))
    pool = read_texts(recipe["pool"]) if recipe.get("pool") else None
    engine = SteerEngine(recipe["expert"], recipe.get("base"), config=config, pool=pool, **engine_kwargs)
    return Tuned(engine, recipe.get("prompt"), recipe.get("close_with"))
