"""schemas/fast_decode.py against pydantic, value by value: for every document, the fast decoder
accepts exactly when pydantic's validate_json does (or defers), and then yields the same values
(same types, enum members, nested models, field order and fields set). Documents are generated
from each model's core schema (tests/schema_documents.py): valid, mutated, arbitrary JSON and
bytes. Valid documents must be taken by the fast path itself, so the agreement is not pydantic
agreeing with itself. And per model, a sample of each rule refused by the generated decoder."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from meterstream.schemas import LimitEvent, LogRecord, RejectedLine, UsageWindow, encode, fast_decode
from meterstream.schemas.fast_decode import (
    FastDecoder,
    FastPathUnavailable,
    fast_decoder,
    python_pattern,
)
from meterstream.schemas.records import SourcePosition
from meterstream.schemas.types import INT32_MAX, Text
from meterstream.schemas.wire import WireError, decode
from tests.examples import EXAMPLES
from tests.schema_documents import fields_of, mutated_document, valid_document

MODELS = [LogRecord, UsageWindow, LimitEvent, RejectedLine, SourcePosition]
ALL = sorted({type(v) for v in EXAMPLES.values()} | set(MODELS), key=lambda m: m.__name__)


def _same(got: Any, ref: Any, where: str) -> None:
    """Equal values of equal types; a model (or its Struct) field by field."""
    if isinstance(ref, BaseModel):
        for name in type(ref).model_fields:
            _same(getattr(got, name), getattr(ref, name), f"{where}.{name}")
        return
    assert type(got) is type(ref) and got == ref, (where, got, ref)


def _errors(exc: ValidationError) -> list[tuple]:
    return [(e["type"], e["loc"], e["msg"], repr(e["input"])) for e in exc.errors(include_url=False)]


def agree(model: type[Any], payload: bytes | str, *, must_be_fast: bool = False) -> bool:
    """Asserts the fast decoder's three entry points agree with pydantic on ``payload``;
    returns whether pydantic accepts it."""
    decoder = fast_decoder(model)
    assert decoder is not None, model.__name__
    try:
        ref: Any = model.__pydantic_validator__.validate_json(payload)
        ref_error = None
    except ValidationError as exc:
        ref, ref_error = None, _errors(exc)
    got = decoder.fast(payload)
    values = decoder.values(payload)
    if ref is None:
        assert got is None and values is None, ("accepted what pydantic refuses", payload)
        with pytest.raises(ValidationError) as info:
            decoder.decode(payload)
        assert _errors(info.value) == ref_error  # the error is pydantic's own
        return False
    # a payload holding the six characters \u0000 anywhere is left to pydantic (the one shape the
    # fast path defers although valid: see _decode_then)
    if must_be_fast and "\\u0000" not in (payload if isinstance(payload, str) else payload.decode()):
        assert got is not None and values is not None, ("deferred a valid value", payload)
    for result in (got, decoder.decode(payload)):
        if result is not None:
            assert type(result) is model and result == ref
            assert list(result.__dict__) == list(ref.__dict__)
            assert result.model_fields_set == ref.model_fields_set
            _same(result, ref, model.__name__)
            try:
                written = encode(ref)
            except TypeError:  # a value the model takes and orjson cannot write (an int beyond 64 bits)
                with pytest.raises(TypeError):
                    encode(result)
            else:
                assert encode(result) == written
    if values is not None:
        _same(values, ref, model.__name__)
        try:
            written = encode(ref)
        except TypeError:
            pass
        else:  # wire.encode writes the fast decoder's Struct as it writes the model
            assert encode(values) == written
    return True


def _documents(model: type[BaseModel]) -> st.SearchStrategy[str]:
    return st.one_of(valid_document(fields_of(model)), mutated_document(fields_of(model)))


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_and_valid_documents_agree(model: type[BaseModel], data: st.DataObject) -> None:
    document = data.draw(_documents(model))
    as_bytes = data.draw(st.booleans())
    agree(model, document.encode("utf-8", "surrogatepass") if as_bytes else document)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_valid_documents_take_the_fast_path(model: type[BaseModel], data: st.DataObject) -> None:
    document = data.draw(valid_document(fields_of(model)))
    # a field function or a model validator may still refuse a generated value (event_type,
    # a minute boundary, billable <= requests): pydantic decides; what it accepts, msgspec took
    agree(model, document.encode(), must_be_fast=True)


@pytest.mark.parametrize("model", ALL, ids=lambda m: m.__name__)
def test_every_example_round_trips_through_the_fast_path(model: type[Any]) -> None:
    if model not in MODELS and fast_decoder(model) is None:
        pytest.skip(f"{model.__name__} holds rules the generator does not carry: pydantic decodes it")
    for value in [v for v in EXAMPLES.values() if type(v) is model] or []:
        assert agree(model, encode(value), must_be_fast=True)


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                     lambda inner: (st.lists(inner, max_size=4)
                                    | st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                     max_leaves=20)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@settings(max_examples=300, deadline=None)
@given(value=_json)
def test_arbitrary_json_agrees(model: type[BaseModel], value: object) -> None:
    agree(model, json.dumps(value).encode())


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_arbitrary_objects_of_the_fields_agree(model: type[BaseModel], data: st.DataObject) -> None:
    names = list(fields_of(model))
    obj = data.draw(st.dictionaries(st.sampled_from(names), _json, max_size=len(names)))
    agree(model, json.dumps(obj).encode())


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=300))
@example(raw=b"\xef\xbb\xbf{}")
@example(raw=b'{"v":1}\x00')
def test_arbitrary_bytes_agree(model: type[BaseModel], raw: bytes) -> None:
    agree(model, raw)


@pytest.mark.parametrize("name", ["LogRecord", "UsageWindow", "LimitEvent", "RejectedLine"])
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_cut_and_spliced_values_agree(name: str, data: st.DataObject) -> None:
    raw = encode(EXAMPLES[name])
    at = data.draw(st.integers(0, len(raw)))
    insert = data.draw(st.sampled_from([b"", b'"', b"}", b"{", b"\\", b"\\u0000", b"\x00", b"\xff", b",", b" ",
                                        b'"x":1,', b"\\ud800", b"1e400", b"NaN"]))
    cut = data.draw(st.integers(at, len(raw)))
    agree(type(EXAMPLES[name]), raw[:at] + insert + raw[cut:])


# ---- a sample of each rule, refused by the generated decoder itself -------------------------

def _changed(name: str, **changes: object) -> bytes:
    obj = orjson.loads(encode(EXAMPLES[name]))
    for key, value in changes.items():
        if value is _ABSENT:
            obj.pop(key, None)
        elif "." in key:
            outer, inner = key.split(".")
            obj[outer][inner] = value
        else:
            obj[key] = value
    return orjson.dumps(obj)


_ABSENT = object()
RULES: list[tuple[str, dict[str, Any], str]] = [
    # LogRecord: types, bounds, lengths, NUL, patterns, enums, field functions, nested, unknown, missing, version
    ("LogRecord", {"ts": 946_684_799_999}, "ts"), ("LogRecord", {"ts": 4_102_444_800_000}, "ts"),
    ("LogRecord", {"ts": "17640720001230"}, "ts"), ("LogRecord", {"request_id": ""}, "request_id"),
    ("LogRecord", {"request_id": "r" * 129}, "request_id"), ("LogRecord", {"request_id": "a\x00b"}, "request_id"),
    ("LogRecord", {"client_ip": "1" * 65}, "client_ip"), ("LogRecord", {"api_key_fp": 0}, "api_key_fp"),
    ("LogRecord", {"api_key_fp": 2**31}, "api_key_fp"), ("LogRecord", {"service_type": 4}, "service_type"),
    ("LogRecord", {"network": 9}, "network"), ("LogRecord", {"server_id": 32768}, "server_id"),
    ("LogRecord", {"fe_type": 0}, "fe_type"), ("LogRecord", {"traffic_type": None}, "traffic_type"),
    ("LogRecord", {"event_type": 9}, "event_type"), ("LogRecord", {"key_metadata": "k" * 65}, "key_metadata"),
    ("LogRecord", {"status": 1000}, "status"), ("LogRecord", {"status": 200.5}, "status"),
    ("LogRecord", {"bytes_sent": 2**53}, "bytes_sent"), ("LogRecord", {"path": "p" * 11}, "path"),
    ("LogRecord", {"TR": -2}, "TR"), ("LogRecord", {"Ta": 2**31}, "Ta"),
    ("LogRecord", {"backend_id": -1}, "backend_id"),
    ("LogRecord", {"termination_state": "-----"}, "termination_state"),
    ("LogRecord", {"config_hex": "0g"}, "config_hex"), ("LogRecord", {"config_hex": "0a\n"}, "config_hex"),
    ("LogRecord", {"src.offset": -1}, "src.offset"), ("LogRecord", {"src.stream": ""}, "src.stream"),
    ("LogRecord", {"src.stream": "s\x00"}, "src.stream"), ("LogRecord", {"src.x": 1}, "src.x"),
    ("LogRecord", {"src": "edge:1"}, "src"), ("LogRecord", {"extra": 1}, "extra"),
    ("LogRecord", {"status": _ABSENT}, "status"), ("LogRecord", {"v": 99}, "v"),
    # UsageWindow: a field function (minute boundary), the model validator, strict counts
    ("UsageWindow", {"window_start": 1_764_072_000_001}, "window_start"),
    ("UsageWindow", {"billable": 11}, ""), ("UsageWindow", {"requests": 10.0}, "requests"),
    ("UsageWindow", {"revision": 0}, "revision"), ("UsageWindow", {"final": "maybe"}, "final"),
    ("UsageWindow", {"customer_id": INT32_MAX + 1}, "customer_id"), ("UsageWindow", {"ta_sum_ms": 2**63}, "ta_sum_ms"),
    # LimitEvent: str enum, text bounds, int64 bounds
    ("LimitEvent", {"kind": "RATE_EXCEEDED"}, "kind"), ("LimitEvent", {"event_id": "e" * 201}, "event_id"),
    ("LimitEvent", {"observed": -(2**63)}, "observed"), ("LimitEvent", {"window": ""}, "window"),
    ("LimitEvent", {"region_id": 2048}, "region_id"), ("LimitEvent", {"api_key_fp": 0}, "api_key_fp"),
    # RejectedLine: a literal, a code pattern, a nested optional model
    ("RejectedLine", {"raw_encoding": "latin-1"}, "raw_encoding"), ("RejectedLine", {"reason": "Not_a_code"}, "reason"),
    ("RejectedLine", {"reason": "code\n"}, "reason"),
    ("RejectedLine", {"position": {"stream": "s"}}, "position.offset"),
    ("RejectedLine", {"raw_truncated": 2}, "raw_truncated"), ("RejectedLine", {"detail": "d" * 1001}, "detail"),
]


@pytest.mark.parametrize(("name", "changes", "field"), RULES, ids=[f"{r[0]}-{'-'.join(r[1])}" for r in RULES])
def test_each_rule_is_refused_by_the_generated_decoder(name: str, changes: dict, field: str) -> None:
    model = type(EXAMPLES[name])
    decoder = fast_decoder(model)
    assert decoder is not None
    payload = _changed(name, **changes)
    # msgspec itself or the model's function refuses: the fast path defers...
    assert decoder.fast(payload) is None and decoder.values(payload) is None
    # ...and pydantic names the field, as schemas.wire.decode reports it
    with pytest.raises(WireError) as info:
        decode(model, payload)
    assert info.value.field == field
    agree(model, payload)


def test_lax_values_pydantic_accepts_are_deferred_not_refused() -> None:
    """msgspec is stricter than pydantic's lax mode: what it refuses, pydantic decides."""
    decoder = fast_decoder(LogRecord)
    assert decoder is not None
    for changes in ({"status": "200"}, {"status": 200.0}, {"TR": "-1"}, {"service_type": "1"},
                    {"ts": 1.764072000123e12}):
        payload = _changed("LogRecord", **changes)
        assert decoder.fast(payload) is None
        assert decoder.decode(payload) == LogRecord.__pydantic_validator__.validate_json(payload)


