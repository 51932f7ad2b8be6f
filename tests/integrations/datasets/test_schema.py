"""`SteerAugmenter(..., schema=...)`: one typed column per field, on tiny models through `datasets.map`
(and one Ray run in local mode)."""

from __future__ import annotations

import json

import datasets
import pytest
from datasets_steer import ADDED_COLUMNS, SteerAugmenter
from datasets_steer.batch import OutputColumns
from datasets_steer.schema import PARSED_COLUMN, SchemaColumns, field_type
from pydantic import BaseModel, Field

from steer_plugins import GrammarError


class Inner(BaseModel):
    name: str = Field(max_length=3)


class Rec(BaseModel):
    q: str = Field(max_length=4)
    d: int = Field(ge=1, le=5)
    ok: bool
    tags: list[str] = Field(max_length=2)
    inner: Inner
    score: float | None = None


FIELDS = ["q", "d", "ok", "tags", "inner", "score"]
EXPECTED = datasets.Features(
    {
        "q": datasets.Value("string"),
        "d": datasets.Value("int64"),
        "ok": datasets.Value("bool"),
        "tags": datasets.List(datasets.Value("string")),
        "inner": {"name": datasets.Value("string")},
        "score": datasets.Value("float64"),
        PARSED_COLUMN: datasets.Value("bool"),
    }
)
SETTINGS = dict(max_new_tokens=110, num_negatives=2, progress=False, prompt="Write about {topic}:")


def make_aug(folders, tmp_path=None, **kw):
    ckpt = None if tmp_path is None else tmp_path / "ckpt"
    return SteerAugmenter(*folders, **{**SETTINGS, "checkpoint_dir": ckpt, "schema": Rec, **kw})


def check_rows(out, schema_model=Rec):
    """Every synthetic row: a complete record (validating, equal to its raw text) or all-None
    fields with `steer_parsed=False`; originals all None. Returns the parsed count."""
    parsed = 0
    for row in out:
        fields = {f: row[f] for f in FIELDS}
        if not row["synthetic"]:
            assert row[PARSED_COLUMN] is None and all(v is None for v in fields.values())
            continue
        if row[PARSED_COLUMN]:
            parsed += 1
            schema_model.model_validate(fields)
            raw = json.loads(row["text"])
            assert {f: raw.get(f) for f in FIELDS} == fields
        else:
            assert row[PARSED_COLUMN] is False and all(v is None for v in fields.values())
            with pytest.raises(ValueError):
                schema_model.model_validate_json(row["text"])
    return parsed


def test_columns_and_types_match_the_schema(tiny_folders, topics_ds):
    ds = topics_ds.select(range(4))
    aug = make_aug(tiny_folders, n=2).fit(ds)
    out = ds.map(aug, batched=True, batch_size=2, features=aug.output_features(ds))
    assert out.column_names == ["topic", "text", *ADDED_COLUMNS, *FIELDS, PARSED_COLUMN]
    for name, feature in EXPECTED.items():
        assert out.features[name] == feature, name
    assert len(out) == 3 * len(ds)
    assert check_rows(out) > 0


def test_every_row_validates_over_seeds(tiny_folders, topics_ds):
    """A JSON-schema dict this time; no original rows, several seeds."""
    ds = topics_ds.select(range(3))
    parsed = 0
    for seed in (1, 2, 3):
        aug = make_aug(tiny_folders, n=2, seed=seed, keep_original=False, schema=Rec.model_json_schema())
        out = ds.map(aug.fit(ds), batched=True, batch_size=3, features=aug.output_features(ds))
        assert len(out) == 2 * len(ds)
        assert out.features["d"] == datasets.Value("int64") and out.features["inner"] == EXPECTED["inner"]
        parsed += check_rows(out)
    assert parsed >= 3


