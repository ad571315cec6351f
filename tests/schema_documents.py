"""JSON documents for a wire model, derived from its pydantic core schema (so they follow the
model: a field added to it is generated too): valid ones, and the same with fields pushed past
their bounds, wrongly typed, NUL, lone surrogates, huge integers, floats such as 1.0 and 1e400,
NaN, duplicate keys, unknown and missing fields and nested garbage.

Documents are JSON text built by hand (not by a JSON writer), so that they can hold what no
writer produces: NaN, 1e400, duplicate keys, escapes of lone surrogates. Used by
tests/test_fast_decode.py."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st
from pydantic import BaseModel

from meterstream.schemas.fast_decode import _NUL_FREE_PATTERNS, python_pattern

BIG = 2**70


def fields_of(model: type[BaseModel]) -> dict[str, dict[str, Any]]:
    return model_fields(dict(model.__pydantic_core_schema__))


def model_fields(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    while schema.get("type") in ("function-after", "definitions"):
        schema = schema["schema"]
    return {name: field["schema"] for name, field in schema["schema"]["fields"].items()}


def _strip(schema: dict[str, Any]) -> dict[str, Any]:
    """The value schema under defaults and field functions."""
    while schema.get("type") in ("default", "function-after"):
        schema = schema["schema"]
    return schema


def _int_range(schema: dict[str, Any]) -> tuple[int, int]:
    lo = schema.get("ge", schema["gt"] + 1 if "gt" in schema else -BIG)
    hi = schema.get("le", schema["lt"] - 1 if "lt" in schema else BIG)
    return lo, hi


def _text(value: str, ascii_only: bool) -> str:
    return json.dumps(value, ensure_ascii=ascii_only)


def valid_value(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    """JSON text of a value the field's type and bounds take (a field function may refuse it)."""
    schema = _strip(schema)
    kind = schema["type"]
    if kind == "nullable":
        return st.one_of(st.just("null"), valid_value(schema["schema"]))
    if kind == "int":
        lo, hi = _int_range(schema)
        round_numbers = st.integers(lo // 60_000 + 1, hi // 60_000).map(lambda k: k * 60_000) \
            if hi // 60_000 > lo // 60_000 else st.nothing()
        small = st.integers(max(lo, -3), min(hi, 70)) if max(lo, -3) <= min(hi, 70) else st.nothing()
        return st.one_of(st.integers(lo, hi), st.sampled_from([lo, hi]), small, round_numbers).map(str)
    if kind == "bool":
        return st.sampled_from(["true", "false"])
    if kind == "enum":
        return st.sampled_from([json.dumps(member.value) for member in schema["members"]])
    if kind == "literal":
        return st.sampled_from([json.dumps(e) for e in schema["expected"]])
    if kind == "str":
        lo, hi = schema.get("min_length", 0), min(schema.get("max_length", 40), 300)
        pattern = schema.get("pattern")
        if pattern is None or python_pattern(pattern) in _NUL_FREE_PATTERNS:
            text = st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]),
                           min_size=lo, max_size=hi)
        else:
            text = st.from_regex(python_pattern(pattern), fullmatch=True).filter(lambda s: lo <= len(s) <= hi)
        return st.tuples(text, st.booleans()).map(lambda t: _text(*t))
    if kind == "model":
        return valid_document(model_fields(schema))
    raise AssertionError(f"no strategy for a {kind} schema")