def test_version_rule_runs_the_models_own_function() -> None:
    """``v`` is checked by WireModel's validator, run on the decoded value (not by a copy of it);
    an absent ``v`` takes the default without it, as pydantic does."""
    decoder = fast_decoder(LogRecord)
    assert decoder is not None
    current = LogRecord.model_fields["v"].default
    assert decoder.fast(_changed("LogRecord", v=current)) is not None
    absent = decoder.fast(_changed("LogRecord", v=_ABSENT))
    assert absent is not None and absent.v == current and "v" not in absent.model_fields_set
    for version in range(-1, 5):  # whatever the model reads (v1, and v2 where LogRecord is v2)
        agree(LogRecord, _changed("LogRecord", v=version))


def test_drop_in_decode_keeps_wire_errors() -> None:
    """fast_decode.decode / decode_values: schemas.wire.decode's contract (its WireError, its
    message) for whatever the fast path defers."""
    for payload in (b"\xff{", _changed("LogRecord", status=1000), _changed("LogRecord", request_id="a\x00"),
                    _changed("LogRecord", extra=1)):
        for entry in (fast_decode.decode, fast_decode.decode_values):
            with pytest.raises(WireError) as got:
                entry(LogRecord, payload)
            with pytest.raises(WireError) as ref:
                decode(LogRecord, payload)
            assert str(got.value) == str(ref.value)
    raw = encode(EXAMPLES["LogRecord"])
    assert fast_decode.decode(LogRecord, raw) == EXAMPLES["LogRecord"]
    assert encode(fast_decode.decode_values(LogRecord, raw)) == raw
    lax = _changed("LogRecord", status="200")  # deferred, and wire.decode takes it
    assert fast_decode.decode(LogRecord, lax) == fast_decode.decode_values(LogRecord, lax) == decode(LogRecord, lax)


