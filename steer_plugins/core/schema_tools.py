"""JSON-schema helpers for `grammar.py`: the strict form of a schema, whether its oneOfs are tagged
unions, and a shortest output of a schema or a regular expression (to check `max_new_tokens` up
front).

Each shortest-output function returns a guess, or None where the spec has a part it cannot reason
about (allOf, look-around, ...). `grammar.py` keeps a guess only when the compiled grammar accepts it, so a wrong
guess never turns into a false error: the check is skipped instead.
"""

from __future__ import annotations

import json
import math
import sys
import types
import typing
from typing import Any

__all__ = ["one_of_discriminated", "portable_type", "shortest_json", "shortest_regex", "strict_schema"]

_UNKNOWN = object()
_MAX_DEPTH = 32
#: Short valid values of the string formats llguidance knows.
_FORMATS = {
    "date": "2000-01-01",
    "time": "00:00:00Z",
    "date-time": "2000-01-01T00:00:00Z",
    "email": "a@b.co",
    "uuid": "00000000-0000-0000-0000-000000000000",
    "ipv4": "0.0.0.0",
    "ipv6": "::",
    "hostname": "a",
    "uri": "a:",
}


def shortest_json(schema: Any) -> str | None:
    """A shortest JSON text valid under `schema`, written as the grammar writes it, or None."""
    value = _value(schema, schema, 0)
    return None if value is _UNKNOWN else _dump(value)


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": "), ensure_ascii=False)


def _shortest_of(values: list[Any]) -> Any:
    known = [v for v in values if v is not _UNKNOWN]
    return min(known, key=lambda v: len(_dump(v))) if known else _UNKNOWN


def _resolve(ref: str, root: Any) -> Any:
    if not ref.startswith("#"):
        return _UNKNOWN
    node = root
    for part in [p for p in ref[1:].split("/") if p]:
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return _UNKNOWN
        node = node[part]
    return node


