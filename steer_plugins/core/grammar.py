"""Structured output: a grammar spec compiled once, and a fresh per-prompt `Constraint` from it.

A spec is a JSON schema (dict), a pydantic model class, a TypedDict (or any type pydantic's
`TypeAdapter` takes: `list[str]`, `int`, `Literal[...]`), a regular expression (`Regex("...")` or
`{"regex": "..."}`), a lark grammar (`{"lark": "..."}`), or a list of choices (strings).
`compile_grammar(spec)` validates and compiles it once (cached per spec); a bad spec raises a
`GrammarError` naming the problem and the fix. `Grammar.start(tokenizer, eos, max_new_tokens)` binds it
to a tokenizer (cached per tokenizer) and returns the per-prompt `GrammarConstraint`.

The engine is llguidance (docs/structured.md has the measurements). JSON is written in
`json.dumps`' default style (`{"a": 1, "b": [2, 3]}`: no newlines, ", " and ": " separators), and
objects whose schema lists `properties` without saying `additionalProperties` get no extra keys
(as OpenAI's strict mode). EOS is allowed only where the grammar is complete; a grammar that
cannot continue is finished, which ends its prompt.

Example:
    >>> g = compile_grammar({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]})
    >>> engine.generate(["A number as JSON:"], constraint=g.spec)[0].parsed
    {'n': 7}
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from .constraints import bitmask_bias
from .schema_tools import (
    one_of_discriminated,
    portable_type,
    shortest_json,
    shortest_regex,
    strict_schema,
)

__all__ = ["Grammar", "GrammarConstraint", "GrammarError", "Regex", "compile_grammar"]

#: How JSON is written: `json.dumps`' default separators, no free whitespace.
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
SUPPORTED_KEYWORDS = (
    "type, properties, required, additionalProperties, items, prefixItems, enum, const, anyOf, $ref/$defs, "
    "allOf, minimum/maximum (exclusive too), multipleOf, minLength/maxLength, pattern, format, "
    "minItems/maxItems, minProperties/maxProperties"
)
_CACHE_SIZE = 256


class GrammarError(ValueError):
    """A constraint spec that cannot be enforced; the message names the problem and the fix."""


@dataclass(frozen=True)
class Regex:
    """A regular expression the whole output must match (Rust `regex` syntax: no look-around, no
    backreferences, no word boundaries)."""

    pattern: str

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, str):
            raise GrammarError(f"Regex(pattern) takes a str, got {type(self.pattern).__name__}")


@dataclass(eq=False)
class Grammar:
    """A validated, compiled spec (tokenizer-independent). Build it with `compile_grammar`.

    Attributes:
        kind: "json", "regex", "choice" or "lark".
        spec: what the caller passed.
        label: the spec in words, for messages.
        source: the llguidance grammar.
        schema: the JSON schema the output follows (kind "json"), else None.
        shortest: a shortest valid output, when known (checked against `max_new_tokens`).
    """

    kind: str
    spec: Any
    label: str
    source: str
    schema: dict | None
    shortest: str | None
    _parse: Callable[[str], Any]
    _bound: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary, repr=False)

    def __reduce__(self) -> tuple:
        """Pickled as its spec (compiled again, once, on the other side: Ray workers, forks)."""
        return (compile_grammar, (self.spec,))

    def parse(self, text: str) -> Any:
        """`text` (a complete output) as a value: a dict/list/... for a JSON schema, a model instance
        for a pydantic model, the text itself for a regex, a choice or a lark grammar."""
        return self._parse(text)

    def start(self, tokenizer: Any, eos: Iterable[int], max_new_tokens: int) -> GrammarConstraint:
        """A fresh per-prompt constraint for `tokenizer` (whose end-of-sequence ids are `eos`).

        Raises:
            GrammarError: the tokenizer is not a fast one, or the shortest valid output needs more
                than `max_new_tokens` tokens.
        """
        bound = self._bind(tokenizer, tuple(sorted(eos)))
        if bound.min_tokens is not None and bound.min_tokens > max_new_tokens:
            raise GrammarError(
                f"{self.label} cannot finish within max_new_tokens={max_new_tokens}: its shortest valid "
                f"output {self.shortest!r} takes {bound.min_tokens} tokens (with the end-of-sequence token "
                f"where one is needed). Raise max_new_tokens to at least {bound.min_tokens}, or relax the "
                "spec (fewer required fields, smaller minItems/minLength)"
            )
        return GrammarConstraint(self, bound, bound.matcher.deep_copy(), tokenizer)

    def _bind(self, tokenizer: Any, eos: tuple[int, ...]) -> _Bound:
        with _LOCK:
            per_tok = self._bound.setdefault(tokenizer, {})
            if eos not in per_tok:
                per_tok[eos] = _Bound.create(self, tokenizer, eos)
            return per_tok[eos]


@dataclass
class _Bound:
    """A grammar bound to one tokenizer: a warmed matcher to copy per prompt, and the token count of
    the shortest valid output."""

    matcher: Any
    words: int
    min_tokens: int | None

    @classmethod
    def create(cls, grammar: Grammar, tokenizer: Any, eos: tuple[int, ...]) -> _Bound:
        import llguidance
        import llguidance.torch as llt

        lltok = _ll_tokenizer(tokenizer, eos)
        matcher = llguidance.LLMatcher(lltok, grammar.source, log_level=0)
        words = (lltok.vocab_size + 31) // 32
        llt.fill_next_token_bitmask(matcher, torch.zeros((1, words), dtype=torch.int32), 0)  # warm-up
        if matcher.is_error():
            raise GrammarError(f"{grammar.label} cannot be used with this tokenizer: {matcher.get_error()}")
        min_tokens = None
        if grammar.shortest is not None:
            probe = matcher.deep_copy()
            ids = list(tokenizer(grammar.shortest, add_special_tokens=False).input_ids)
            if all(probe.consume_token(t) for t in ids) and probe.is_accepting():
                min_tokens = len(ids) + (0 if probe.is_stopped() else 1)
        return cls(matcher, words, min_tokens)


class GrammarConstraint:
    """Per-prompt grammar state (an llguidance matcher): implements `Constraint` and the batched
    bitmask form `apply_constraints` uses."""

    def __init__(self, grammar: Grammar, bound: _Bound, matcher: Any, tokenizer: Any) -> None:
        self.grammar, self._matcher, self._tokenizer = grammar, matcher, tokenizer
        self.bitmask_words = bound.words
        self.tokens: list[int] = []
        self.error: str | None = None

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the allowed tokens into row `row` of an int32 `(n, bitmask_words)` CPU bitmask."""
        import llguidance.torch as llt

        llt.fill_next_token_bitmask(self._matcher, bitmask, row)

    @staticmethod
    def fill_bitmasks(items: list[tuple[GrammarConstraint, int]], bitmask: torch.Tensor) -> None:
        """`fill_bitmask` for many constraints at once (in parallel threads)."""
        if len(items) == 1:
            items[0][0].fill_bitmask(bitmask, items[0][1])
            return
        import llguidance.torch as llt

        llt.fill_next_token_bitmask_par(_executor(), [(c._matcher, row) for c, row in items], bitmask)

    def allowed_mask(self, vocab_size: int, device: torch.device) -> torch.Tensor:
        bitmask = torch.zeros((1, self.bitmask_words), dtype=torch.int32)
        self.fill_bitmask(bitmask, 0)
        return bitmask_bias(bitmask, vocab_size, device)[0] == 0

    def advance(self, token_id: int) -> None:
        self.tokens.append(token_id)
        if self.error is None and not self._matcher.consume_token(token_id):
            self.error = self._matcher.get_error() or f"token {token_id} was not allowed"

    @property
    def is_finished(self) -> bool:
        """The grammar cannot continue (complete with nothing more allowed, or broken)."""
        return self.error is not None or self._matcher.is_stopped()

    @property
    def is_complete(self) -> bool:
        """What was generated so far is a whole valid output."""
        return self.error is None and self._matcher.is_accepting()

    def parse(self, text: str) -> Any:
        """`text` parsed when it is this constraint's whole, complete output; else None (cut by a
        stop string or the length limit, or a pydantic validator refused it)."""
        if not self.is_complete or text != self._tokenizer.decode(self.tokens, skip_special_tokens=True):
            return None
        try:
            return self.grammar.parse(text)
        except ValueError:  # pydantic's ValidationError and json's JSONDecodeError are ValueErrors
            return None


