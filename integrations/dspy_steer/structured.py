"""Typed DSPy outputs that parse every time: a `Request` -> the engine's `constraint=` spec.

DSPy's default configuration (no adapter set) is `ChatAdapter`, which asks the model to answer in
its layout and parses the reply with `ChatAdapter.parse`:

    [[ ## reasoning ## ]]
    free text
    [[ ## difficulty ## ]]
    3
    [[ ## completed ## ]]

A small model often breaks the layout (a missing header, `3.` for an int), the parse fails, DSPy
retries with `JSONAdapter`, and that fails too. Here the engine reads what the adapter put in the
request and decodes under a grammar, so the reply is well formed by construction:

- `response_format` (JSONAdapter's structured path, or any `lm(..., response_format=...)`):
  `{"type": "json_schema", "schema": S}` -> `constraint=S` (bounded to fit, as below);
  `{"type": "json_object"}` -> any JSON object.
- ChatAdapter's layout (the system message's "All interactions will be structured ..." block and
  the user message's "Respond with the corresponding output fields ..." sentence): the reply is
  constrained to the output headers in order, each value to its field's type as the adapter
  describes it in the prompt (`# note: the value you produce must ...`): `bool` -> `True`/`False`,
  `int`/`float` -> a number, `Literal`/`Enum` -> one of the choices, anything else with a JSON
  schema (`list[str]`, pydantic models, ...) -> JSON of that schema; `str` fields -> one line of text
  without `[[` (a multi-line value let a small model, once it wrote a newline, only go on writing to
  the value's token cap). One or two newlines before each header. The reply ends with
  `[[ ## completed ## ]]`.
- `FieldByFieldAdapter` (the request ends with an assistant prefill ending in a field's header):
  the value of that field, constrained to its type (text fields stay free: the adapter's stops end
  them).

Fit in `max_new_tokens`: the fixed headers and typed values are counted first; each text field
gets an equal share of what is left as a token cap (llguidance's `max_tokens` rule attribute), and
each JSON value's unbounded strings, arrays and integers get `maxLength`/`maxItems`/bounds that fit
its share (only where the schema sets none). So even a random model finishes within the budget.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FieldSpec",
    "chat_layout",
    "layout_grammar",
    "request_constraint",
    "response_format_constraint",
    "value_grammar",
]

#: How JSON values are written (json.dumps' default separators, no free whitespace).
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_STRUCTURE = "All interactions will be structured in the following way"
_RESPOND = re.compile(
    r"Respond with the corresponding output fields, starting with the field (.*?),? and then ending "
    r"with the marker for `\[\[ ## completed ## \]\]`",
    re.S,
)
_HEADER_NAME = re.compile(r"`\[\[ ## (\w+) ## \]\]`")
_VALUE_NOTE = re.compile(r"^\[\[ ## (\w+) ## \]\]\n\{\1\}(?: {8}# note: the value you produce (.*))?$", re.M)
_PREFILL_HEADER = re.compile(r"\[\[ ## (\w+) ## \]\]\n$")
_INT = r"/-?(0|[1-9][0-9]{0,8})/"
_FLOAT = r"/-?(0|[1-9][0-9]{0,8})(\.[0-9]{1,6})?/"
_TEXT = r"/[^\[\s]([^\[\n]|\[[^\[\n])*/"
#: Worst-case tokens of a typed value (a token is at least one byte).
_TYPED_COST = {"bool": 5, "int": 10, "float": 17}


@dataclass(frozen=True)
class FieldSpec:
    """One output field as ChatAdapter describes it: `kind` is text, bool, int, float, choice or json."""

    name: str
    kind: str
    choices: tuple[str, ...] = ()
    schema: dict | None = None


# ---------------------------------------------------------------------- reading the request
def chat_layout(system: str, user: str) -> list[FieldSpec] | None:
    """The output fields of a ChatAdapter request, in order (None: not ChatAdapter's layout)."""
    if _STRUCTURE not in system:
        return None
    asked = _RESPOND.search(user)
    if asked is None:
        return None
    names = _HEADER_NAME.findall(asked.group(1))
    notes = {m.group(1): m.group(2) for m in _VALUE_NOTE.finditer(system.split(_STRUCTURE, 1)[1])}
    if not names or any(n not in notes for n in names):
        return None
    return [field_spec(n, notes[n]) for n in names]


def field_spec(name: str, note: str | None) -> FieldSpec:
    """A field's kind from ChatAdapter's note on its value (`dspy.adapters.utils.translate_field_type`)."""
    note = (note or "").strip()
    if note == "must be True or False":
        return FieldSpec(name, "bool")
    if note in ("must be a single int value", "must be a single float value"):
        return FieldSpec(name, note.split()[-2])
    for lead in ("must exactly match (no extra characters) one of: ", "must be one of: "):
        if note.startswith(lead):
            return FieldSpec(name, "choice", tuple(dict.fromkeys(note[len(lead) :].split("; "))))
    lead = "must adhere to the JSON schema: "
    if note.startswith(lead):
        try:
            schema = json.loads(note[len(lead) :])
        except ValueError:
            return FieldSpec(name, "text")
        if isinstance(schema, dict) and not _admits_bare_string(schema):
            return FieldSpec(name, "json", schema=schema)
    return FieldSpec(name, "text")


def _admits_bare_string(schema: dict) -> bool:
    """`str | None` and similar unions: DSPy parses these from the raw text, so they stay text."""
    branches = schema.get("anyOf") or schema.get("oneOf") or [schema]
    return any(isinstance(b, dict) and b.get("type") == "string" for b in branches)


def response_format_constraint(fmt: Any) -> dict | None:
    """The constraint of a request's `response_format` (None when there is none)."""
    if fmt is None:
        return None
    if fmt.get("type") == "json_object":
        return {"type": "object"}
    return dict(fmt["schema"])


def _fitted(schema: dict, max_new_tokens: int) -> dict:
    """A `response_format` schema with bounds on what it leaves unbounded, so a reply fits."""
    capped = capped_schema(schema, max(1, max_new_tokens - 2))
    return capped if _worst(capped, capped.get("$defs", {}), 0) < 10**6 else schema


def request_constraint(request: Any, max_new_tokens: int, count_tokens: Any) -> dict | None:
    """The `constraint=` spec for a DSPy `Request` (None: decode freely).

    Args:
        request: a `dspy.lm15.Request`.
        max_new_tokens: the call's token budget, which the constrained reply must fit.
        count_tokens: `engine.count_tokens` (for the fixed parts of the layout).
    """
    fmt = response_format_constraint(getattr(request.config, "response_format", None))
    if fmt is not None:
        return _fitted(fmt, max_new_tokens)
    system = _plain(request.system)
    users = [m for m in request.messages if m.role == "user"]
    if not system or not users:
        return None
    fields = chat_layout(system, _plain(users[-1].parts))
    if fields is None:
        return None
    last = request.messages[-1]
    if last.role == "assistant":  # a prefill (FieldByFieldAdapter): only the next value
        found = _PREFILL_HEADER.search(_plain(last.parts))
        field = next((f for f in fields if found and f.name == found.group(1)), None)
        if field is None or field.kind == "text":
            return None
        return {"lark": "start: " + value_grammar(field, max_new_tokens)}
    return {"lark": layout_grammar(fields, max_new_tokens, count_tokens)}


def _plain(content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(getattr(p, "text", "") or "" for p in content)


# ---------------------------------------------------------------------- grammars
def layout_grammar(fields: list[FieldSpec], max_new_tokens: int, count_tokens: Any = None) -> str:
    """Lark grammar (llguidance) of ChatAdapter's reply for `fields`, fitting `max_new_tokens`."""
    headers = [("" if i == 0 else "\n\n") + f"[[ ## {f.name} ## ]]\n" for i, f in enumerate(fields)]
    tail = "\n\n[[ ## completed ## ]]"
    count = count_tokens or (lambda s: len(s.encode()))
    least = sum(count(h) for h in headers) + count(tail) + len(fields)
    if least > max_new_tokens:
        raise ValueError(
            f"ChatAdapter's reply for the output fields {[f.name for f in fields]} needs at least {least} "
            f"tokens (the field headers alone); max_new_tokens={max_new_tokens}: raise it (steer_lm(..., "
            "max_new_tokens=...) or the call's max_tokens)"
        )
    fixed = sum(count(h) + 2 for h in headers) + count(tail) + 2  # +2: where a literal meets a value
    fixed += sum(_typed_cost(f) for f in fields)
    free = [f for f in fields if f.kind in ("text", "json")]
    share = max(1, (max_new_tokens - fixed) // max(1, len(free)))
    lines = [f"v{i}{value_rule(f, share)}" for i, f in enumerate(fields)]
    # After a value, one or two newlines, then the next header: ChatAdapter.parse reads headers line by
    # line, so "\n[[ ## next" parses like "\n\n[[ ## next", and a model that writes one newline is
    # not trapped in the value (a text value is one line, so its greedy lexeme ends at the newline).
    seps = [f"/\\n\\n?{_lark_escape(h.lstrip(chr(10)))}/" for h in [*headers[1:], tail]]
    body = " ".join(f"v{i} {sep}" for i, sep in enumerate(seps))
    return "\n".join([f"start: {json.dumps(headers[0])} {body}", *lines]) + "\n"


def _lark_escape(literal: str) -> str:
    """`literal` as the body of a lark `/regex/` (headers hold brackets, spaces, `#`, word characters
    and newlines)."""
    return literal.replace("[", "\\[").replace("]", "\\]").replace("\n", "\\n")


def value_grammar(field: FieldSpec, max_new_tokens: int) -> str:
    """The body of a lark `start` rule for one value of `field` (FieldByFieldAdapter's prefill)."""
    return value_rule(field, max(1, max_new_tokens - 2)).split(": ", 1)[1]


def value_rule(field: FieldSpec, share: int) -> str:
    """`[attrs]: body` of the rule for `field`'s value; free values get at most `share` tokens."""
    if field.kind == "bool":
        return ': "True" | "False"'
    if field.kind == "int":
        return f": {_INT}"
    if field.kind == "float":
        return f": {_FLOAT}"
    if field.kind == "choice":
        return ": " + " | ".join(json.dumps(c) for c in field.choices)
    if field.kind == "json":
        schema = {"x-guidance": JSON_STYLE, **capped_schema(field.schema or {}, share)}
        return f": %json {json.dumps(schema)}"
    return f"[max_tokens={share}]: {_TEXT}"


def _typed_cost(field: FieldSpec) -> int:
    if field.kind == "choice":
        return max(len(c.encode()) for c in field.choices)
    return _TYPED_COST.get(field.kind, 0)


# ---------------------------------------------------------------------- JSON within a budget
def capped_schema(schema: dict, budget: int) -> dict:
    """`schema` with bounds on its unbounded strings, arrays and integers so that any valid value
    takes at most about `budget` tokens (a bound the schema already sets is kept)."""
    for items, length in ((8, 64), (5, 32), (4, 16), (3, 8), (2, 4), (1, 2), (1, 1), (0, 0)):
        capped = _cap(schema, items, length, schema.get("$defs", {}))
        if _worst(capped, capped.get("$defs", {}), 0) <= budget:
            return capped
    return capped


def _cap(node: Any, items: int, length: int, defs: dict) -> Any:
    if isinstance(node, list):
        return [_cap(n, items, length, defs) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _cap(v, items, length, defs) if k not in ("enum", "const") else v for k, v in node.items()}
    kind = node.get("type")
    if kind == "string" and not {"enum", "const", "format", "pattern"} & set(node):
        out["maxLength"] = min(node.get("maxLength", length), length)
        out["minLength"] = min(node.get("minLength", 0), out["maxLength"])
    elif kind == "array":
        out["maxItems"] = min(node.get("maxItems", items), max(items, node.get("minItems", 0)))
    elif kind in ("integer", "number"):
        out.setdefault("minimum", -(10**9))
        out.setdefault("maximum", 10**9)
    if kind == "object" and "properties" in node:
        out.setdefault("additionalProperties", False)
    return out


def _worst(node: Any, defs: dict, depth: int) -> int:
    """Upper bound of the bytes (so tokens) of a value of `node` (JSON escapes count 6 bytes/char)."""
    if depth > 8 or not isinstance(node, dict):
        return 10**6
    if "$ref" in node:
        return _worst(defs.get(node["$ref"].split("/")[-1], {}), defs, depth + 1)
    if "enum" in node or "const" in node:
        return max(len(json.dumps(v)) for v in node.get("enum", [node.get("const")]))
    for key in ("anyOf", "oneOf", "allOf"):
        if key in node:
            return max(_worst(b, defs, depth + 1) for b in node[key])
    kind = node.get("type")
    if kind == "string":
        return 2 + 6 * node.get("maxLength", 10**5) if "pattern" not in node else 10**6
    if kind in ("integer", "number"):
        return 24
    if kind in ("boolean", "null"):
        return 5
    if kind == "array":
        prefix = sum(_worst(p, defs, depth + 1) + 2 for p in node.get("prefixItems", []))
        return 2 + prefix + node.get("maxItems", 10**5) * (_worst(node.get("items", {}), defs, depth + 1) + 2)
    if kind == "object":
        props = node.get("properties", {})
        if node.get("additionalProperties", True) is not False and not props:
            return 10**6
        return 2 + sum(len(k) + 6 + _worst(v, defs, depth + 1) for k, v in props.items())
    return 10**6
