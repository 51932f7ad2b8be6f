"""`steer augment`: a JSONL / CSV / Parquet file or a saved dataset, a template over its columns, an
augmented file with its settings record and dataset card (the datasets augmenter underneath)."""

from __future__ import annotations

import csv
import json

import pytest

from steer_plugins.apps.cli import main
from steer_plugins.apps.data_io import read_table
from steer_plugins.testing import TINY_CORPUS

datasets = pytest.importorskip("datasets")
pytest.importorskip("datasets_steer")

TOPICS = ["stars", "moons", "comets"]


@pytest.fixture
def aug_args(tiny_model_dir):
    """Fast `steer augment` flags on the tiny model."""
    return [
        "--expert",
        tiny_model_dir,
        "--max-new-tokens",
        "5",
        "--num-negatives",
        "2",
        "--seed",
        "0",
        "--quiet",
    ]


@pytest.fixture
def topics_rows():
    return [{"topic": t, "text": TINY_CORPUS[i]} for i, t in enumerate(TOPICS)]


def _stats(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_jsonl_in_jsonl_out_with_card_and_resume(tmp_path, aug_args, topics_rows, capsys):
    src = tmp_path / "topics.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in topics_rows))
    out = tmp_path / "out" / "aug.jsonl"
    cmd = [
        "augment",
        str(src),
        "--template",
        "Write about {topic}:",
        "--out",
        str(out),
        "--n",
        "2",
        *aug_args,
    ]
    assert main(cmd) == 0
    stats = _stats(capsys)
    assert stats == {
        "path": str(out.resolve()),
        "input_rows": 3,
        "rows": 9,
        "synthetic_rows": 6,
        "duplicates_dropped": 0,
    }
    rows = read_table(out)
    assert [r["topic"] for r in rows] == [t for t in TOPICS for _ in range(3)]  # each original, then its 2
    assert [r["synthetic"] for r in rows[:3]] == [False, True, True]
    assert rows[0]["text"] == TINY_CORPUS[0] and all(isinstance(r["text"], str) for r in rows)
    card = (out.parent / "README.md").read_text()
    assert (
        "# Data augmented with STEER" in card
        and "Write about {topic}:" in card
        and 'path:\n    - "aug.jsonl"' in card
    )
    meta = json.loads((out.parent / "aug.jsonl.meta.json").read_text())
    assert meta["settings"]["template"] == "Write about {topic}:" and meta["counts"]["synthetic_rows"] == 6

    assert main(cmd) == 0  # same command again: rows come from the checkpoint, identical
    assert read_table(out) == rows
    assert main([*cmd[:7], "3", *aug_args]) == 2  # --n 3 would replace rows made with --n 2
    err = capsys.readouterr().err
    assert "n: 2 in the file, 3 now" in err and "--overwrite" in err


def test_csv_to_parquet_without_originals(tmp_path, aug_args, topics_rows, capsys):
    src = tmp_path / "topics.csv"
    with src.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["topic", "text"])
        writer.writeheader()
        writer.writerows(topics_rows)
    out = tmp_path / "aug.parquet"
    cmd = [
        "augment",
        str(src),
        "--template",
        "Write about {topic}:",
        "--out",
        str(out),
        "--n",
        "1",
        "--no-originals",
    ]
    assert main([*cmd, *aug_args]) == 0
    rows = read_table(out)
    assert len(rows) == 3 and all(r["synthetic"] for r in rows) and [r["topic"] for r in rows] == TOPICS
    assert _stats(capsys)["synthetic_rows"] == 3


def test_parquet_and_saved_dataset_inputs(tmp_path, aug_args, topics_rows, capsys):
    ds = datasets.Dataset.from_list(topics_rows)
    ds.to_parquet(str(tmp_path / "topics.parquet"))
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "saved"))
    for src in (tmp_path / "topics.parquet", tmp_path / "saved"):
        out = tmp_path / f"from-{src.name}.jsonl"
        code = main(
            ["augment", str(src), "--template", "About {topic}:", "--out", str(out), "--n", "1", *aug_args]
        )
        assert code == 0 and len(read_table(out)) == 6
    capsys.readouterr()
    code = main(["augment", str(tmp_path / "saved"), "--split", "test", "--template", "About {topic}:",
                 "--out", str(tmp_path / "x.jsonl"), *aug_args])  # fmt: skip
    assert code == 2 and "not 'test'" in capsys.readouterr().err


def test_augment_dedup_filters_the_written_rows(tmp_path, aug_args, topics_rows, capsys):
    src = tmp_path / "topics.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in topics_rows))
    out = tmp_path / "aug.jsonl"
    code = main(["augment", str(src), "--template", "Write:", "--out", str(out), "--n", "3", "--dedup", "exact",
                 "--gamma", "0", "--eta", "0", "--temperature", "0", *aug_args])  # fmt: skip
    assert code == 0
    stats = _stats(capsys)
    texts = [r["text"] for r in read_table(out) if r["synthetic"]]
    assert len(texts) == len(set(texts)) == stats["synthetic_rows"] and stats["duplicates_dropped"] > 0
    assert stats["rows"] + stats["duplicates_dropped"] == 12


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--template", "About {colour}:", "--out", "o.jsonl"], "column(s) ['colour'] the input lacks"),
        (["--template", "About {}:", "--out", "o.jsonl"], "must name input columns"),
        (["--template", "About {topic}:", "--out", "o.txt"], "must end in one of"),
        (["--template", "About {topic}:", "--out", "o.jsonl", "--real-column", "body"], "--real-column COL"),
    ],
)
def test_augment_input_errors_before_any_model_loads(
    tmp_path, topics_rows, capsys, extra, needle, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "topics.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in topics_rows))
    # the expert does not exist: had it been loaded first, the error would name the model
    code = main(["augment", str(src), *extra, "--expert", str(tmp_path / "no-model")])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "Traceback" not in err and "no-model" not in err