# ------------------------------------------------------------------------------------------- compile
_LOCK = threading.RLock()
_GRAMMARS: OrderedDict[Any, Grammar] = OrderedDict()


def compile_grammar(spec: Any) -> Grammar:
    """Validate and compile `spec` (cached: the same spec compiles once).

    Raises:
        GrammarError: an unsupported spec type, an invalid schema, an unsupported JSON-schema
            feature, a schema that accepts no value, an invalid regex or one that matches nothing.
    """
    if isinstance(spec, Grammar):
        return spec
    key = _cache_key(spec)
    with _LOCK:
        if key in _GRAMMARS:
            _GRAMMARS.move_to_end(key)
            return _GRAMMARS[key]
    grammar = _compile(spec)
    _check_nonempty(grammar)
    with _LOCK:
        _GRAMMARS[key] = grammar
        while len(_GRAMMARS) > _CACHE_SIZE:
            _GRAMMARS.popitem(last=False)
    return grammar


def _cache_key(spec: Any) -> Any:
    if isinstance(spec, dict):
        try:
            return ("dict", json.dumps(spec, sort_keys=True))
        except (TypeError, ValueError) as err:
            raise GrammarError(f"invalid JSON schema: it is not JSON-serialisable ({err})") from err
    if isinstance(spec, (list, tuple)):
        return ("choice", tuple(spec))
    try:
        return ("obj", type(spec), spec)
    except TypeError as err:  # unhashable
        raise GrammarError(_spec_help(spec)) from err