def _value(schema: Any, root: Any, depth: int) -> Any:
    if schema is True or schema == {}:
        return 0
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return _UNKNOWN
    if "$ref" in schema:
        target = _resolve(schema["$ref"], root)
        return _UNKNOWN if target is _UNKNOWN else _value(target, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return _shortest_of(list(schema["enum"]))
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return _shortest_of([_value(s, root, depth + 1) for s in schema[key]])
    if "allOf" in schema:
        return _UNKNOWN
    types = schema.get("type", _implied_type(schema))
    types = types if isinstance(types, list) else [types]
    return _shortest_of([_typed(t, schema, root, depth) for t in types])


def _implied_type(schema: dict) -> str:
    if "properties" in schema or "required" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    if any(k in schema for k in ("minLength", "maxLength", "pattern", "format")):
        return "string"
    return "integer"


def _typed(kind: str, schema: dict, root: Any, depth: int) -> Any:
    if kind == "null":
        return None
    if kind == "boolean":
        return True
    if kind in ("integer", "number"):
        return _number(schema, kind == "integer")
    if kind == "string":
        return _string(schema)
    if kind == "array":
        n = schema.get("minItems", 0)
        prefix = list(schema.get("prefixItems", []))[:n]
        items = [_value(s, root, depth + 1) for s in prefix]
        items += [_value(schema.get("items", {}), root, depth + 1)] * (n - len(items))
        return _UNKNOWN if any(v is _UNKNOWN for v in items) else items
    if kind == "object":
        props, required = schema.get("properties", {}), schema.get("required", [])
        if any(r not in props for r in required) or schema.get("minProperties", 0) > len(required):
            return _UNKNOWN
        out = {k: _value(s, root, depth + 1) for k, s in props.items() if k in required}
        return _UNKNOWN if any(v is _UNKNOWN for v in out.values()) else out
    return _UNKNOWN


def _number(schema: dict, integer: bool) -> Any:
    lo, hi = schema.get("minimum", -math.inf), schema.get("maximum", math.inf)
    lo_x, hi_x = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if lo <= 0 <= hi and (lo_x is None or lo_x < 0) and (hi_x is None or hi_x > 0):
        return 0
    if "multipleOf" in schema or lo_x is not None or hi_x is not None:
        return _UNKNOWN
    bound = lo if lo > 0 else hi
    if integer:
        return math.ceil(bound) if lo > 0 else math.floor(bound)
    return int(bound) if float(bound).is_integer() else bound


def _string(schema: dict) -> Any:
    if "format" in schema:
        return _FORMATS.get(schema["format"], _UNKNOWN)
    if "pattern" in schema:
        text = shortest_regex(schema["pattern"])
        return _UNKNOWN if text is None else text
    return "a" * int(schema.get("minLength", 0))


# --------------------------------------------------------------------------------------------- schema
#: Keys after which an object's "other keys" are already decided (allOf branches merge their own).
_OPEN_KEYS = ("additionalProperties", "patternProperties", "unevaluatedProperties", "allOf")


def strict_schema(schema: Any) -> Any:
    """`schema` with `additionalProperties: false` on objects that list properties and say nothing
    about other keys (outside allOf branches)."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in ("properties", "$defs", "definitions"):
        if isinstance(out.get(key), dict):
            out[key] = {name: strict_schema(sub) for name, sub in out[key].items()}
    for key in ("anyOf", "oneOf", "prefixItems"):
        if isinstance(out.get(key), list):
            out[key] = [strict_schema(sub) for sub in out[key]]
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = strict_schema(out[key])
    if "properties" in out and not any(k in out for k in _OPEN_KEYS):
        out["additionalProperties"] = False
    return out


def one_of_discriminated(schema: Any) -> bool:
    """True when every oneOf in `schema` carries a discriminator (pydantic's tagged unions: the
    branches exclude each other, so anyOf enforces exactly one)."""
    found: list[bool] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "oneOf" in node:
                found.append("discriminator" in node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return bool(found) and all(found)


def portable_type(tp: Any, _seen: dict | None = None) -> Any:
    """`tp` with every `typing.TypedDict` in it rebuilt as a `typing_extensions.TypedDict`: pydantic
    refuses `typing`'s own before Python 3.12."""
    if sys.version_info >= (3, 12):
        return tp
    seen = {} if _seen is None else _seen
    if typing.is_typeddict(tp) and type(tp).__module__ == "typing":
        if tp not in seen:
            seen[tp] = _rebuild_typeddict(tp, seen)
        return seen[tp]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is None or not args or origin is typing.Literal:
        return tp
    if origin is typing.Annotated:
        return typing.Annotated[(portable_type(args[0], seen), *tp.__metadata__)]
    new = tuple(portable_type(a, seen) for a in args)
    if new == args:
        return tp
    if origin in (typing.Union, types.UnionType):
        return typing.Union[new]  # noqa: UP007 - built from a tuple at run time
    return origin[new if len(new) > 1 else new[0]]


def _rebuild_typeddict(tp: Any, seen: dict) -> Any:
    import typing_extensions as te

    fields = {}
    for name, hint in typing.get_type_hints(tp, include_extras=True).items():
        while typing.get_origin(hint) in (te.Required, te.NotRequired):
            hint = typing.get_args(hint)[0]
        wrap = te.Required if name in tp.__required_keys__ else te.NotRequired
        fields[name] = wrap[portable_type(hint, seen)]
    return te.TypedDict(tp.__name__, fields)


# --------------------------------------------------------------------------------------------- regex
def shortest_regex(pattern: str) -> str | None:
    """A shortest string the whole of `pattern` matches, or None."""
    try:
        import re._parser as sre_parse  # Python >= 3.11
    except ImportError:  # pragma: no cover - Python 3.10
        import sre_parse  # type: ignore[no-redef]
    try:
        tree = sre_parse.parse(pattern)
    except Exception:  # syntax Python's re does not share with the grammar engine's
        return None
    return _sre(list(tree))


def _sre(items: list) -> str | None:
    out: list[str] = []
    for op, arg in items:
        name = str(op)
        if name == "LITERAL":
            out.append(chr(arg))
        elif name == "NOT_LITERAL":
            out.append("a" if arg != ord("a") else "b")
        elif name == "ANY":
            out.append("a")
        elif name == "IN":
            char = _class_char(arg)
            if char is None:
                return None
            out.append(char)
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            low, _, sub = arg
            text = _sre(list(sub))
            if text is None:
                return None
            out.append(text * low)
        elif name in ("SUBPATTERN", "ATOMIC_GROUP"):
            text = _sre(list(arg[-1] if name == "SUBPATTERN" else arg))
            if text is None:
                return None
            out.append(text)
        elif name == "BRANCH":
            options = [_sre(list(b)) for b in arg[1]]
            if any(o is None for o in options):
                return None
            out.append(min(options, key=len))  # type: ignore[arg-type]
        elif name != "AT":  # anchors add nothing; look-around, backreferences: give up
            return None
    return "".join(out)


def _class_char(items: list) -> str | None:
    """A character of a (non-negated) character class."""
    for op, arg in items:
        name = str(op)
        if name == "NEGATE":
            return None
        if name == "LITERAL":
            return chr(arg)
        if name == "RANGE":
            return chr(arg[0])
        if name == "CATEGORY":
            return {"CATEGORY_DIGIT": "0", "CATEGORY_WORD": "a", "CATEGORY_SPACE": " "}.get(str(arg))
    return None
