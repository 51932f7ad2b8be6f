"""`SteerAugmenter(..., schema=...)`: every synthetic row's record, one typed column per field.

The schema (a pydantic model, a TypedDict or a JSON schema of type object) is turned into its JSON
schema once, at construction; that dict is the engine's per-call `constraint=` (so each output is a
JSON record the schema allows), the checkpoint key's part, and what travels to other processes and
Ray actors (no model class is pickled or hashed).

Columns: one per top-level property, named as the property, typed from the JSON schema:

| JSON schema | datasets feature |
|---|---|
| `string` (also `enum`/`const` of strings, `format`s) | `Value("string")` |
| `integer` | `Value("int64")` |
| `number` | `Value("float64")` (JSON integers written there become floats) |
| `boolean` | `Value("bool")` |
| `array` of one item type | `List(<item feature>)` |
| `object` with `properties` (nested model) | a struct: `{name: feature}` |
| `X` or null (`Optional[X]`) | `X`'s feature, holding None |
| anything else (a union of types, a free-form object, a tuple) | `Value("string")`: the JSON text |

plus `PARSED_COLUMN` (`steer_parsed`, bool): True when the row's output is a complete record. An
output cut by `max_new_tokens` (`finish_reason == "length"`, or cut by a stop string, or not
parseable) gets None in every field column and `steer_parsed=False`: its raw text stays in the
output column, never a half-parsed record. Original rows get None everywhere (`steer_parsed` too).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from steer_plugins import compile_grammar

__all__ = ["PARSED_COLUMN", "SchemaColumns", "cast_schema_columns", "output_features"]

#: True when a synthetic row's output parsed into a complete record (None on original rows).
PARSED_COLUMN = "steer_parsed"

_JSON = "json"  # a field stored as its JSON text
_SCALARS = {"string": "string", "integer": "int64", "number": "float64", "boolean": "bool"}
_INT64 = (-(2**63), 2**63 - 1)
_MAX_DEPTH = 32


class SchemaColumns:
    """The typed columns of one schema.

    Args:
        spec: a pydantic model class, a TypedDict (or another type pydantic describes as an object)
            or a JSON schema dict of type object with `properties`.

    Attributes:
        schema: the JSON schema (the engine's `constraint=`).
        label: the spec in words.
        fields: `{name: type}` per top-level property (see `field_type`).
        columns: the field columns, then `PARSED_COLUMN`.

    Raises:
        GrammarError: the spec cannot be enforced (the engine's own check).
        ValueError: a spec that is not an object with properties (a regex, choices, `list[str]`).
    """

    def __init__(self, spec: Any) -> None:
        grammar = compile_grammar(spec)
        root = _resolve(grammar.schema, grammar.schema) if grammar.kind == "json" else None
        if (
            not isinstance(root, dict)
            or not isinstance(root.get("properties"), dict)
            or not root["properties"]
        ):
            raise ValueError(
                f"`schema=` takes a record: a pydantic model, a TypedDict or a JSON schema of type object "
                f"with properties (one column per property); got {grammar.label}"
            )
        self.schema: dict[str, Any] = grammar.schema
        self.label = grammar.label
        self.fields = {name: field_type(sub, self.schema) for name, sub in root["properties"].items()}
        self.columns = (*self.fields, PARSED_COLUMN)

    @property
    def key(self) -> str:
        """The schema as canonical JSON (part of the checkpoint folder's name)."""
        return json.dumps(self.schema, sort_keys=True)

    def check_clash(self, names: Iterable[str], what: str = "input column") -> None:
        """A `ValueError` naming both when a schema column is also one of `names`."""
        names = list(names)
        clash = next((c for c in self.columns if c in names), None)
        if clash is not None:
            kind = "the flag column" if clash == PARSED_COLUMN else "the schema field"
            raise ValueError(
                f"{kind} {clash!r} of {self.label} clashes with the {what} {clash!r}: each field becomes a "
                f"column of that name. Rename the field (a pydantic alias) or the column "
                f"(ds.rename_column({clash!r}, ...))"
            )

    def values(self, record: dict[str, Any] | None) -> dict[str, Any]:
        """The field columns (and `PARSED_COLUMN`) of one output (`generate.output_record`), or of an
        original row (`record` None): all None, and `steer_parsed=False` when the output is not a
        complete record."""
        if record is None:
            return dict.fromkeys(self.columns)
        obj = self._parse(record)
        if obj is None:
            return {**dict.fromkeys(self.fields), PARSED_COLUMN: False}
        return {**obj, PARSED_COLUMN: True}

    def _parse(self, record: dict[str, Any]) -> dict[str, Any] | None:
        if record.get("finish_reason") != "stop":
            return None
        try:
            obj = json.loads(record["text"])
            if not isinstance(obj, dict):
                return None
            return {name: convert(kind, obj.get(name)) for name, kind in self.fields.items()}
        except (TypeError, ValueError, KeyError, AttributeError):  # a cut or unparseable output
            return None

    def features(self) -> Any:
        """The field columns as `datasets.Features` (`PARSED_COLUMN` included)."""
        import datasets

        feats = {name: _feature(kind) for name, kind in self.fields.items()}
        return datasets.Features({**feats, PARSED_COLUMN: datasets.Value("bool")})

    def arrow_schema(self) -> Any:
        """The field columns as a `pyarrow.Schema`."""
        return self.features().arrow_schema

    def __repr__(self) -> str:
        return f"SchemaColumns({self.label}, columns={list(self.columns)})"


# ----------------------------------------------------------------------------------- JSON schema
def _resolve(node: Any, root: dict[str, Any], depth: int = 0) -> Any:
    """`node` with `$ref`s (into `root`) and one-element `allOf`s followed."""
    while isinstance(node, dict) and depth < _MAX_DEPTH:
        depth += 1
        if isinstance(node.get("$ref"), str) and node["$ref"].startswith("#/"):
            target: Any = root
            for part in node["$ref"][2:].split("/"):
                target = (
                    target.get(part.replace("~1", "/").replace("~0", "~"), {})
                    if isinstance(target, dict)
                    else {}
                )
            node = target
        elif isinstance(node.get("allOf"), list) and len(node["allOf"]) == 1:
            node = node["allOf"][0]
        else:
            return node
    return node


def field_type(node: Any, root: dict[str, Any], depth: int = 0) -> Any:
    """The column type of one JSON-schema node: `"string"`, `"int64"`, `"float64"`, `"bool"`,
    `("list", item)`, `("struct", {name: type})`, or `"json"` (stored as JSON text)."""
    node = _resolve(node, root)
    if not isinstance(node, dict) or depth > _MAX_DEPTH:
        return _JSON
    alts = node.get("anyOf", node.get("oneOf"))
    if isinstance(alts, list):
        real = [a for a in alts if (_resolve(a, root) or {}).get("type") != "null"]
        return field_type(real[0], root, depth + 1) if len(real) == 1 else _JSON
    kind = node.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
    if kind is None:
        return _literal_type(node)
    if kind in _SCALARS:
        return _SCALARS[kind]
    if kind == "array" and isinstance(node.get("items"), dict) and "prefixItems" not in node:
        return ("list", field_type(node["items"], root, depth + 1))
    props = node.get("properties")
    if (
        kind == "object"
        and isinstance(props, dict)
        and props
        and node.get("additionalProperties") in (None, False)
    ):
        return ("struct", {name: field_type(sub, root, depth + 1) for name, sub in props.items()})
    return _JSON


def _literal_type(node: dict[str, Any]) -> Any:
    """The type of an `enum`/`const` without `type`: one JSON type for all values, else JSON text."""
    values = node.get("enum", [node["const"]] if "const" in node else None)
    if not values:
        return _JSON
    if all(isinstance(v, str) for v in values):
        return "string"
    if all(isinstance(v, bool) for v in values):
        return "bool"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "int64"
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return "float64"
    return _JSON


# ----------------------------------------------------------------------------------- values
def convert(kind: Any, value: Any) -> Any:
    """`value` (parsed JSON) as a column of type `kind` holds it.

    Raises:
        ValueError: an integer outside int64 (the row then counts as not parsed).
    """
    if value is None:
        return None
    if kind == _JSON:
        return json.dumps(value, ensure_ascii=False)
    if kind == "float64":
        return float(value)
    if kind == "int64":
        if not _INT64[0] <= value <= _INT64[1]:
            raise ValueError(f"{value} does not fit an int64 column")
        return int(value)
    if isinstance(kind, tuple) and kind[0] == "list":
        return [convert(kind[1], v) for v in value]
    if isinstance(kind, tuple) and kind[0] == "struct":
        return {name: convert(sub, value.get(name)) for name, sub in kind[1].items()}
    return value


def _feature(kind: Any) -> Any:
    import datasets

    if kind == _JSON:
        return datasets.Value("string")
    if isinstance(kind, tuple) and kind[0] == "list":
        return datasets.List(_feature(kind[1]))
    if isinstance(kind, tuple) and kind[0] == "struct":
        return {name: _feature(sub) for name, sub in kind[1].items()}
    return datasets.Value(kind)


# ----------------------------------------------------------------------------------- batches
def output_features(aug: Any, features: Any, remove_columns: Iterable[str] = ()) -> Any:
    """The `datasets.Features` of `ds.map(aug, batched=True, remove_columns=...)` for a dataset with
    `features`: its columns, the output column (text), `ADDED_COLUMNS` and the schema's columns.

    `Dataset.map` infers each new column's type from the first batch it writes; a first batch whose
    outputs were all cut (every field None) would fix a field's type to null and fail on the next
    batch. `features=aug.output_features(ds)` fixes every type up front.
    """
    import datasets

    from .batch import ADDED_COLUMNS

    text, strings = datasets.Value("string"), datasets.List(datasets.Value("string"))
    types = (datasets.Value("bool"), text, strings, datasets.Value("int64"))  # synthetic .. steer_seed
    added = dict(zip(ADDED_COLUMNS, types, strict=True))
    feats = {**features, aug.output_column: text, **added}
    if aug.schema_columns is not None:
        feats.update(aug.schema_columns.features())
    removed = set(remove_columns)
    return datasets.Features({k: v for k, v in feats.items() if k not in removed})


def cast_schema_columns(table: Any, schema: SchemaColumns | None) -> Any:
    """`table` (a `pyarrow.Table` built from one output batch) with its schema columns cast to
    their types (Ray: a block whose values were all None or all integers gets the schema's types)."""
    if schema is None:
        return table
    import pyarrow as pa

    arrow = schema.arrow_schema()
    fields = [arrow.field(f.name) if f.name in schema.columns else f for f in table.schema]
    return table.cast(pa.schema(fields))


def check_augmenter_columns(schema: SchemaColumns | None, aug: Any) -> None:
    """At construction: no schema column may be a column the augmenter's settings name (the prompt's
    columns, `real_column`, `output_column`, `key_column`) or one it adds (`ADDED_COLUMNS`)."""
    if schema is None:
        return
    from .batch import ADDED_COLUMNS

    named = {c: "input column (named by `prompt`)" for c in aug.prompt_fields}
    named[aug.real_column] = "input column (`real_column`)"
    if aug.key_column is not None:
        named[aug.key_column] = "input column (`key_column`)"
    named[aug.output_column] = "output column (`output_column`, the raw text)"
    named.update(dict.fromkeys(ADDED_COLUMNS, "column the augmenter adds"))
    for name, what in named.items():
        schema.check_clash([name], what)
