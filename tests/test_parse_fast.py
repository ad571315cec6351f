"""The JSON line's fast path (ingest/parse_json_fast.py) agrees with the reference path (the
parser's JSON reading + the LogRecord model), record by record, on a hypothesis-generated
corpus of valid and invalid lines: same accept or reject, same reason class, same values, and
the same key and value bytes on the topic. Pure: no services.

The fast path accepts or defers; the parser then runs the reference path on what it deferred.
So two things are checked on every line: whatever the fast path accepted is exactly what the
reference path makes of the line (``fast_agrees``), and the parser's answer with the fast path
equals its answer without it (``same_outcome``). Valid lines as HAProxy writes them must be
taken by the fast path, so that the agreement is not the reference path agreeing with itself.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import field_validator, model_validator

from meterstream.ingest.parse_json_fast import FastJson, FastPathUnavailable, field_schemas
from meterstream.ingest.parser import Encoded, Parser, Rejected
from meterstream.schemas.apikeys import fingerprint_to_hex
from meterstream.schemas.enums import VALID_EVENT_TYPES, FeType, Network, ServiceType, TrafficType
from meterstream.schemas.records import LogRecord, SourcePosition
from meterstream.schemas.topics import key_of
from meterstream.schemas.types import EPOCH_MS_MAX, EPOCH_MS_MIN, INT32_MAX
from meterstream.schemas.wire import encode
from tests.test_parser import BADREQ_JSON, JSON_LINE, RECORD_LINE, RECORD_LINE_BADREQ, RECORD_LINE_NO_KEY

STREAM = "edge1:2049:77:ab12cd34"
FAST = Parser()
REFERENCE = Parser(fast=False)
assert FAST.fast is not None, "the fast path must build for today's LogRecord"
FIELDS = [f for f in LogRecord.model_fields if f not in ("v", "src")]


def reference(line: bytes, offset: int) -> Encoded | Rejected:
    return REFERENCE.encoded(line, SourcePosition(stream=STREAM, offset=offset))


def fast_agrees(line: bytes, offset: int = 4096) -> tuple[bool, Encoded | Rejected]:
    """Whether the fast path took the line; asserts that what it took is the reference's record."""
    expected = reference(line, offset)
    assert FAST.fast is not None
    taken = FAST.fast.encoded(line, STREAM, offset)
    if taken is not None:
        assert isinstance(expected, Encoded), (line, expected)
        key, value, ts = taken
        assert value == expected.value, (line, value, expected.value)  # same bytes: same values, same order
        assert key == expected.key == key_of(expected.record)
        assert ts == expected.record.ts
        assert LogRecord.model_validate_json(value) == expected.record
    return taken is not None, expected


def same_outcome(line: bytes, offset: int = 4096) -> bool:
    """The parser with the fast path answers as without it: accept or reject, reason, values."""
    took, expected = fast_agrees(line, offset)
    got = FAST.encoded_at(line, STREAM, offset)
    assert type(got) is type(expected), (line, got, expected)
    if isinstance(expected, Rejected):
        assert got == expected  # reason class and detail
    else:
        assert isinstance(got, Encoded)
        assert (got.key, got.value, got.ts) == (expected.key, expected.value, expected.ts)
        assert got.record == expected.record
    return took


# -- lines as HAProxy writes them (deploy/haproxy/haproxy.cfg's log-format), valid ----------------
def _quoted(value: object) -> st.SearchStrategy[object]:
    """A number as HAProxy's config logs it: quoted (a variable) or bare (%ST, timers)."""
    return st.sampled_from([value, str(value)])