def test_attribute_access_and_properties_on_values() -> None:
    decoder = fast_decoder(LogRecord)
    assert decoder is not None
    values = decoder.values(encode(EXAMPLES["LogRecord"]))
    assert values.is_billable == EXAMPLES["LogRecord"].is_billable
    assert values.src.stream == EXAMPLES["LogRecord"].src.stream


# ---- what the generator refuses to carry: the model is then decoded by pydantic alone --------

def test_models_with_rules_it_does_not_carry_have_no_fast_decoder() -> None:
    class Before(BaseModel):
        model_config = ConfigDict(extra="forbid")
        a: int

        @field_validator("a", mode="before")
        @classmethod
        def _twice(cls, value: object) -> object:
            return value

    class Aliased(BaseModel):
        a: int = Field(alias="b")

    class Floaty(BaseModel):
        a: float

    class Unioned(BaseModel):
        a: int | str

    class Stripped(BaseModel):
        model_config = ConfigDict(str_strip_whitespace=True)
        a: str

    class Flagged(BaseModel):
        a: str = Field(pattern=r"(?i)^abc$")

    class Huge(BaseModel):
        a: int = Field(le=2**64)  # msgspec bounds are int64

    class Listed(BaseModel):
        a: list[int] = []

    for model in (Before, Aliased, Floaty, Unioned, Stripped, Flagged, Huge, Listed):
        assert fast_decoder(model) is None, model.__name__
        with pytest.raises(FastPathUnavailable):
            FastDecoder(model)


