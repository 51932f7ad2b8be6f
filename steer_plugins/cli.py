"""`steer`: the command line of steer-plugins (demo, generate, finetune, evaluate, sweep).

Every command prints a worked example with `--help`. Errors in the user's input (missing file,
malformed JSONL line, unknown config key, empty reference) print one line naming the problem and
exit with status 2; `main(argv)` returns the status instead of exiting, so tests call it in-process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser", "config_flag_specs", "RUN_KEYS"]

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_EXPERT = str(ASSETS / "adapters" / "hypotheses-lora")
DEFAULT_SEED_SET = str(ASSETS / "seed_hypotheses.jsonl")
DEMO_N = 8
DEMO_MAX_NEW_TOKENS = 32
DEMO_THREADS = 1

RUN_KEYS: dict[str, str] = {
    "expert": "expert model: PEFT adapter folder, HF folder, .gguf, or 'smollm2-135m-instruct'",
    "base": "base model (default: the adapter's base with the adapter off)",
    "prompt": "exact prompt string (default: the adapter's recorded training prompt)",
    "instruction": "instruction wrapped in the tokenizer's chat template (instead of `prompt`)",
    "prompted_expert": "file of real examples shown in context (zero-training expert; the base branch gets the plain instruction)",
    "num_shots": "examples shown in context by the prompted expert",
    "n": "rows wanted in the output",
    "out": "output file (.jsonl or .parquet)",
    "pool": "file of real examples seeding the negative pool",
    "chunk_size": "rows decoded and appended per step",
    "close_with": "re-append this stop string to texts that ended on it (e.g. '?')",
    "threads": "torch CPU threads",
    "device": "torch device (cpu, cuda)",
}
"""Keys a `steer generate` config file may hold besides the `SteerConfig` fields."""


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


# ----------------------------------------------------------------------------- SteerConfig flags


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return annotation, False


def _optional(kind: type):
    def parse(text: str):
        return None if text.lower() in ("none", "off", "null") else kind(text)

    parse.__name__ = kind.__name__
    return parse


def config_flag_specs() -> list[tuple[str, dict[str, Any]]]:
    """`(flag, argparse kwargs)` for every `SteerConfig` field, derived from its annotation."""
    from .config import SteerConfig

    specs = []
    for name, field in SteerConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        ann, optional = _unwrap_optional(field.annotation)
        default = field.default if field.default_factory is None else field.default_factory()
        help_text = f"{field.description or ''} (default {default!r}{'; none = off' if optional else ''})"
        kw: dict[str, Any] = {"dest": f"cfg_{name}", "default": None, "help": help_text}
        if typing.get_origin(ann) is typing.Literal:
            kw["choices"] = list(typing.get_args(ann))
        elif typing.get_origin(ann) is list:
            (item,) = typing.get_args(ann)
            kw.update(action="append", type=item, metavar=item.__name__.upper())
            kw["help"] += "; repeat the flag for several"
        elif ann is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = _optional(ann) if optional else ann
            kw["metavar"] = ann.__name__.upper()
        specs.append((flag, kw))
    return specs


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("decoding (SteerConfig fields; override the config file)")
    for flag, kw in config_flag_specs():
        group.add_argument(flag, **kw)


def _config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_") and v is not None}


# --------------------------------------------------------------------------------- helpers


def _load_config_file(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"config file not found: `{p}`")
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as e:
            raise CLIError(
                "YAML config files need pyyaml: pip install 'steer-plugins[eval]' (or use JSON)"
            ) from e
        data = yaml.safe_load(text) or {}
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise CLIError(f"{p}, line {e.lineno}: malformed JSON config ({e.msg})") from None
    if not isinstance(data, dict):
        raise CLIError(f"config file `{p}` must hold a mapping of keys to values, got {type(data).__name__}")
    nested = data.pop("config", None) or {}
    if not isinstance(nested, dict):
        raise CLIError(f"config file `{p}`: `config` must be a mapping of SteerConfig fields")
    data.update(nested)
    from .config import SteerConfig

    known = set(RUN_KEYS) | set(SteerConfig.model_fields)
    unknown = sorted(set(data) - known)
    if unknown:
        raise CLIError(
            f"unknown config key(s) {unknown} in `{p}`; run keys: {sorted(RUN_KEYS)}; "
            f"SteerConfig fields: {sorted(SteerConfig.model_fields)}"
        )
    return data


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def _read(path: str | os.PathLike[str], what: str) -> list[str]:
    from .data_io import read_texts

    texts = read_texts(path)
    if not texts:
        raise CLIError(f"{what} file `{path}` has no examples (it is empty or only blank lines)")
    return texts


def _resolve_prompt(engine: Any, settings: dict[str, Any]) -> str:
    from .pipeline import HYPOTHESIS_INSTRUCTION, read_recipe_prompt

    if settings.get("prompt") and settings.get("instruction"):
        raise CLIError("give either `prompt` (exact string) or `instruction` (chat-wrapped), not both")
    if settings.get("prompted_expert"):
        from .prompted import DEFAULT_NUM_SHOTS, prompted_prompt

        examples = _read(settings["prompted_expert"], "prompted-expert examples")
        instruction = settings.get("instruction") or HYPOTHESIS_INSTRUCTION
        shots = int(settings.get("num_shots") or DEFAULT_NUM_SHOTS)
        return prompted_prompt(engine.tokenizer, instruction, examples, num_shots=shots)
    if settings.get("prompt"):
        return str(settings["prompt"])
    if settings.get("instruction"):
        return _wrap(engine, settings["instruction"])
    expert = settings.get("expert") or DEFAULT_EXPERT
    if isinstance(expert, str) and (recorded := read_recipe_prompt(expert)):
        return recorded
    return _wrap(engine, HYPOTHESIS_INSTRUCTION)


def _wrap(engine: Any, instruction: str) -> str:
    if getattr(engine.tokenizer, "chat_template", None):
        return engine.apply_chat_template([{"role": "user", "content": instruction}])
    return instruction


def _build_engine(settings: dict[str, Any], config: Any, *, pool: list[str] | None) -> Any:
    from .engine import SteerEngine

    expert = settings.get("expert") or DEFAULT_EXPERT
    if (
        isinstance(expert, str)
        and not Path(expert).exists()
        and (os.sep in expert or expert.endswith((".gguf", ".json", ".jsonl")))
    ):
        raise CLIError(
            f"expert model not found: `{expert}` (a folder, .gguf file or 'smollm2-135m-instruct')"
        )
    _log(f"loading expert {expert}" + (f" over base {settings['base']}" if settings.get("base") else ""))
    return SteerEngine(
        expert, settings.get("base"), config=config, pool=pool, device=settings.get("device"),
        max_batch_size=max(1, int(settings.get("chunk_size") or 16)),
    )  # fmt: skip


def _log(msg: str) -> None:
    print(f"[steer] {msg}", file=sys.stderr, flush=True)


def _add_model_flags(p: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    g = p.add_argument_group("model and prompt")
    g.add_argument(
        "--expert", help=f"expert model (default: the shipped adapter {Path(DEFAULT_EXPERT).name})"
    )
    g.add_argument("--base", help="base model (default: the adapter's base with the adapter switched off)")
    g.add_argument("--prompt", help="exact prompt string (default: the adapter's recorded training prompt)")
    g.add_argument("--instruction", help="an instruction; wrapped in the tokenizer's chat template")
    g.add_argument(
        "--prompted-expert", metavar="FILE",
        help="zero-training expert: show examples from FILE in the prompt (sets gamma=0; see docs)",
    )  # fmt: skip
    g.add_argument("--num-shots", type=int, help="in-context examples for --prompted-expert (default 5)")
    g.add_argument("--pool", metavar="FILE", help="real examples (JSONL or text) seeding the negative pool")
    g.add_argument("--threads", type=int, help="torch CPU threads (1 is often fastest on a busy machine)")
    g.add_argument("--device", help="torch device, e.g. cuda (default cpu)")


def _settings(args: argparse.Namespace, file_cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(run settings, SteerConfig fields): config file first, flags override."""
    from .config import SteerConfig

    settings = {k: v for k, v in file_cfg.items() if k in RUN_KEYS}
    fields = {k: v for k, v in file_cfg.items() if k in SteerConfig.model_fields}
    for key in RUN_KEYS:
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    fields.update(_config_overrides(args))
    return settings, fields