def _spec_help(spec: Any) -> str:
    hint = " (for a regular expression pass Regex(...) or {'regex': ...})" if isinstance(spec, str) else ""
    return (
        "a constraint is a JSON schema (dict), a pydantic model class, a TypedDict or other type, "
        "Regex('...') or {'regex': '...'}, {'lark': '...'}, or a list of choices (strings); got "
        f"{type(spec).__name__}{hint}"
    )


def _compile(spec: Any) -> Grammar:
    from llguidance import LLMatcher

    if isinstance(spec, Regex) or (isinstance(spec, dict) and set(spec) == {"regex"}):
        pattern = spec.pattern if isinstance(spec, Regex) else spec["regex"]
        if not isinstance(pattern, str):
            raise GrammarError(f"{{'regex': ...}} takes a str, got {type(pattern).__name__}")
        source = _validated(LLMatcher.grammar_from_regex(pattern), f"the regex {pattern!r}", "regex")
        return Grammar("regex", spec, f"the regex {pattern!r}", source, None, shortest_regex(pattern), str)
    if isinstance(spec, dict) and set(spec) == {"lark"}:
        source = _validated(LLMatcher.grammar_from_lark(str(spec["lark"])), "the lark grammar", "lark")
        return Grammar("lark", spec, "the lark grammar", source, None, None, str)
    if isinstance(spec, (list, tuple)):
        return _compile_choices(spec)
    if isinstance(spec, dict):
        return _compile_schema(spec, spec, "the JSON schema", json.loads)
    if isinstance(spec, type) or _is_type_form(spec):
        return _compile_type(spec)
    raise GrammarError(_spec_help(spec))


def _compile_choices(choices: list | tuple) -> Grammar:
    from llguidance import LLMatcher

    if not choices:
        raise GrammarError("the list of choices is empty: pass at least one string")
    bad = [c for c in choices if not isinstance(c, str)]
    if bad:
        raise GrammarError(
            f"choices must be strings, got {bad[:3]!r}: for other values use a JSON schema "
            "{'enum': [...]} (or a Literal type)"
        )
    label = f"the choices {list(choices)[:5]!r}{' ...' if len(choices) > 5 else ''}"
    lark = "start: " + " | ".join(json.dumps(c) for c in choices)
    source = _validated(LLMatcher.grammar_from_lark(lark), label, "choice")
    return Grammar("choice", choices, label, source, None, min(choices, key=len), str)


def _is_type_form(spec: Any) -> bool:
    """A typing construct pydantic can describe (`list[str]`, `Literal["a"]`, `int | None`, ...)."""
    return type(spec).__module__ in {"typing", "types", "typing_extensions"}


def _compile_type(spec: Any) -> Grammar:
    from pydantic import BaseModel, TypeAdapter

    name = getattr(spec, "__name__", repr(spec))
    if isinstance(spec, type) and issubclass(spec, BaseModel):
        schema, parse, label = (
            spec.model_json_schema(),
            spec.model_validate_json,
            f"the pydantic model {name}",
        )
    else:
        try:
            adapter = TypeAdapter(portable_type(spec))
            schema = adapter.json_schema()
        except Exception as err:  # pydantic raises several error types for types it cannot describe
            raise GrammarError(
                f"{name} cannot be used as a constraint: pydantic cannot describe it as a JSON schema "
                f"({err}). Pass a pydantic model, a TypedDict, a JSON-compatible type or a JSON schema"
            ) from err
        parse, label = adapter.validate_json, f"the type {name}"
    return _compile_schema(spec, schema, label, parse)