@st.composite
def valid_objects(draw: st.DrawFn, absent: bool = False) -> dict[str, Any]:
    """A JSON object of a request the model accepts. ``absent``: optional samples may be "-"."""
    ms = draw(st.integers(EPOCH_MS_MIN, EPOCH_MS_MAX))
    ts = draw(st.sampled_from([
        float(f"{ms // 1000}.{ms % 1000:03d}"), f"{ms // 1000}.{ms % 1000:03d}", ms, (ms // 1000),
        f"{ms // 1000}"]))
    text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12)
    obj: dict[str, Any] = {
        "ts": ts,
        "request_id": draw(text),
        "client_ip": draw(st.sampled_from(["10.1.2.3", "::1", "2001:db8::7", "192.168.0.255"])),
        "api_key_fp": fingerprint_to_hex(draw(st.integers(-(2**31), 2**31 - 1).filter(bool))),
        "service_type": draw(st.sampled_from(list(ServiceType)).flatmap(lambda v: _quoted(int(v)))),
        "network": draw(st.sampled_from(list(Network)).flatmap(lambda v: _quoted(int(v)))),
        "server_id": draw(st.integers(0, 32767).flatmap(_quoted)),
        "fe_type": draw(st.sampled_from(list(FeType)).flatmap(lambda v: _quoted(int(v)))),
        "traffic_type": draw(st.sampled_from(list(TrafficType)).flatmap(lambda v: _quoted(int(v)))),
        "event_type": draw(st.sampled_from(sorted(VALID_EVENT_TYPES)).flatmap(_quoted)),
        "key_metadata": draw(text),
        "status": draw(st.integers(-1, 999).flatmap(_quoted)),
        "bytes_sent": draw(st.integers(0, 2**53 - 1).flatmap(lambda v: st.sampled_from([v, str(v), f"+{v}"]))),
        "path": draw(st.text(max_size=30).filter(lambda p: "\x00" not in p[:10])),
        **{t: draw(st.integers(-1, INT32_MAX).flatmap(_quoted)) for t in ("TR", "Tw", "Tc", "Tr", "Ta")},
        "backend_id": draw(st.integers(0, INT32_MAX).flatmap(_quoted)),
        "termination_state": draw(st.sampled_from(["----", "CD--", "SH--", "PR--", "cD"])),
        "config_hex": draw(st.text("0123456789abcdefABCDEF", max_size=64)),
    }
    if "customer_id" in LogRecord.model_fields:  # HAProxy's hint (LogRecord v2)
        obj["customer_id"] = draw(st.integers(1, INT32_MAX).flatmap(_quoted))
    if draw(st.booleans()):
        obj["api_key_fp"] = obj["api_key_fp"].upper()
    if absent:
        for name in draw(st.sets(st.sampled_from(FIELDS))):
            obj[name] = draw(st.sampled_from(["-", ""]))
    for name in draw(st.sets(st.sampled_from(FIELDS), max_size=3)):
        obj.pop(name, None)
    if draw(st.booleans()):  # a newer config logs more
        extra = st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5)
        obj[draw(st.sampled_from(["extra", "srv_queue", "tls"]))] = draw(extra)
    keys = draw(st.permutations(list(obj)))
    return {k: obj[k] for k in keys}


def written(obj: dict[str, Any], how: str) -> bytes:
    if how == "haproxy":  # HAProxy's json(utf8s) escapes '/' and non-ASCII
        return json.dumps(obj, separators=(",", ":")).replace("/", "\\/").encode()
    if how == "orjson":
        return orjson.dumps(obj)
    return json.dumps(obj, ensure_ascii=False).encode() + b"\r"


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_objects(), st.sampled_from(["haproxy", "orjson", "spaced"]), st.integers(0, 2**40))
def test_valid_lines_take_the_fast_path_and_agree(obj: dict[str, Any], how: str, offset: int) -> None:
    line = written(obj, how)
    took = same_outcome(line, offset)
    # a line of values the model takes, none "-" or "" (an absent sample): the fast path's own case
    expected = reference(line, offset)
    if isinstance(expected, Encoded) and "request_id" in obj and not {"-", ""} & {v for v in obj.values()
                                                                                   if isinstance(v, str)}:
        assert took, line


@settings(max_examples=400, deadline=None)
@given(valid_objects(absent=True), st.sampled_from(["haproxy", "orjson", "spaced"]))
def test_absent_samples_agree(obj: dict[str, Any], how: str) -> None:
    same_outcome(written(obj, how))