def test_clash_with_a_column_is_refused_naming_both(tiny_folders, topics_ds):
    class Topic(BaseModel):
        topic: str

    with pytest.raises(ValueError, match=r"schema field 'topic'.*input column \(named by `prompt`\) 'topic'"):
        make_aug(tiny_folders, schema=Topic)

    class Text(BaseModel):
        text: str

    with pytest.raises(ValueError, match=r"'text'.*output column"):
        make_aug(tiny_folders, schema=Text)
    with pytest.raises(ValueError, match=r"'synthetic'.*column the augmenter adds"):
        make_aug(tiny_folders, schema={"type": "object", "properties": {"synthetic": {"type": "string"}}})

    class Other(BaseModel):
        label: str

    aug = make_aug(tiny_folders, schema=Other)  # no clash known yet: found when the dataset is seen
    with pytest.raises(ValueError, match=r"schema field 'label'.*input column 'label'"):
        aug.fit(topics_ds.add_column("label", ["x"] * len(topics_ds)))


def test_specs_that_are_not_records_are_refused(tiny_folders):
    for spec in (list[str], ["a", "b"], {"regex": "[a-z]+"}):
        with pytest.raises(ValueError, match="`schema=` takes a record"):
            make_aug(tiny_folders, schema=spec)
    with pytest.raises(GrammarError):
        make_aug(tiny_folders, schema={"type": "foo"})


def test_checkpoint_key_changes_with_the_schema(tiny_folders, tmp_path):
    def key(**kw):
        return make_aug(tiny_folders, tmp_path, **kw).checkpoint_path

    plain = key(schema=None)
    base = key()
    assert len({plain, base, key(schema=Inner)}) == 3
    changed = Rec.model_json_schema()
    changed["properties"]["d"]["maximum"] = 4
    assert key(schema=changed) != base
    assert key(schema=Rec.model_json_schema()) == base  # the same JSON schema: the same rows


def test_field_types_of_nested_optional_and_union_fields():
    class Deep(BaseModel):
        items: list[Inner]
        maybe: Inner | None = None
        free: dict[str, int]
        either: int | str
        pair: tuple[int, str]

    kinds = SchemaColumns(Deep).fields
    assert kinds["items"] == ("list", ("struct", {"name": "string"}))
    assert kinds["maybe"] == ("struct", {"name": "string"})
    assert kinds["free"] == kinds["either"] == kinds["pair"] == "json"
    schema = {"type": "object", "properties": {"e": {"enum": [1, 2]}, "n": {"type": ["number", "null"]}}}
    assert [field_type(v, schema) for v in schema["properties"].values()] == ["int64", "float64"]


def test_a_first_batch_of_cut_outputs_still_writes_typed_columns(tiny_folders, topics_ds):
    """A first batch whose outputs were all cut holds only None in the field columns: with
    `features=aug.output_features(ds)` `Dataset.map` does not take their type from it."""
    aug = make_aug(tiny_folders, keep_original=False)
    good = {"text": '{"q": "a", "d": 2, "ok": true, "tags": [], "inner": {"name": "b"}, "score": 1}'}
    ds = datasets.Dataset.from_dict({"topic": ["x", "y", "z", "w"]})

    def fn(batch):
        out = OutputColumns(list(batch), "text", aug.schema_columns)
        for i, topic in enumerate(batch["topic"]):
            cut = {"text": '{"q": "a', "finish_reason": "length"}
            record = cut if topic in "xy" else {**good, "finish_reason": "stop"}
            out.add_synthetic({"topic": topic}, {**record, "config": "{}", "negatives": [], "seed": i})
        return out.data

    out = ds.map(fn, batched=True, batch_size=2, features=aug.output_features(ds))
    for name, feature in EXPECTED.items():
        assert out.features[name] == feature, name
    assert out[PARSED_COLUMN] == [False, False, True, True]
    assert out["score"] == [None, None, 1.0, 1.0] and out["inner"][2] == {"name": "b"}
    assert out["tags"] == [None, None, [], []]
    assert aug.output_features(ds, remove_columns=["topic"]).keys() == set(out.column_names) - {"topic"}


def test_ray_local_mode_writes_the_typed_columns(tiny_folders, topics_ds, tmp_path):
    ray = pytest.importorskip("ray")
    from ray_steer import augment

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        ds = topics_ds.select(range(2))
        aug = make_aug(tiny_folders, tmp_path, n=2)
        out = augment(ds, aug, num_actors=1, batch_size=1, output="hf", wait_for_actors_s=120)
    finally:
        ray.shutdown()
    assert len(out) == 3 * len(ds)
    for name, feature in EXPECTED.items():
        assert out.features[name] == feature, name
    check_rows(out)
