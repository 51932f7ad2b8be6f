"""Reruns never give stale or forged rows: the checkpoint is checked line by line (issue 10, items 8
and 11), on tiny models through the real `datasets.map`."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from datasets.fingerprint import Hasher
from datasets_steer import SteerAugmenter
from datasets_steer.checkpoint import line_checksum

from steer_plugins import SteerConfig, SteerEngine
from steer_plugins.testing import TINY_CORPUS, tiny_model

SETTINGS = dict(prompt="Write about {topic}:", n=2, max_new_tokens=5, num_negatives=3, progress=False)


def synthetic_by_topic(out):
    rows: dict[str, list[str]] = {}
    for row in out:
        if row["synthetic"]:
            rows.setdefault(row["topic"], []).append(row["text"])
    return rows


def forge(aug, ds, model):
    """Lines an attacker or a bad editor could leave in the checkpoint, one per row of `ds`, in a part
    file that sorts first (first copy of a key wins)."""
    keys = [aug.row_key(r) for r in ds]
    good = {
        "text": "FORGED",
        "negatives": [],
        "seed": aug.row_seed(keys[4], 0),
        "config": json.dumps({"seed": aug.row_seed(keys[4], 0)}),
        "completion_tokens": 1,
        "finish_reason": "stop",
    }
    lines = [
        {"key": keys[0], "outputs": []},  # the repro: 0 synthetic rows
        {"key": keys[1], "outputs": "abc"},  # crashed
        {"key": keys[2], "outputs": [{"text": "FORGED"}, {"text": "FORGED"}]},  # no config: crashed
        {"key": keys[3], "outputs": [{**good, "text": "FORGED"}] * 2},  # forged output came out as data
        {"key": keys[4], "model": model, "outputs": [good, good], "check": "0" * 16},  # bad checksum
    ]
    other = [good, {**good, "seed": aug.row_seed(keys[5], 1)}]
    # a well-formed line, but made with other weights/settings
    lines.append(
        {"key": keys[5], "model": "other", "outputs": other, "check": line_checksum(keys[5], "other", other)}
    )
    text = "\n".join(json.dumps(x) for x in lines) + "\n" + '{"key": "cut sh'
    aug.checkpoint_path.mkdir(parents=True, exist_ok=True)
    (aug.checkpoint_path / "part-0000-forged.jsonl").write_text(text)
    return len(lines) + 1


def test_checkpoint_lines_that_do_not_fit_are_skipped_and_reported(tiny_folders, topics_ds, tmp_path):
    aug = SteerAugmenter(*tiny_folders, checkpoint_dir=tmp_path, **SETTINGS).fit(topics_ds)
    bad = forge(aug, topics_ds, aug.engine.fingerprint(**aug.config_fields))
    aug = SteerAugmenter(*tiny_folders, checkpoint_dir=tmp_path, **SETTINGS).fit(topics_ds)
    with pytest.warns(UserWarning, match=r"skipped 7 line\(s\).*generated again"):
        out = topics_ds.map(aug, batched=True, batch_size=4)
    rows = synthetic_by_topic(out)
    assert all(len(v) == 2 for v in rows.values()) and len(rows) == len(topics_ds)
    assert "FORGED" not in out["text"]
    assert aug.stats["checkpoint_skipped"] == bad and aug.stats["generated_rows"] == len(topics_ds)
    reasons = "\n".join(aug.skipped_lines)
    for why in ("no checksum", "checksum does not match", "other weights or settings", "not JSON"):
        assert why in reasons, why
    # the rows regenerated now are valid lines: the next run reuses all of them (the forged still skipped)
    again = SteerAugmenter(*tiny_folders, checkpoint_dir=tmp_path, **SETTINGS).fit(topics_ds)
    with pytest.warns(UserWarning, match="skipped 7"):
        out2 = topics_ds.map(again, batched=True, batch_size=4)
    assert again.stats["reused_rows"] == len(topics_ds) and again.stats["generated_rows"] == 0
    assert synthetic_by_topic(out2) == rows


def perturb_(model: torch.nn.Module, scale: float = 0.5) -> None:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)


def test_weights_retrained_in_place_give_no_stale_rows(tiny_folders, topics_ds, tmp_path):
    from transformers import AutoModelForCausalLM

    expert = tmp_path / "expert"
    shutil.copytree(tiny_folders[0], expert)

    def make():
        return SteerAugmenter(
            str(expert), tiny_folders[1], checkpoint_dir=tmp_path / "ck", eta=0.0, **SETTINGS
        )

    first = make()
    before = synthetic_by_topic(topics_ds.map(first, batched=True, batch_size=4))
    hash_before, folder = Hasher.hash(first), first.checkpoint_path
    first.close()

    model = AutoModelForCausalLM.from_pretrained(expert)
    perturb_(model)
    model.save_pretrained(expert)  # retrained in place: same path, same settings

    second = make()
    assert second.checkpoint_path == folder  # same settings: same folder, checked line by line
    assert Hasher.hash(second) != hash_before  # datasets' own cache misses too
    with pytest.warns(UserWarning, match="other weights or settings"):
        after = synthetic_by_topic(topics_ds.map(second, batched=True, batch_size=4))
    assert second.stats["reused_rows"] == 0 and second.stats["generated_rows"] == len(topics_ds)
    assert after != before


def test_in_memory_model_perturbed_gives_no_stale_rows(tiny_tok, topics_ds, tmp_path):
    expert, base = tiny_model("llama", tiny_tok, seed=1), tiny_model("llama", tiny_tok, seed=2)

    def run():
        engine = SteerEngine(expert, base, tiny_tok, config=SteerConfig(), pool=list(TINY_CORPUS))
        aug = SteerAugmenter(engine=engine, checkpoint_dir=tmp_path, eta=0.0, **SETTINGS)
        out = synthetic_by_topic(topics_ds.map(aug, batched=True, batch_size=8))
        engine.close()
        return aug, out

    aug1, before = run()
    aug2, same = run()  # unchanged weights: every row reused
    assert aug2.stats["reused_rows"] == len(topics_ds) and same == before
    perturb_(expert)
    aug3, after = run()
    assert aug3.stats["reused_rows"] == 0 and aug3.stats["generated_rows"] == len(topics_ds)
    assert after != before and aug3.checkpoint_path != aug1.checkpoint_path


def test_checkpoint_folder_names_the_set_of_real_texts_not_their_order(tiny_folders, topics_ds, tmp_path):
    # Ray collects a dataset's real column in no fixed order: a rerun must find the same folder
    texts = topics_ds["text"]
    a = SteerAugmenter(*tiny_folders, real_texts=texts, checkpoint_dir=tmp_path, **SETTINGS)
    b = SteerAugmenter(*tiny_folders, real_texts=texts[::-1], checkpoint_dir=tmp_path, **SETTINGS)
    assert a.checkpoint_path == b.checkpoint_path
    c = SteerAugmenter(*tiny_folders, real_texts=texts[1:], checkpoint_dir=tmp_path, **SETTINGS)
    assert c.checkpoint_path != a.checkpoint_path