# -- the record's line (what deploy/haproxy/haproxy.cfg writes now): tier 1 ------------------------
RECORD_TIER = FastJson(classic=False)  # the record's line alone: what it takes, tier 1 took


def record_tier_agrees(line: bytes, offset: int = 4096) -> bool:
    """Whether tier 1 took the line; asserts that what it took is the reference's record."""
    expected = reference(line, offset)
    taken = RECORD_TIER.encoded(line, STREAM, offset)
    if taken is not None:
        assert isinstance(expected, Encoded), (line, expected)
        assert taken == (expected.key, expected.value, expected.ts), (line, taken, expected)
    return taken is not None


@st.composite
def record_objects(draw: st.DrawFn) -> dict[str, Any]:
    """A request as the record's line writes it: the reference record's own values, but ``v``
    and ``src``; optionally without the keys whose value is the default (a shorter config)."""
    obj = draw(valid_objects())
    expected = reference(json.dumps(obj).encode(), 0)
    assume(isinstance(expected, Encoded))
    assert isinstance(expected, Encoded)
    values = orjson.loads(expected.value)
    del values["v"], values["src"]
    defaults = [n for n in FIELDS if not LogRecord.model_fields[n].is_required()
                and LogRecord.model_fields[n].default == values[n]]
    for name in draw(st.sets(st.sampled_from(defaults))) if defaults else ():
        del values[name]
    return values


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(record_objects(), st.sampled_from(["haproxy", "orjson"]), st.integers(0, 2**40))
def test_the_record_line_takes_tier_1_and_agrees(obj: dict[str, Any], how: str, offset: int) -> None:
    """The record's line, in HAProxy's key order (``ts`` first), with "/" escaped as HAProxy's
    json(utf8s) does or not: tier 1 takes it, with the reference path's key, value and time."""
    line = written(obj, how)
    assert record_tier_agrees(line, offset), line
    assert same_outcome(line, offset)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(record_objects(), st.data())
def test_the_record_line_changed_in_any_way_agrees(obj: dict[str, Any], data: st.DataObject) -> None:
    """Keys in any order, a forged ``v`` or ``src``, unknown keys, duplicate keys, absent samples
    (null, "-", "", "\u002d"), any value of a field: tier 1 takes it exactly as the reference
    path does, or defers."""
    changes = data.draw(st.dictionaries(st.sampled_from([*FIELDS, "v", "src", "extra"]),
                                        st.sampled_from(EXTREMES) | JSON_VALUES | st.sampled_from(["-", "", None]),
                                        max_size=3))
    for value in changes.values():
        assume(not (isinstance(value, float) and not math.isfinite(value)))
    obj = {**obj, **changes}
    keys = data.draw(st.permutations(list(obj))) if data.draw(st.booleans()) else list(obj)
    line = json.dumps({k: obj[k] for k in keys}, separators=(",", ":")).encode()
    if data.draw(st.booleans()):  # JSON's other spelling of "-"
        line = line.replace(b'"-"', b'"\\u002d"')
    if data.draw(st.booleans()):  # a duplicate key, the last one winning on both paths
        name = data.draw(st.sampled_from(FIELDS))
        line = line[:-1] + b',"' + name.encode() + b'":' + json.dumps(data.draw(st.sampled_from(EXTREMES))).encode() \
            + b"}"
    record_tier_agrees(line)
    same_outcome(line)


def test_a_forged_position_or_version_is_never_taken() -> None:
    """``src`` and ``v`` are ingest's: the line's are ignored on both paths."""
    line = RECORD_LINE[:-1].encode() + b',"v":1,"src":{"stream":"elsewhere","offset":5}}'
    assert orjson.loads(line)["src"]  # the line holds them
    assert record_tier_agrees(line, 77)
    _, value, _ = RECORD_TIER.encoded(line, STREAM, 77) or (b"", b"", 0)
    record = LogRecord.model_validate_json(value)
    assert (record.v, record.src) == (LogRecord.SCHEMA_VERSION, SourcePosition(stream=STREAM, offset=77))