def bad_value(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    """JSON text of a value near or past the field's rules (some of them still valid)."""
    schema = _strip(schema)
    kind = schema["type"]
    common = st.sampled_from(["null", "true", "false", "[]", "{}", '"x"', '""', "0", "1.0", "1e400", "-1e400", "NaN",
                              "Infinity", "-Infinity", "1.5", "-0", "0.0", "1E2", str(2**64), str(-(2**63) - 1),
                              "1" + "0" * 30, '"\\u0000"', '"\\ud800"', '"\\udc00x"', '"\\ud83d\\ude00"',
                              '{"a": [1, {"b": null}]}'])
    if kind == "nullable":
        return st.one_of(bad_value(schema["schema"]), common)
    if kind == "int":
        lo, hi = _int_range(schema)
        edges = [lo - 1, hi + 1, lo, hi, 2**63, 2**64, -(2**63) - 1]
        return st.one_of(common, st.sampled_from(edges).map(str),
                         st.sampled_from([lo, hi, 1, 0]).flatmap(lambda v: st.sampled_from(
                             [f"{v}.0", f"{v}e0", f'"{v}"', f'" {v}"', f"{v}.5", f"-{v}"]))) if abs(lo) < BIG \
            else st.one_of(common, st.sampled_from(edges).map(str))
    if kind == "bool":
        return st.one_of(common, st.sampled_from(["1", "0", '"true"', '"false"', '"1"']))
    if kind in ("enum", "literal"):
        values = [m.value for m in schema["members"]] if kind == "enum" else list(schema["expected"])
        wrong = [json.dumps(v).upper() for v in values if isinstance(v, str)] + \
                [f"{v}.0" for v in values if isinstance(v, int)] + [f'"{v}"' for v in values if isinstance(v, int)]
        return st.one_of(common, st.sampled_from(wrong or ["0"]), st.integers(-5, 100).map(str))
    if kind == "str":
        lo, hi = schema.get("min_length", 0), min(schema.get("max_length", 40), 1100)
        return st.one_of(common, st.sampled_from([
            json.dumps("a" * (hi + 1)), json.dumps("é" * hi), json.dumps("😀" * hi), json.dumps("😀" * (hi + 1)),
            '"ab\\n"', '"0a\\n"', '"\\n"', '"a\\u0000"', '"\\u0000"', '"\\ud800"', '"a\\ud800b"',
            '"\\ud83d\\ude00"', '"\\udc00\\ud800"', json.dumps("a" * max(lo - 1, 0)), '"-"', '" "', '"\\t"',
            '"\\\\u0000"']), valid_value(schema).map(lambda t: t[:-1] + '\\n"'))
    if kind == "model":
        nested = model_fields(schema)
        return st.one_of(common, mutated_document(nested), st.sampled_from(['{"x": 1}', "[]", '""']))
    raise AssertionError(f"no strategy for a {kind} schema")


def _join(pairs: list[tuple[str, str]], spaced: bool) -> str:
    sep = ", " if spaced else ","
    colon = ": " if spaced else ":"
    return "{" + sep.join(f"{json.dumps(k)}{colon}{v}" for k, v in pairs) + "}"


@st.composite
def valid_document(draw: st.DrawFn, fields: dict[str, dict[str, Any]]) -> str:
    """Every required field and some optional ones, valid, in any order."""
    pairs = [(name, draw(valid_value(schema))) for name, schema in fields.items()
             if schema.get("type") != "default" or draw(st.booleans())]
    pairs = draw(st.permutations(pairs))
    return _join(pairs, draw(st.booleans()))


@st.composite
def mutated_document(draw: st.DrawFn, fields: dict[str, dict[str, Any]]) -> str:
    """A valid document with 1-3 changes: a field's value replaced by a bad one, a field dropped,
    an unknown field, a key given twice (the last one wins in both decoders)."""
    pairs = [(name, draw(valid_value(schema))) for name, schema in fields.items()
             if schema.get("type") != "default" or draw(st.booleans())]
    names = list(fields)
    for _ in range(draw(st.integers(1, 3))):
        change = draw(st.sampled_from(["bad", "bad", "bad", "drop", "unknown", "duplicate"]))
        if change == "bad":
            name = draw(st.sampled_from(names))
            value = draw(bad_value(fields[name]))
            pairs = [(k, v) for k, v in pairs if k != name] + [(name, value)]
        elif change == "drop" and pairs:
            pairs.pop(draw(st.integers(0, len(pairs) - 1)))
        elif change == "unknown":
            pairs.append((draw(st.sampled_from(["x", "V", "src2", "", "\u00e9", names[0].upper()])),
                          draw(st.sampled_from(["1", "NaN", "1e400", "null", '"-"']))))
        elif change == "duplicate":
            name = draw(st.sampled_from(names))
            value = draw(st.one_of(valid_value(fields[name]), bad_value(fields[name])))
            at = draw(st.integers(0, len(pairs)))
            pairs.insert(at, (name, value))
    pairs = draw(st.permutations(pairs)) if draw(st.booleans()) else pairs
    return _join(pairs, draw(st.booleans()))
