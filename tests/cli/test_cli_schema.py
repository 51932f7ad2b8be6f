"""`steer generate --schema`: one record per row on a tiny model; schema errors before loading;
reruns with another schema refused; records cut by the length limit never written."""

from __future__ import annotations

import json
import shutil

import pytest

from steer_plugins.apps.cli import _setup, main
from steer_plugins.apps.data_io import read_jsonl
from steer_plugins.apps.outputs import RECORD_META_KEYS, read_meta

SCHEMA = {  # short keys: the tiny tokenizer spends about a token per character
    "type": "object",
    "properties": {
        "w": {"type": "string", "minLength": 1, "maxLength": 6},
        "n": {"type": "integer", "minimum": 1, "maximum": 5},
        "k": {"enum": ["cat", "dog"]},
        "ok": {"type": "boolean"},
    },
    "required": ["w", "n", "k", "ok"],
}
RECORDS = [
    {"w": "moon", "n": 2, "k": "cat", "ok": True},
    {"w": "sun", "n": 5, "k": "dog", "ok": False},
    {"w": "star", "n": 1, "k": "dog", "ok": True},
]


def _valid(record: dict) -> bool:
    """`record` against SCHEMA (by hand, so the test needs no jsonschema; it is used too when present)."""
    try:
        import jsonschema

        jsonschema.validate(record, SCHEMA)
    except ImportError:
        pass
    word, level = record.get("w"), record.get("n")
    return (
        set(record) == set(SCHEMA["properties"])
        and isinstance(word, str)
        and 1 <= len(word) <= 6
        and isinstance(level, int)
        and not isinstance(level, bool)
        and 1 <= level <= 5
        and record["k"] in ("cat", "dog")
        and isinstance(record["ok"], bool)
    )


@pytest.fixture
def schema_file(tmp_path):
    path = tmp_path / "record.json"
    path.write_text(json.dumps(SCHEMA), encoding="utf-8")
    return path


@pytest.fixture
def schema_args(tiny_model_dir, tmp_path):
    """Fast flags on the tiny model, with room for a whole record and a pool of records."""
    pool = tmp_path / "seed_records.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in RECORDS), encoding="utf-8")
    return [
        "--expert", tiny_model_dir, "--pool", str(pool), "--prompt", "A record:",
        "--max-new-tokens", "64", "--num-negatives", "2", "--quiet",
    ]  # fmt: skip