def test_the_benchmarks_record_lines_take_tier_1(tmp_path) -> None:  # noqa: ANN001
    from bench.ingest import generate  # noqa: PLC0415 - the benchmark's own lines

    path = tmp_path / "h.log"
    generate(path, 2000, "record")
    for offset, line in enumerate(path.read_bytes().splitlines()):
        assert record_tier_agrees(line, offset * 700)


# -- invalid lines --------------------------------------------------------------------------------
EXTREMES: list[Any] = [2**31, -(2**31) - 1, 2**53, 2**63, 2**64, 10**24, -1, 0, 1.5, -0.0, 1e300, True, False, None,
                       [], {}, [1], {"a": 1}, "", "-", "--", " 1", "1 ", "0x10", "1e3", "+", "٣", "\x00", "a\x00",
                       "x" * 200, "\u002d", "\ud7ff", "9" * 30]
RAW_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "123456789012345678901234567890", "1.0e2",
               "-0", "0.1e-400"]
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                        max_size=3), max_leaves=8)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_objects(), st.sampled_from([*FIELDS, "v", "src", "extra"]),
       st.sampled_from(EXTREMES) | JSON_VALUES)
def test_one_field_out_of_its_range_or_type(obj: dict[str, Any], field: str, value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        value = 1e308  # stdlib json would write NaN; raw non-finite numbers are the next test's
    same_outcome(json.dumps({**obj, field: value}).encode())


@settings(max_examples=300, deadline=None)
@given(valid_objects(), st.sampled_from([*FIELDS, "v", "src", "extra"]), st.sampled_from(RAW_NUMBERS))
def test_numbers_json_readers_disagree_on(obj: dict[str, Any], field: str, number: str) -> None:
    """NaN, Infinity, 1e400 and integers beyond 64 bits, in a field or an unknown key: both
    paths read JSON with the same parser, so they take or refuse them alike."""
    line = json.dumps({**obj, field: 0}).encode().replace(f'"{field}": 0'.encode(), f'"{field}": {number}'.encode())
    same_outcome(line)


@settings(max_examples=300, deadline=None)
@given(valid_objects(), st.sampled_from([*FIELDS, "v", "src"]), st.sampled_from(EXTREMES) | JSON_VALUES,
       st.booleans())
def test_duplicate_keys(obj: dict[str, Any], field: str, value: Any, first: bool) -> None:
    """JSON's last duplicate wins, on both paths (HAProxy's config does not repeat a key, a
    hostile writer may)."""
    if isinstance(value, float) and not math.isfinite(value):
        value = 0
    good = json.dumps(obj)
    extra = f'"{field}": {json.dumps(value)}'
    line = ("{" + extra + ", " + good[1:]) if first else (good[:-1] + ", " + extra + "}")
    same_outcome(line.encode())


@settings(max_examples=400, deadline=None)
@given(valid_objects(), st.data())
def test_cut_spliced_and_mangled_lines(obj: dict[str, Any], data: st.DataObject) -> None:
    line = json.dumps(obj).encode()
    cut = data.draw(st.integers(0, len(line)))
    noise = data.draw(st.binary(max_size=12) | st.sampled_from(
        [b"}", b"{", b'"', b"\\", b",", b'"-"', b'""', b"\\u002d", b'\\"', b"\n", b"\x00", b"\xff", b"\xed\xa0\x80",
         b'\\ud800', b'"src":{"stream":"x","offset":1},', b" ", b"\r"]))
    how = data.draw(st.sampled_from(["insert", "replace", "cut", "prefix", "suffix"]))
    mangled = {
        "insert": line[:cut] + noise + line[cut:],
        "replace": line[:cut] + noise + line[cut + len(noise):],
        "cut": line[:cut],
        "prefix": noise + line,
        "suffix": line + noise,
    }[how]
    same_outcome(mangled)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([*FIELDS, "v", "src", "x"]), JSON_VALUES | st.sampled_from(EXTREMES)))
