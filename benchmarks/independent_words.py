"""Invented words by a second dictionary: a check on `known_words` that does not use its own list.

`steer evaluate`'s invented-word rate and the `known_words` guard both read wordfreq's English list,
so for a guarded set that rate is near zero by construction. This script scores the same words
against pyspellchecker's English dictionary (built from other sources: OpenSubtitles and others;
US spelling, so "centre" and "harbour" count) plus the reference vocabulary, for any JSONL files:

    pip install pyspellchecker   # not a dependency of steer-plugins
    python benchmarks/independent_words.py --reference steer_plugins/assets/seed_hypotheses.jsonl \\
        /tmp/steer_done_when11/plain_*.jsonl /tmp/steer_done_when11/known_words_*.jsonl

Prints, per group of files (the name before the last `_`), the share of words in neither, and the
most common such words.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from steer_plugins.apps.eval.lexicon import words  # noqa: E402


def texts(path: Path) -> list[str]:
    """The `text` field of every row of a JSONL file."""
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line]


def main(argv: list[str] | None = None) -> int:
    """Score each group of files; print one line per group."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", type=Path, nargs="+", help="JSONL files with a `text` field")
    p.add_argument("--reference", type=Path, required=True, help="real examples (JSONL): their words count")
    p.add_argument("--show", type=int, default=12, help="how many of the most common unknown words to list")
    args = p.parse_args(argv)
    try:
        from spellchecker import SpellChecker
    except ImportError:
        p.error("needs pyspellchecker: pip install pyspellchecker")
    dictionary = set(SpellChecker().word_frequency.dictionary)
    known = dictionary | {w for t in texts(args.reference) for w in words(t)}
    groups: dict[str, list[Path]] = {}
    for f in args.files:
        groups.setdefault(f.stem.rsplit("_", 1)[0], []).append(f)
    for name, files in groups.items():
        scored = [w for f in files for t in texts(f) for w in words(t)]
        unknown = Counter(w for w in scored if w not in known)
        share = sum(unknown.values()) / max(len(scored), 1)
        common = ", ".join(f"{w} {c}" for w, c in unknown.most_common(args.show))
        print(
            f"{name}: {sum(unknown.values())}/{len(scored)} words = {100 * share:.2f} % ({len(files)} files); {common}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
