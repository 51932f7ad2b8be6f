"""Why the spelling floor (`SteerConfig.spelling_min_p`): how likely the expert found each piece that
continued a word, for the invented words and for the other words of the quality study's samples.

    python benchmarks/spelling_probe.py expert_top-k_10 g0.2_e0.4_a0.05_words_synthetic_negatives
    python benchmarks/spelling_probe.py --base expert_top-k_10 ...   # the pieces under the base model

Each argument is a set folder under `benchmarks/results/quality_study/samples/` (seeds 0-2). For the
invented and the other words it prints the share with a continuation piece below 0.05-0.3x the
expert's best token, and the share with one outside the expert's top 1/2/3/5 (rank >= k). It
re-tokenises the texts (close to, not always exactly, the generated pieces). About a minute per set
on one core. With `--base`, also how likely the base model (the expert's adapter off) found each piece,
for the words whose pieces all pass the expert's 0.2 floor (what the default spelling floor lets through).
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
STUDY = HERE / "results" / "quality_study"
THRESHOLDS = (0.05, 0.1, 0.2, 0.3)
RANKS = (1, 2, 3, 5)


def _jsonl_texts(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def word_pieces(
    model, tok, prompt_ids: list[int], text: str, cont: torch.Tensor, base: bool = False
) -> list[tuple]:
    """(word, [relative prob of each continuation piece], [rank of each]) for the words of `text`;
    with `base`, the probabilities are the base model's (a PEFT expert's adapter off)."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    off = model.disable_adapter() if base else contextlib.nullcontext()
    with torch.no_grad(), off:
        lp = (
            model(torch.tensor([prompt_ids + ids]))
            .logits[0, len(prompt_ids) - 1 : -1]
            .float()
            .log_softmax(-1)
        )
    chosen = lp.gather(-1, torch.tensor(ids)[:, None])[:, 0]
    rel = (chosen - lp.max(-1).values).exp().tolist()
    rank = (lp > chosen[:, None]).sum(-1).tolist()
    out: list[list] = []
    for i, (tid, piece) in enumerate(zip(ids, tok.convert_ids_to_tokens(ids), strict=True)):
        if bool(cont[tid]) and out:
            out[-1][0] += tok.convert_tokens_to_string([piece])
            out[-1][1].append(rel[i])
            out[-1][2].append(rank[i])
        else:
            out.append([tok.convert_tokens_to_string([piece]).strip(), [], []])
    return [tuple(w) for w in out]


def main(argv: list[str]) -> int:
    """Print the shares for every set named in `argv`."""
    if not argv or "-h" in argv or "--help" in argv:
        print(__doc__)
        return 0 if argv else 2
    sys.path.insert(0, str(HERE))
    from quality_study import DEFAULT_DATA, split

    from steer_plugins.apps.eval.lexicon import is_english, vocabulary, words
    from steer_plugins.core.combine import continuation_tokens
    from steer_plugins.core.sources import load_models

    torch.set_num_threads(1)
    _, ref = split(_jsonl_texts(DEFAULT_DATA), 200)
    known = vocabulary(ref)
    meta = json.loads((STUDY / "results.json").read_text(encoding="utf-8"))
    models = load_models(meta["expert"])
    model, tok = models.expert, models.tokenizer
    model.eval()
    cont = continuation_tokens(tok, len(tok))
    prompt_ids = tok(meta["prompt"], add_special_tokens=False)["input_ids"]
    with_base = "--base" in argv
    for name in [a for a in argv if a != "--base"]:
        found: dict[bool, list[tuple]] = {True: [], False: []}
        for seed in range(3):
            for text in _jsonl_texts(STUDY / "samples" / name / f"seed{seed}.jsonl"):
                pieces = word_pieces(model, tok, prompt_ids, text, cont)
                under_base = (
                    word_pieces(model, tok, prompt_ids, text, cont, base=True) if with_base else pieces
                )
                for (word, rels, ranks), (_, base_rels, _) in zip(pieces, under_base, strict=True):
                    scored = words(word)
                    if len(scored) == 1:
                        invented = scored[0] not in known and not is_english(scored[0])
                        found[invented].append(
                            (word, min(rels, default=1.0), max(ranks, default=0), min(base_rels, default=1.0))
                        )
        print(name)
        for invented, rows in found.items():
            n = max(len(rows), 1)
            below = "  ".join(f"<{t}: {sum(r[1] < t for r in rows) / n:.3f}" for t in THRESHOLDS)
            outside = "  ".join(f"rank>={k}: {sum(r[2] >= k for r in rows) / n:.3f}" for k in RANKS)
            print(f"  {'invented' if invented else 'other'} words, n={len(rows)}: {below}  {outside}")
            if with_base:
                passed = [r for r in rows if r[1] >= 0.2]
                m = max(len(passed), 1)
                base = "  ".join(f"<{t}: {sum(r[3] < t for r in passed) / m:.3f}" for t in THRESHOLDS)
                print(f"    passing the expert's 0.2 floor, n={len(passed)}; a piece under the base: {base}")
        print("  invented examples:", [(w, round(r, 3), k) for w, r, k, _ in found[True][:20]])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