def test_any_object_of_the_fields(obj: dict[str, Any]) -> None:
    obj = {k: (0 if isinstance(v, float) and not math.isfinite(v) else v) for k, v in obj.items()}
    same_outcome(json.dumps(obj).encode())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes(raw: bytes) -> None:
    same_outcome(b"{" + raw)
    same_outcome(raw)


@pytest.mark.parametrize("line", [
    RECORD_LINE, RECORD_LINE_NO_KEY, RECORD_LINE_BADREQ,
    RECORD_LINE.replace('"api_key_fp":527440670', '"api_key_fp":"1F700A9E"'),
    RECORD_LINE.replace('"api_key_fp":527440670', '"api_key_fp":0'),
    RECORD_LINE.replace('"api_key_fp":527440670', '"api_key_fp":2147483648'),
    RECORD_LINE.replace('"api_key_fp":527440670', '"api_key_fp":true'),
    RECORD_LINE.replace('"ts":1795673310675', '"ts":1795673310'),
    RECORD_LINE.replace('"customer_id":123456789', '"customer_id":-'),
    RECORD_LINE.replace('"key_metadata":"S"', '"key_metadata":-'),
    JSON_LINE, BADREQ_JSON,
    JSON_LINE.replace('"path":"v1\\/fetch_k"', '"path":"-"'),
    JSON_LINE.replace('"path":"v1\\/fetch_k"', '"path":"\\u002d"'),
    JSON_LINE.replace('"path":"v1\\/fetch_k"', '"path":"v1\\/fetch_key\\/abc"'),
    JSON_LINE.replace('"path":"v1\\/fetch_k"', '"path":12345678901234'),
    JSON_LINE.replace('"key_metadata":"S"', '"key_metadata":"\\u002d"'),
    JSON_LINE.replace('"request_id":"7F000001:9296_7F000001:4E0C_6B0710EA_0000:17F7"', '"request_id":"-"'),
    JSON_LINE.replace('"client_ip":"127.0.0.1"', '"client_ip":""'),
    JSON_LINE.replace('"config_hex":"00000000"', '"config_hex":""'),
    JSON_LINE[:-1] + ',"src":{"stream":"forged","offset":1}}',
    JSON_LINE[:-1] + ',"v":1}',
    JSON_LINE[:-1] + ',"v":2}',
    JSON_LINE[:-1] + ',"x":NaN}',
    JSON_LINE[:-1] + ',"x":' + "[" * 600 + "]" * 600 + "}",
    JSON_LINE + " ",
    " " + JSON_LINE,
    JSON_LINE + "}",
    "<134>Nov 25 16:50:01 edge1 haproxy[1234]: " + JSON_LINE,
    "<134>1 2026-11-25T16:50:01.123Z edge1 haproxy 1234 - - " + JSON_LINE,
])
def test_cases_by_hand(line: str) -> None:
    same_outcome(line.encode())


def test_haproxys_record_lines_take_tier_1() -> None:
    for line in (RECORD_LINE, RECORD_LINE_NO_KEY):
        assert record_tier_agrees(line.encode())
        assert record_tier_agrees(("<134>Nov 25 16:50:01 edge1 haproxy[1234]: " + line).encode()) is False
        encoded = FAST.encoded_at(("<134>Nov 25 16:50:01 edge1 haproxy[1234]: " + line).encode(), STREAM, 1)
        assert isinstance(encoded, Encoded) and encoded._record is None  # made by the fast path
    assert not record_tier_agrees(RECORD_LINE_BADREQ.encode())  # not JSON: the reference path reads it