def _stats(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _split(row: dict) -> tuple[dict, dict]:
    fields = {k: v for k, v in row.items() if not k.startswith("_")}
    return fields, {k: v for k, v in row.items() if k.startswith("_")}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_written_row_is_a_record_of_the_schema(tmp_path, schema_args, schema_file, seed, capsys):
    out = tmp_path / "records.jsonl"
    argv = ["generate", *schema_args, "--schema", str(schema_file), "--seed", str(seed)]
    assert main([*argv, "--n", "5", "--chunk-size", "3", "--out", str(out)]) == 0
    stats = _stats(capsys)
    rows = read_jsonl(out)
    assert len(rows) == stats["total"] == 5 and stats["draws"] == 5 + stats["cut"] + stats["unparsed"]
    for row in rows:
        fields, meta = _split(row)
        assert _valid(fields), row
        assert set(meta) == {"_text", "_finish_reason", "_tokens", "_seed"} and set(meta) <= set(
            RECORD_META_KEYS
        )
        assert json.loads(meta["_text"]) == fields and meta["_finish_reason"] == "stop"
        assert list(fields) == list(SCHEMA["properties"])  # the schema's order, as generated
    settings = read_meta(out)["settings"]
    assert settings["schema"] == SCHEMA and settings["schema_file"] == str(schema_file)


def test_schema_key_in_a_config_file_inline_or_as_a_path(tmp_path, schema_args, schema_file, capsys):
    inline = tmp_path / "inline.json"
    inline.write_text(json.dumps({"schema": SCHEMA, "seed": 3}), encoding="utf-8")
    by_path = tmp_path / "run.yaml"
    by_path.write_text(f"schema: {schema_file}\nseed: 3\n", encoding="utf-8")
    for config in (inline, by_path):
        out = tmp_path / f"{config.stem}.jsonl"
        assert main(["generate", *schema_args, "--config", str(config), "--n", "3", "--out", str(out)]) == 0
        assert all(_valid(_split(row)[0]) for row in read_jsonl(out))
    # the same schema, inline or from a file: the same rows (the file's path is provenance only)
    assert [r["_text"] for r in read_jsonl(tmp_path / "inline.jsonl")] == [
        r["_text"] for r in read_jsonl(tmp_path / "run.jsonl")
    ]


def _no_loading(monkeypatch):
    def refuse(*a, **kw):
        raise AssertionError("the model was loaded before the error")

    monkeypatch.setattr("steer_plugins.apps.cli.generate.build_engine", refuse)
    monkeypatch.setattr(_setup, "build_engine", refuse)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "schema file not found"),
        ("{not json", "not valid JSON"),
        (json.dumps({"type": "foo", "properties": {"a": {"type": "string"}}}), "the schema must describe"),
        (json.dumps({"type": "object", "properties": {"a": {"type": "wat"}}}), "invalid JSON schema"),
        (
            json.dumps({"type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}}}),
            "uniqueItems",
        ),
        (
            json.dumps(
                {
                    "type": "object",
                    "properties": {"a": {"type": "integer", "minimum": 5, "maximum": 1}},
                    "required": ["a"],
                }
            ),
            "accepts no value",
        ),  # fmt: skip
        (json.dumps({"type": "array", "items": {"type": "string"}}), "the schema must describe one record"),
        (json.dumps({"type": "object", "properties": {"_text": {"type": "string"}}}), "start with `_`"),
        (
            json.dumps(
                {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": True}
            ),
            "additionalProperties",
        ),
    ],
)
def test_bad_schema_is_one_line_exit_2_before_loading(
    tmp_path, schema_args, monkeypatch, capsys, content, says
):
    _no_loading(monkeypatch)
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    out = tmp_path / "o.jsonl"
    assert main(["generate", *schema_args, "--schema", str(path), "--n", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("steer generate: error:") and says in err, err
    assert not out.exists() or out.stat().st_size == 0


def test_close_with_or_stop_with_a_schema_is_refused(tmp_path, schema_args, schema_file, monkeypatch, capsys):
    _no_loading(monkeypatch)
    base = [
        "generate",
        *schema_args,
        "--schema",
        str(schema_file),
        "--n",
        "2",
        "--out",
        str(tmp_path / "o.jsonl"),
    ]
    assert main([*base, "--close-with", "?"]) == 2
    assert main([*base, "--stop", "}"]) == 2
    err = capsys.readouterr().err
    assert "--close-with does not apply to --schema" in err and "--stop would cut records" in err


def test_rerun_with_another_schema_is_refused_before_loading(
    tmp_path, schema_args, schema_file, real_file, monkeypatch, capsys
):
    out = tmp_path / "records.jsonl"
    base = ["generate", *schema_args, "--seed", "0", "--out", str(out)]
    assert main([*base, "--schema", str(schema_file), "--n", "2"]) == 0
    capsys.readouterr()
    moved = tmp_path / "moved.json"  # the same schema elsewhere: resumed, not refused
    shutil.copy(schema_file, moved)
    assert main([*base, "--schema", str(moved), "--n", "3"]) == 0
    assert _stats(capsys)["skipped"] == 2 and len(read_jsonl(out)) == 3

    _no_loading(monkeypatch)
    other = tmp_path / "other.json"
    changed = json.loads(json.dumps(SCHEMA))
    changed["properties"]["n"]["maximum"] = 9
    other.write_text(json.dumps(changed), encoding="utf-8")
    assert main([*base, "--schema", str(other), "--n", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "other settings (schema:" in err and "--overwrite" in err
    # no schema now (and a plain-text pool): plain rows are not appended to records either
    assert main([*base, "--pool", real_file, "--n", "4"]) == 2
    assert "schema:" in capsys.readouterr().err
    assert len(read_jsonl(out)) == 3


def test_records_cut_by_the_length_limit_are_counted_not_written(tmp_path, schema_args, capsys):
    free = tmp_path / "free.json"  # shortest record {"w": ""} fits in 11 tokens; a random model's rarely
    free.write_text(
        json.dumps({"type": "object", "properties": {"w": {"type": "string"}}, "required": ["w"]}),
        encoding="utf-8",
    )
    out = tmp_path / "cut.jsonl"
    argv = ["generate", *schema_args, "--schema", str(free), "--max-new-tokens", "11", "--seed", "0"]
    assert main([*argv, "--n", "2", "--chunk-size", "2", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    stats = json.loads(captured.out.strip().splitlines()[-1])
    rows = read_jsonl(out)
    assert stats["cut"] >= 1 and stats["draws"] == stats["total"] + stats["cut"] + stats["unparsed"] <= 8
    assert len(rows) == stats["total"] and all(set(_split(r)[0]) == {"w"} for r in rows)
    assert all(json.loads(r["_text"]) == {"w": r["w"]} and r["_finish_reason"] == "stop" for r in rows)
    assert read_meta(out)["counts"]["cut"] == stats["cut"]
    assert "cut by the length limit" in captured.err and "raise --max-new-tokens" in captured.err


def test_pool_of_records_is_serialised_as_the_grammar_writes_records(tmp_path):
    pool = tmp_path / "pool.jsonl"
    rows = [
        {"ok": True, "k": "cat", "w": "é", "n": 2},  # keys out of order, non-ASCII
        {"w": "b", "n": 1, "k": "dog", "ok": False, "_text": '{"w": "b", "n": 1, "k": "dog", "ok": false}'},
    ]  # a steer output row gives its `_text`
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert _setup.pool_for({"pool": str(pool)}, SCHEMA) == [
        '{"w": "é", "n": 2, "k": "cat", "ok": true}',
        '{"w": "b", "n": 1, "k": "dog", "ok": false}',
    ]
    with_examples = {**SCHEMA, "examples": [{"w": "x", "n": 3, "k": "dog", "ok": True}]}
    assert _setup.pool_for({}, with_examples) == ['{"w": "x", "n": 3, "k": "dog", "ok": true}']
    assert _setup.pool_for({}, SCHEMA) is None  # not the shipped plain-text seed set: not records