def _make_config(fields: dict[str, Any]) -> Any:
    from .config import SteerConfig

    try:
        return SteerConfig().merged(**fields)
    except ValueError as e:  # pydantic ValidationError is a ValueError
        raise CLIError(f"invalid decoding setting: {e}") from None


def _pool_for(settings: dict[str, Any]) -> list[str] | None:
    if settings.get("pool"):
        return _read(settings["pool"], "pool")
    if (settings.get("expert") or DEFAULT_EXPERT) == DEFAULT_EXPERT:
        from .data_io import read_texts

        return read_texts(DEFAULT_SEED_SET)
    return None


# -------------------------------------------------------------------------------- commands


def cmd_generate(args: argparse.Namespace) -> int:
    from .pipeline import HYPOTHESIS_INSTRUCTION, generate_to_file

    settings, fields = _settings(args, _load_config_file(args.config))
    if settings.get("prompted_expert"):
        # zero-training expert: the plain base model, its in-context examples double as the pool
        settings.setdefault("expert", "smollm2-135m-instruct")
        settings.setdefault("pool", settings["prompted_expert"])
    if not settings.get("out"):
        raise CLIError("no output file: pass --out FILE.jsonl (or `out:` in the config file)")
    n = int(settings.get("n") or 0)
    if n < 1:
        raise CLIError(f"`n` must be a positive integer, got {settings.get('n')!r}: pass --n 100")
    config = _make_config(fields)
    _set_threads(settings.get("threads"))
    pool = _pool_for(settings)
    if config.eta > 0 and not pool:
        _log("warning: eta > 0 but no --pool of real examples: negative prompting is off")
    engine = _build_engine(settings, config, pool=pool)
    try:
        prompt = _resolve_prompt(engine, settings)
        # prompted expert: the expert branch sees the examples, the base branch the plain instruction
        base_prompt = (
            _wrap(engine, settings.get("instruction") or HYPOTHESIS_INSTRUCTION)
            if settings.get("prompted_expert")
            else None
        )
        _log(f"prompt: {prompt!r}")
        _log(f"writing {n} rows to {settings['out']} (gamma={config.gamma}, eta={config.eta})")

        def report(s):
            _log(f"{s.total}/{n} rows, {s.completion_tokens} tokens, {s.tokens_per_s:.1f} tok/s")

        stats = generate_to_file(
            engine, prompt, n, settings["out"], chunk_size=int(settings.get("chunk_size") or 16),
            close_with=settings.get("close_with"), progress=not args.quiet, on_chunk=report,
            extra_fields={"model": engine.name} if args.record_model else None, base_prompt=base_prompt,
        )  # fmt: skip
    finally:
        engine.close()
    if stats.skipped:
        _log(f"resumed: {stats.skipped} rows were already in {settings['out']}")
    print(json.dumps(stats.to_dict()))
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    import random

    from .finetune import _load_model, finetune_lora

    texts = _read(args.data, "training data")
    eval_texts: list[str] = []
    if args.holdout > 0:
        if not 0 < args.holdout < 1:
            raise CLIError(f"`--holdout` must be in [0, 1), got {args.holdout}")
        idx = list(range(len(texts)))
        random.Random(args.seed).shuffle(idx)
        k = max(1, round(args.holdout * len(texts))) if len(texts) > 1 else 0
        eval_texts = [texts[i] for i in idx[:k]]
        texts = [texts[i] for i in sorted(idx[k:])]
    _set_threads(args.threads)
    base = args.base
    if not (base == "smollm2-135m-instruct" or Path(base).exists()):
        raise CLIError(f"base model not found: `{base}` (a folder, .gguf file or 'smollm2-135m-instruct')")
    _log(f"loading base {base}")
    model, tok, base_name = _load_model(base)
    if args.prompt and args.instruction:
        raise CLIError("give either --prompt or --instruction, not both")
    prompt = args.prompt or ""
    if args.instruction:
        prompt = args.instruction
        if getattr(tok, "chat_template", None):
            prompt = tok.apply_chat_template(
                [{"role": "user", "content": args.instruction}], tokenize=False, add_generation_prompt=True
            )
    _log(f"training LoRA r={args.r} on {len(texts)} examples for {args.steps} steps -> {args.out}")
    out = finetune_lora(
        (model, tok), texts, args.out, r=args.r, alpha=args.alpha, steps=args.steps, lr=args.lr,
        batch_size=args.batch_size, max_length=args.max_length, seed=args.seed, prompt=prompt,
        eval_texts=eval_texts or None, progress=not args.quiet, base_name=base_name,
        extra_recipe={"instruction": args.instruction, "command": "steer finetune " + " ".join(args.argv)},
    )  # fmt: skip
    recipe = json.loads((out / "steer_recipe.json").read_text())
    print(json.dumps({"adapter": str(out), "loss": recipe["loss"], "heldout": recipe["heldout"]}))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .eval import evaluate, format_table

    reference = _read(args.reference, "reference")
    synthetic = {}
    for path in args.synthetic:
        if path in synthetic:
            raise CLIError(f"synthetic file `{path}` given twice")
        synthetic[path] = _read(path, "synthetic")
    results = evaluate(
        synthetic, reference, metrics=args.metrics, seed=args.seed, sample_size=args.sample_size,
        reference_name=f"{args.reference} (real)" if args.show_reference else None,
    )  # fmt: skip
    n = next(iter(results.values()))["sample_size"]
    print(format_table(results))
    print(
        f"sample size used: {n} examples per set (seeded subsample, seed={args.seed}; reference has {len(reference)})"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import parse_grid, run_sweep

    settings, fields = _settings(args, {})
    seed = fields.pop("seed", None)
    seed = 0 if seed is None else seed
    gammas = parse_grid(args.gammas, name="--gammas")
    etas = parse_grid(args.etas, name="--etas")
    reference = _read(args.reference, "reference")
    metrics = [m.strip() for m in args.metrics.split(",")] if args.metrics else None
    config = _make_config(fields)
    _set_threads(settings.get("threads"))
    pool = _pool_for(settings)
    engine = _build_engine({**settings, "chunk_size": args.n}, config, pool=pool)
    try:
        prompt = _resolve_prompt(engine, settings)
        t0 = time.perf_counter()
        result = run_sweep(
            engine, prompt, reference, args.out, gammas=gammas, etas=etas, n=args.n, metrics=metrics,
            diversity_metric=args.diversity_metric, fidelity_metric=args.fidelity_metric,
            close_with=settings.get("close_with"), progress=not args.quiet, seed=seed,
        )  # fmt: skip
    finally:
        engine.close()
    from .eval import format_table

    print(format_table(result["results"]))
    print(
        f"Pareto front ({args.diversity_metric} vs {args.fidelity_metric}): {', '.join(result['pareto_front'])}"
    )
    print("plots:", *result["plots"], sep="\n  ")
    print(f"{time.perf_counter() - t0:.0f} s; results in {Path(args.out) / 'sweep.json'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .config import SteerConfig
    from .data_io import read_texts
    from .pipeline import read_recipe_prompt

    t0 = time.perf_counter()
    _set_threads(args.threads)
    seeds = read_texts(DEFAULT_SEED_SET)
    config = SteerConfig(max_new_tokens=args.max_new_tokens, stop=["?"])
    from .engine import SteerEngine

    _log(f"loading the shipped expert ({Path(DEFAULT_EXPERT).name} over smollm2-135m-instruct)")
    engine = SteerEngine(DEFAULT_EXPERT, config=config, pool=seeds, max_batch_size=args.n)
    prompt = read_recipe_prompt(DEFAULT_EXPERT)
    _log(f"loaded in {time.perf_counter() - t0:.0f} s; prompt: {prompt!r}")
    try:
        t1 = time.perf_counter()
        _log(f"STEER (gamma=0.2, eta=0.6, K=10, top-k 10): {args.n} hypotheses")
        steer = engine.generate([prompt] * args.n, progress=True, seed=args.seed, gamma=0.2, eta=0.6)
        t2 = time.perf_counter()
        _log(f"plain sampling from the expert (gamma=0, eta=0, top-k 10): {args.n} hypotheses")
        plain = engine.generate(
            [prompt] * args.n, progress=True, seed=args.seed, gamma=0.0, eta=0.0, add_to_pool=False
        )
        t3 = time.perf_counter()
    finally:
        engine.close()
    a = [r.text.strip() + ("?" if r.finish_reason == "stop" else "") for r in steer]
    b = [r.text.strip() + ("?" if r.finish_reason == "stop" else "") for r in plain]
    width = 58
    print(f"\n{'STEER (γ=0.2, η=0.6)':<{width}} | plain expert sampling (γ=η=0)")
    print("-" * width + "-+-" + "-" * width)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        left, right = (
            textwrap.wrap(f"{i + 1}. {x}", width) or [""],
            textwrap.wrap(f"{i + 1}. {y}", width) or [""],
        )
        for k in range(max(len(left), len(right))):
            lx = left[k] if k < len(left) else ""
            print(f"{lx:<{width}} | {right[k] if k < len(right) else ''}")
    from .eval import TEXT_METRICS, evaluate, format_table

    metrics = list(TEXT_METRICS) + ([] if args.no_embeddings else ["cosine_pairwise", "cosine_centroid"])
    try:
        results = evaluate({"steer": a, "expert (plain)": b}, seeds, metrics=metrics, seed=args.seed,
                           reference_name="seed set (real)")  # fmt: skip
    except ImportError as e:  # embeddings need the [eval] extra
        _log(f"{e}; showing text metrics only")
        results = evaluate(
            {"steer": a, "expert (plain)": b}, seeds, metrics=list(TEXT_METRICS), seed=args.seed
        )
    print()
    print(format_table(results))
    n = next(iter(results.values()))["sample_size"]
    print(
        f"\nsample size {n} (tiny: the demo shows the mechanics, see the README for a study). "
        f"Cosines are against the shipped seed set. Timing: load {t1 - t0:.0f} s, STEER {t2 - t1:.0f} s "
        f"({sum(r.completion_tokens for r in steer)} tokens), plain {t3 - t2:.0f} s, "
        f"total {time.perf_counter() - t0:.0f} s."
    )
    return 0


# -------------------------------------------------------------------------------- parser

_EPILOGS = {
    "steer": """examples:
  steer demo
  steer generate --pool real.jsonl --n 200 --out synth.jsonl --stop '?' --close-with '?'
  steer evaluate --reference real.jsonl synth.jsonl plain.jsonl --json scores.json
  steer finetune real.jsonl --out my-lora --instruction "Write a research hypothesis in astronomy, phrased as a question."
  steer sweep --reference heldout.jsonl --pool real.jsonl --gammas 0,0.4,0.8 --etas 0,0.4,0.8 --n 32 --out sweep/
""",
    "demo": """example:
  steer demo                 # 8 STEER vs 8 plain hypotheses from the shipped expert, with metrics
  steer demo --n 16 --threads 1
""",
    "generate": """examples:
  steer generate --pool real.jsonl --n 500 --out synth.jsonl --stop '?' --close-with '?'
  steer generate --expert my-lora --gamma 0.4 --eta 0.8 --alpha 0.1 --n 100 --out synth.parquet
  steer generate --config run.yaml          # run.yaml:  expert: my-lora
                                            #            pool: real.jsonl
                                            #            n: 500
                                            #            out: synth.jsonl
                                            #            gamma: 0.2
                                            #            eta: 0.6
                                            #            stop: ["?"]
  steer generate --prompted-expert real.jsonl --expert smollm2-135m-instruct --pool real.jsonl --n 50 --out p.jsonl
Interrupted? Run the same command again: rows already in --out are kept and skipped.
Keys allowed in a config file: the run flags above (underscored: prompted_expert, chunk_size, ...) and every
decoding flag (SteerConfig field); anything else is an error.
""",
    "finetune": """example:
  steer finetune real.jsonl --out my-lora --steps 60 \\
      --instruction "Write a research hypothesis in astronomy, phrased as a question."
  steer generate --expert my-lora --pool real.jsonl --n 100 --out synth.jsonl
The adapter folder holds adapter_model.safetensors, adapter_config.json and steer_recipe.json (how it was
made, including the exact prompt, which `generate` reuses).
""",
    "evaluate": """examples:
  steer evaluate --reference real.jsonl steer.jsonl plain.jsonl
  steer evaluate --reference real.txt synth.jsonl --metrics normalised_3grams,diversity --json scores.json
Inputs: JSONL with a `text` field, or plain text with one example per line. Every set (and the reference)
is subsampled (seeded) to the smallest size, printed as `sample size used`.
Metrics: normalised_3grams, diversity, distinct_2, self_bleu, vendi, cosine_pairwise, cosine_centroid,
mauve, adversarial_auroc (the last five load the MiniLM embedding model).
""",
    "sweep": """example:
  steer sweep --reference heldout.jsonl --pool train.jsonl --gammas 0,0.4,0.8 --etas 0,0.4,0.8 \\
      --n 32 --max-new-tokens 40 --stop '?' --out sweep/
Writes sweep/g<γ>_e<η>.jsonl per cell (resumable), sweep/sweep.json, sweep/heatmap_<metric>.png and
sweep/pareto.png (diversity vs fidelity; the Pareto front is joined).
""",
}


def _sub(subs, name: str, help_text: str) -> argparse.ArgumentParser:
    return subs.add_parser(
        name, help=help_text, description=help_text, epilog=_EPILOGS[name],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The `steer` argument parser (subcommands demo, generate, finetune, evaluate, sweep)."""
    p = argparse.ArgumentParser(
        prog="steer",
        description="STEER decoding (arXiv 2308.07645): diverse, faithful synthetic data from an expert model.",
        epilog=_EPILOGS["steer"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subs = p.add_subparsers(dest="command", metavar="COMMAND")

    d = _sub(subs, "demo", "Offline demo: STEER vs plain sampling from the shipped expert, side by side.")
    d.add_argument("--n", type=int, default=DEMO_N, help=f"hypotheses per method (default {DEMO_N})")
    d.add_argument("--max-new-tokens", type=int, default=DEMO_MAX_NEW_TOKENS)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument(
        "--threads", type=int, default=DEMO_THREADS,
        help=f"torch CPU threads (default {DEMO_THREADS}: fastest when the cores are shared; try 2+ on an idle machine)",
    )  # fmt: skip
    d.add_argument("--no-embeddings", action="store_true", help="skip the MiniLM cosine metrics")
    d.set_defaults(func=cmd_demo)

    g = _sub(subs, "generate", "Generate synthetic examples with STEER into JSONL or Parquet (resumable).")
    g.add_argument(
        "--config", help="YAML or JSON file of run keys and SteerConfig fields (flags override it)"
    )
    g.add_argument("--n", type=int, help="rows wanted in --out (existing rows count)")
    g.add_argument("--out", help="output file, .jsonl or .parquet")
    g.add_argument("--chunk-size", type=int, help="rows decoded together and appended at once (default 16)")
    g.add_argument("--close-with", help="re-append this stop string to texts that ended on it, e.g. '?'")
    g.add_argument("--record-model", action="store_true", help="add a `model` field to each row")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_model_flags(g)
    _add_config_flags(g)
    g.set_defaults(func=cmd_generate)

    f = _sub(subs, "finetune", "Train a LoRA expert on real examples; `generate --expert DIR` loads it.")
    f.add_argument("data", help="real examples: JSONL (`text` field) or plain text, one per line")
    f.add_argument("--out", required=True, help="adapter folder to write")
    f.add_argument(
        "--base", default="smollm2-135m-instruct", help="base model (default: the embedded SmolLM2)"
    )
    f.add_argument(
        "--instruction", help="instruction the expert answers (chat-wrapped; recorded as its prompt)"
    )
    f.add_argument("--prompt", help="exact prompt prefix instead of --instruction")
    f.add_argument("--steps", type=int, default=60)
    f.add_argument("--lr", type=float, default=1e-3)
    f.add_argument("--r", type=int, default=8, help="LoRA rank (the authors: 64 on Falcon-7B)")
    f.add_argument("--alpha", type=int, default=16, help="LoRA alpha")
    f.add_argument("--batch-size", type=int, default=8)
    f.add_argument("--max-length", type=int, default=64)
    f.add_argument("--holdout", type=float, default=0.1, help="fraction held out for perplexity (0 = none)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--threads", type=int, help="torch CPU threads")
    f.add_argument("--quiet", action="store_true")
    f.set_defaults(func=cmd_finetune)

    e = _sub(subs, "evaluate", "Score synthetic files against real examples (diversity and fidelity).")
    e.add_argument("--reference", required=True, help="the real examples (JSONL or plain text)")
    e.add_argument("synthetic", nargs="+", help="one or more synthetic files")
    e.add_argument("--metrics", help="comma-separated subset, e.g. normalised_3grams,diversity (default all)")
    e.add_argument("--json", help="write {file: {metric: value}} here")
    e.add_argument("--sample-size", type=int, help="cap on the common sample size")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--show-reference", action="store_true", help="also score the reference's own diversity")
    e.set_defaults(func=cmd_evaluate)

    s = _sub(subs, "sweep", "γ × η grid: generate, evaluate, heat maps and a diversity–fidelity Pareto plot.")
    s.add_argument("--reference", required=True, help="held-out real examples to score against")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--gammas", default="0,0.4,0.8")
    s.add_argument("--etas", default="0,0.4,0.8")
    s.add_argument("--n", type=int, default=32, help="samples per cell")
    s.add_argument("--metrics", help="comma-separated subset (default all nine)")
    s.add_argument("--diversity-metric", default="normalised_3grams")
    s.add_argument("--fidelity-metric", default="cosine_centroid")
    s.add_argument("--close-with", help="re-append this stop string, e.g. '?'")
    s.add_argument("--quiet", action="store_true")
    _add_model_flags(s)
    _add_config_flags(s)
    s.set_defaults(func=cmd_sweep)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run `steer` with `argv` (default `sys.argv[1:]`); returns the exit status."""
    from .data_io import DataFormatError

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help or a usage error
        return int(e.code or 0)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    args.argv = argv[1:]
    try:
        return args.func(args)
    except (CLIError, FileNotFoundError, IsADirectoryError, DataFormatError, ValueError, ImportError) as e:
        print(f"steer {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"steer {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
