"""Reading JSONL / plain text examples and appending JSONL rows."""

from __future__ import annotations

import json

import pytest

from steer_plugins.apps.data_io import DataFormatError, append_jsonl, count_jsonl_rows, read_jsonl, read_texts


def test_read_jsonl_and_plain_text(tmp_path):
    jl = tmp_path / "a.jsonl"
    jl.write_text('{"text": "one?"}\n\n{"text": "two?", "id": 2}\n', encoding="utf-8")
    assert read_texts(jl) == ["one?", "two?"]
    txt = tmp_path / "b.txt"
    txt.write_text("first line\n\nsecond line\n", encoding="utf-8")
    assert read_texts(txt) == ["first line", "second line"]


def test_malformed_jsonl_line_reports_file_and_line_number(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "ok too"}\n{"text": broken\n', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"bad\.jsonl, line 3: malformed JSON"):
        read_texts(path)
    with pytest.raises(DataFormatError, match="line 3"):
        read_jsonl(path)


def test_missing_text_field_and_missing_file(tmp_path):
    path = tmp_path / "nofield.jsonl"
    path.write_text('{"text": "ok"}\n{"prompt": "x"}\n', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"line 2: expected an object with a string `text` field"):
        read_texts(path)
    with pytest.raises(FileNotFoundError, match="not found"):
        read_texts(tmp_path / "missing.jsonl")


def test_append_jsonl_resumes_after_partial_line(tmp_path):
    path = tmp_path / "out" / "synth.jsonl"
    assert count_jsonl_rows(path) == 0
    assert append_jsonl(path, [{"text": "a"}, {"text": "b"}]) == 2
    with path.open("a", encoding="utf-8") as f:
        f.write('{"text": "interrupted')  # a crash mid-line
    append_jsonl(path, [{"text": "c"}])
    lines = path.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[-1]) == {"text": "c"} and count_jsonl_rows(path) == 4