def _compile_schema(spec: Any, schema: dict, label: str, parse: Callable[[str], Any]) -> Grammar:
    from llguidance import LLMatcher

    strict = strict_schema(schema)
    style = {**JSON_STYLE, "coerce_one_of": one_of_discriminated(schema)}
    try:
        source = LLMatcher.grammar_from_json_schema(strict, defaults=style)
    except (TypeError, ValueError) as err:
        raise GrammarError(f"invalid JSON schema: {err}. Fix the schema (https://json-schema.org)") from err
    source = _validated(source, label, "json")
    return Grammar("json", spec, label, source, schema, shortest_json(strict), parse)


def _validated(source: str, label: str, kind: str) -> str:
    """`source`, or a GrammarError that names what is wrong with it and what to do."""
    from llguidance import LLMatcher

    failed, messages = LLMatcher.validate_grammar_with_warnings(source)
    if not failed:
        return source
    msg = "; ".join(m.strip() for m in messages) or "rejected by the grammar compiler"
    if "Unimplemented keys" in msg:
        keys = re.findall(r'"([^"]+)"', msg)
        raise GrammarError(
            f"{label} uses JSON-schema feature(s) {keys} that cannot be enforced while decoding: remove "
            f"them, or state the rule with supported keywords ({SUPPORTED_KEYWORDS})"
        )
    if "oneOf" in msg:
        raise GrammarError(
            f"{label} uses oneOf, which cannot be enforced while decoding (exactly one branch): use "
            "anyOf, or a pydantic discriminated union (oneOf with a discriminator is accepted)"
        )
    if "nsatisfiable" in msg:
        raise GrammarError(f"{label} accepts no value ({msg}): relax the contradicting keywords")
    fix = {
        "regex": "use Rust regex syntax (no look-around, backreferences or \\b)",
        "json": "fix the schema (https://json-schema.org)",
        "lark": "fix the grammar (llguidance's lark syntax)",
        "choice": "pass plain strings",
    }[kind]
    what = "invalid JSON schema" if kind == "json" else f"{label} is invalid"
    raise GrammarError(f"{what}: {msg}. {fix.capitalize()}")


def _check_nonempty(grammar: Grammar) -> None:
    """Refuse a grammar no output can satisfy; drop a `shortest` guess it does not accept."""
    import llguidance
    import llguidance.torch as llt

    matcher = llguidance.LLMatcher(_byte_tokenizer(), grammar.source, log_level=0)
    llt.fill_next_token_bitmask(matcher, torch.zeros((1, 9), dtype=torch.int32), 0)
    if matcher.is_error():
        raise GrammarError(
            f"{grammar.label} matches nothing: no output can satisfy it. Check it for an impossible part "
            "(e.g. an empty character class such as [^\\s\\S])"
        )
    if grammar.shortest is not None:
        ok = all(matcher.consume_token(b) for b in grammar.shortest.encode())
        if not (ok and matcher.is_accepting()):
            grammar.shortest = None


# ------------------------------------------------------------------------------------------- tokenizers
_TOKENIZERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _ll_tokenizer(tokenizer: Any, eos: tuple[int, ...]) -> Any:
    """llguidance's view of `tokenizer` (about 1-3 s for a 49k vocabulary; cached per tokenizer)."""
    import llguidance.hf

    with _LOCK:
        per_tok = _TOKENIZERS.setdefault(tokenizer, {})
        if eos not in per_tok:
            try:
                per_tok[eos] = llguidance.hf.from_tokenizer(tokenizer, eos_token=list(eos) or None)
            except ValueError as err:
                raise GrammarError(
                    f"constraints need a fast (Rust) Hugging Face tokenizer, got {type(tokenizer).__name__} "
                    f"({err}): load the tokenizer with use_fast=True"
                ) from err
        return per_tok[eos]


@functools.lru_cache(maxsize=1)
def _byte_tokenizer() -> Any:
    """A 256-byte vocabulary plus EOS (id 256): checks a grammar without any real tokenizer."""
    import llguidance
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    rest = [b for b in range(256) if b not in printable]
    chars = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(rest)}
    tok = Tokenizer(models.BPE(vocab={c: b for b, c in chars.items()}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<eos>"])
    return llguidance.LLTokenizer(tok.to_str(), n_vocab=257, eos_token=256)


_EXECUTOR: tuple[int, Any] | None = None


def _executor() -> Any:
    """llguidance's thread pool for batched masks (a new one after a fork: threads do not survive)."""
    global _EXECUTOR
    import llguidance

    if _EXECUTOR is None or _EXECUTOR[0] != os.getpid():
        _EXECUTOR = (os.getpid(), llguidance.LLExecutor())
    return _EXECUTOR[1]