def test_rust_patterns_become_python_patterns_of_the_same_meaning() -> None:
    assert python_pattern(r"^[^\x00]*$") == r"\A[^\x00]*\Z"
    assert python_pattern(r"^[0-9a-fA-F]*$") == r"\A[0-9a-fA-F]*\Z"
    for unknown in (r"^\d+$", r"[[:alpha:]]", r"[a-z&&[^x]]", r"(?i)a", r"\bword", r"[]a]", "\\"):
        with pytest.raises(FastPathUnavailable):
            python_pattern(unknown)


def test_a_text_model_defers_nul_and_keeps_other_escapes() -> None:
    class Note(BaseModel):
        model_config = ConfigDict(extra="forbid")
        text: Text

    decoder = fast_decoder(Note)
    assert decoder is not None
    assert decoder.fast(b'{"text":"a\\u0000"}') is None  # pydantic refuses it
    assert decoder.fast(b'{"text":"a\\\\u0000"}') is None  # a backslash then u0000: deferred, pydantic accepts
    assert agree(Note, b'{"text":"a\\\\u0000"}')
    assert decoder.fast(b'{"text":"a\\n\\u00e9"}') == Note(text="a\n\u00e9")


def test_values_decoder_without_some_fields() -> None:
    """``values_decoder(omit=…, ignore_unknown=True)`` (ingest's line, without ``v`` and ``src``):
    the Struct lacks the omitted fields, a payload holding them has them ignored (as any unknown
    key), the model's values and rules are otherwise those of the whole model, and what pydantic
    must decide raises."""
    record = EXAMPLES["haproxy.logs"] if "haproxy.logs" in EXAMPLES else next(
        v for v in EXAMPLES.values() if isinstance(v, LogRecord))
    struct, decode_part = fast_decode.values_decoder(LogRecord, omit=frozenset({"v", "src"}), ignore_unknown=True)
    assert tuple(struct.__struct_fields__) == tuple(n for n in LogRecord.model_fields if n not in ("v", "src"))
    whole = orjson.loads(encode(record))
    part = {k: v for k, v in whole.items() if k not in ("v", "src")}
    for payload in (part, {**part, "v": 7, "src": {"x": 1}, "unknown": [1]}):
        got = decode_part(orjson.dumps(payload))
        for name in struct.__struct_fields__:
            _same(getattr(got, name), getattr(record, name), name)
    for bad in ({**part, "api_key_fp": 0}, {**part, "status": 1000}, {**part, "path": "x" * 11},
                {**part, "client_ip": "a\u0000"}, {k: v for k, v in part.items() if k != "ts"}):
        with pytest.raises(Exception):  # noqa: B017, PT011 - whatever the decoder raises: pydantic decides
            decode_part(orjson.dumps(bad))
    with pytest.raises(FastPathUnavailable):
        fast_decode.values_decoder(LogRecord, omit=frozenset({"no_such_field"}))


def test_a_patterns_memory_of_matching_values_is_bounded_and_never_admits_a_mismatch() -> None:
    import re  # noqa: PLC0415

    check = fast_decode._pattern_check(re.compile(r"\A[0-9a-f]*\Z").search)
    memory = next(c.cell_contents for c in check.__closure__ or () if isinstance(c.cell_contents, dict))
    for i in range(3 * fast_decode._MATCHED_MAX):
        assert check(f"{i:x}") == f"{i:x}"
        assert len(memory) <= fast_decode._MATCHED_MAX
    assert check("00000000") == "00000000" and check("00000000") == "00000000"
    for bad in ("0000000g", "zz", "00000000\n"):
        with pytest.raises(fast_decode._Defer):
            check(bad)
        assert bad not in memory
