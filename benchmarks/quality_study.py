"""Quality study: is STEER more diverse than sampling from the expert, at equal fidelity?

On the astronomy hypotheses in `../shared/data/astro_hypotheses.jsonl` (never copied into the repo):

1. Split (seeded): a held-out **reference** split (never trained or tuned on), a small **dev** split
   (held-out perplexity of the adapter), and the **train** split (LoRA expert + negative pool).
2. Train a LoRA expert over SmolLM2-135M-Instruct with `finetune_lora` (chat-formatted instruction,
   loss on the hypothesis only), a few CPU minutes.
3. Generate `--n` hypotheses per method, stop at "?": STEER at the paper defaults (γ=0.2, η=0.6,
   K=10, top-k 10), the expert with top-k 10, the expert with nucleus top-p 0.92, the base model
   (top-k 10); the γ × η grid; η=1.0 with and without the head mask α=0.1.
4. Score everything against the reference split at one common sample size (`steer_plugins.apps.eval`),
   write `results.json`, the markdown table, heat maps and the Pareto plot.

Each method's samples go to `<out>/samples/<method>.jsonl` (resumable: rerunning skips finished
rows). `--report-only` rebuilds the table and plots from `results.json`.

Run (about 20-40 CPU minutes on 2 busy cores; in the background):
    nohup python benchmarks/quality_study.py > benchmarks/results/quality_study.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / ".." / "shared" / "data" / "astro_hypotheses.jsonl"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "quality_study"
DEFAULT_IMG = ROOT / "docs" / "img"
INSTRUCTION = "Write a research hypothesis in astronomy, phrased as a question."
SEED = 0


def _methods(gammas, etas, alpha_eta):
    """(name, model, overrides, group): model "expert" (LoRA over the base) or "base" (plain SmolLM2).

    Group "main" is generated with `--n` samples, group "ablation" (grid, head mask) with
    `--n-ablation`; each group is scored at its own common sample size.
    """
    out = [
        ("steer (γ0.2 η0.6)", "expert", {"gamma": 0.2, "eta": 0.6}, "main"),
        ("expert top-k 10", "expert", {"gamma": 0.0, "eta": 0.0}, "main"),
        ("expert top-p 0.92", "expert", {"gamma": 0.0, "eta": 0.0, "top_k": None, "top_p": 0.92}, "main"),
        ("base top-k 10", "base", {"gamma": 0.0, "eta": 0.0}, "main"),
        (f"steer η{alpha_eta:g} (no mask)", "expert", {"gamma": 0.2, "eta": alpha_eta}, "ablation"),
        (f"steer η{alpha_eta:g} α0.1", "expert", {"gamma": 0.2, "eta": alpha_eta, "alpha": 0.1}, "ablation"),
    ]
    for g in gammas:
        for e in etas:
            out.append((f"grid γ{g:g} η{e:g}", "expert", {"gamma": g, "eta": e}, "ablation"))
    return out


def _slug(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in ".-" else "_" for c in name.replace("γ", "g").replace("η", "e"))
    return keep.replace("α", "a").strip("_")


def split(texts, n_ref, n_dev, seed=SEED):
    idx = list(range(len(texts)))
    random.Random(seed).shuffle(idx)
    ref = [texts[i] for i in idx[:n_ref]]
    dev = [texts[i] for i in idx[n_ref : n_ref + n_dev]]
    train = [texts[i] for i in idx[n_ref + n_dev :]]
    return train, dev, ref


def run(args) -> None:
    import torch

    from steer_plugins import DEFAULT_MODEL, NegativePool, SteerConfig, SteerEngine
    from steer_plugins.apps.data_io import read_texts
    from steer_plugins.apps.finetune import finetune_lora
    from steer_plugins.apps.pipeline import generate_to_file
    from steer_plugins.apps.recipe import read_recipe

    if args.threads:
        torch.set_num_threads(args.threads)
    texts = read_texts(args.data)
    train, dev, ref = split(texts, args.n_ref, args.n_dev)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    meta = json.loads(results_path.read_text()) if results_path.exists() else {}
    meta.update(
        {
            "data": str(args.data),
            "split": {"train": len(train), "dev": len(dev), "reference": len(ref), "seed": SEED},
            "n": args.n,
            "max_new_tokens": args.max_new_tokens,
            "stop": ["?"],
            "threads": args.threads or torch.get_num_threads(),
        }
    )
    log = lambda *a: print(time.strftime("%H:%M:%S"), *a, flush=True)  # noqa: E731

    # --- 1. the expert
    expert_dir = out / "expert-lora"
    if not (expert_dir / "adapter_model.safetensors").exists():
        from steer_plugins.core.sources import load_model

        model, tok = load_model(DEFAULT_MODEL)
        msgs = [{"role": "user", "content": INSTRUCTION}]
        prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        log(f"finetune: {args.steps} steps on {len(train)} train examples")
        t0 = time.perf_counter()
        finetune_lora(
            (model, tok), train, expert_dir, steps=args.steps, batch_size=8, max_length=64,
            prompt=prompt, eval_texts=dev, progress=False, base_name=DEFAULT_MODEL,
            extra_recipe={"instruction": INSTRUCTION, "study": "benchmarks/quality_study.py"},
        )  # fmt: skip
        meta["finetune_seconds"] = round(time.perf_counter() - t0, 1)
        del model
    recipe = read_recipe(expert_dir)
    prompt = recipe["training"]["prompt"]
    meta["expert"] = {"steps": recipe["training"]["steps"], "heldout": recipe["heldout"], "prompt": prompt}
    log("expert ready", recipe["heldout"])

    # --- 2. generation
    cfg = SteerConfig(max_new_tokens=args.max_new_tokens, stop=["?"])
    engines = {}
    gens = meta.setdefault("generation", {})
    methods = _methods(args.gammas, args.etas, args.alpha_eta)
    for name, which, overrides, group in methods:
        path = out / "samples" / f"{_slug(name)}.jsonl"
        n = args.n if group == "main" else args.n_ablation
        if which not in engines:
            spec = str(expert_dir) if which == "expert" else DEFAULT_MODEL
            engines[which] = SteerEngine(spec, config=cfg, max_batch_size=max(args.n, args.n_ablation))
        engine = engines[which]
        engine.pool = NegativePool(train, seed=SEED)  # every method starts from the same real pool
        stats = generate_to_file(
            engine, prompt, n, path, close_with="?", seed=SEED, chunk_size=n, **overrides
        )
        if stats.generated:
            gens[name] = {**stats.to_dict(), "overrides": overrides, "model": which}
        log(f"{name}: {stats.generated} new rows, {stats.tokens_per_s:.1f} tok/s, {stats.seconds:.0f} s")
        results_path.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    for engine in engines.values():
        engine.close()

    # --- 3. evaluation
    from steer_plugins.apps.eval import evaluate

    synth = {name: read_texts(out / "samples" / f"{_slug(name)}.jsonl") for name, *_ in methods}
    groups = {g: [m[0] for m in methods if m[3] == g] for g in ("main", "ablation")}
    groups["ablation"].insert(0, methods[0][0])  # the paper default, subsampled to the ablation size
    log("evaluating", len(synth), "sets against", len(ref), "reference examples")
    t0 = time.perf_counter()
    meta["results"] = {
        group: evaluate({k: synth[k] for k in names}, ref, seed=SEED, reference_name="real (held-out)")
        for group, names in groups.items()
    }
    meta["eval_seconds"] = round(time.perf_counter() - t0, 1)
    meta["examples"] = {name: synth[name][:4] for name in synth}
    results_path.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    log("wrote", results_path)
    report(args)


def report(args) -> None:
    """Markdown tables (one per group) + heat maps + Pareto plot, from results.json."""
    from steer_plugins.apps.eval import METRICS
    from steer_plugins.apps.sweep import plot_heatmaps, plot_pareto

    out = Path(args.out)
    meta = json.loads((out / "results.json").read_text())
    gen = meta.get("generation", {})
    cols = ["sample_size", *METRICS]
    parts = []
    for group, res in meta["results"].items():
        lines = [
            f"**{group}** (n = {next(iter(res.values()))['sample_size']} per set)",
            "",
            "| method | " + " | ".join(cols) + " | gen tok/s |",
            "|" + "---|" * (len(cols) + 2),
        ]
        for name, row in res.items():
            cells = [str(row.get(c, "-")) if c == "sample_size" else _fmt(row.get(c)) for c in cols]
            speed = gen.get(name, {}).get("tokens_per_s")
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {'-' if speed is None else speed} |")
        parts.append("\n".join(lines))
    table = "\n\n".join(parts)
    (out / "table.md").write_text(table + "\n")
    print(table)

    img = Path(args.img) / "quality_study"
    res = meta["results"]["ablation"]
    grid = {}
    for name, row in res.items():
        if name.startswith("grid "):
            g, e = name.split()[1:3]
            grid[(float(g[1:]), float(e[1:]))] = row
    gammas, etas = sorted({k[0] for k in grid}), sorted({k[1] for k in grid})
    if grid:
        metrics = ["adversarial_auroc", "normalised_3grams", "mauve", "cosine_centroid", "vendi"]
        paths = plot_heatmaps(grid, gammas, etas, img, metrics, title_prefix="astro: ")
        print("heat maps:", *map(str, paths))
    points = [
        (name.replace("grid ", ""), row["normalised_3grams"], row["cosine_centroid"])
        for name, row in res.items()
        if "cosine_centroid" in row and "real" not in name
    ]
    title = f"astro hypotheses, n={next(iter(res.values()))['sample_size']}: diversity vs fidelity"
    print("pareto:", plot_pareto(points, img / "pareto.png", title=title))


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--img", type=Path, default=DEFAULT_IMG)
    p.add_argument("--n", type=int, default=32, help="samples per method (main comparison)")
    p.add_argument("--n-ablation", type=int, default=16, help="samples per grid / head-mask cell")
    p.add_argument("--n-ref", type=int, default=200, help="held-out reference split size")
    p.add_argument("--n-dev", type=int, default=20, help="dev split (adapter perplexity)")
    p.add_argument("--steps", type=int, default=30, help="LoRA steps (batch 8)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--gammas", type=lambda s: [float(x) for x in s.split(",")], default=[0.0, 0.4, 0.8])
    p.add_argument("--etas", type=lambda s: [float(x) for x in s.split(",")], default=[0.0, 0.4, 0.8])
    p.add_argument("--alpha-eta", type=float, default=1.0, help="η for the head-mask comparison")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on busy cores)")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    if not args.data.exists():
        print(f"skipping: data file {args.data} not found (expected ../shared/data next to the repo)")
        return 0
    if args.report_only:
        report(args)
    else:
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