def test_haproxys_lines_are_the_fast_paths() -> None:
    """The line the real HAProxy writes (tests/test_parser.py) takes the fast path, bare or
    behind a syslog header (which the parser strips first)."""
    assert fast_agrees(JSON_LINE.encode())[0]
    headed = ("<134>Nov 25 16:50:01 edge1 haproxy[1234]: " + JSON_LINE).encode()
    assert fast_agrees(headed)[0] is False  # not a bare JSON line: FastJson itself defers it
    encoded = FAST.encoded_at(headed, STREAM, 1)
    assert isinstance(encoded, Encoded) and encoded._record is None  # made by the fast path (no LogRecord)
    assert same_outcome(headed) is False


def test_the_benchmarks_lines(tmp_path) -> None:  # noqa: ANN001
    from bench.ingest import generate  # noqa: PLC0415 - the benchmark's own lines

    path = tmp_path / "h.log"
    generate(path, 2000, "classic")
    for offset, line in enumerate(path.read_bytes().splitlines()):
        assert fast_agrees(line, offset * 700)[0]


def test_a_model_with_rules_beyond_its_fields_turns_the_fast_path_off() -> None:
    """A model validator (or anything the per-field schemas do not hold) would be skipped by
    the fast path: it refuses to build rather than drift from the model."""

    class Checked(LogRecord):
        @model_validator(mode="after")
        def _rule(self) -> Checked:
            return self

    with pytest.raises(FastPathUnavailable):
        field_schemas(Checked)

    class FieldRule(LogRecord):  # a field validator is a per-field rule: carried along
        @field_validator("status")
        @classmethod
        def _odd(cls, status: int) -> int:
            if status == 418:
                raise ValueError("teapot")
            return status

    fields, _ = field_schemas(FieldRule)
    assert "status" in fields


def test_the_fast_path_writes_what_encode_writes() -> None:
    fast = FastJson()
    key, value, ts = fast.encoded(JSON_LINE.encode(), STREAM, 7) or (b"", b"", 0)
    record = LogRecord.model_validate_json(value)
    assert value == encode(record) and key == key_of(record) and ts == record.ts
    assert record.src == SourcePosition(stream=STREAM, offset=7)
    # a stream the model refuses is never written by the fast path
    assert fast.encoded(JSON_LINE.encode(), "", 7) is None
    assert fast.encoded(JSON_LINE.encode(), "bad\x00stream", 7) is None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(valid_objects().map(lambda o: json.dumps(o).encode()),
                          valid_objects(absent=True).map(lambda o: json.dumps(o).encode()),
                          st.sampled_from([JSON_LINE.encode(), BADREQ_JSON.encode(), b"", b"garbage", b"{",
                                           ("<134>Nov 25 16:50:01 edge1 haproxy[1234]: " + JSON_LINE).encode()]),
                          st.binary(max_size=40)).filter(lambda b: b"\n" not in b), max_size=30),
       st.integers(0, 2**40))
def test_a_run_of_lines_is_encoded_as_each_line_alone(run: list[bytes], offset: int) -> None:
    """Encoder.lines (the tailer's runs: the fast path in one loop, the reference path for what
    it defers) gives each line the message the reference path gives it alone, at its offset."""
    from meterstream import settings as settings_mod  # noqa: PLC0415
    from meterstream.ingest.pipeline import Encoder  # noqa: PLC0415

    fast, ref = Encoder(settings_mod.load()), Encoder(settings_mod.load())
    ref.parser, ref._fast = REFERENCE, None
    got = fast.lines(run, STREAM, offset, "/var/log/haproxy.log")
    at = offset
    assert len(got) == len(run)
    for line, message in zip(run, got, strict=True):
        expected = ref.line_at(line, STREAM, at, "/var/log/haproxy.log")
        assert (message.topic, message.key, message.timestamp_ms is None) == \
            (expected.topic, expected.key, expected.timestamp_ms is None)
        if message.topic == fast.logs_topic:
            assert (message.value, message.timestamp_ms) == (expected.value, expected.timestamp_ms)
        else:  # a dead letter: the same but for when it was made
            assert message.value is not None and expected.value is not None
            assert {**orjson.loads(message.value), "at": 0} == {**orjson.loads(expected.value), "at": 0}
        at += len(line) + 1
    assert fast.rejected_count == ref.rejected_count
