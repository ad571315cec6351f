"""Poison values (ingest): whatever a line holds, ingest turns it into a
record it can produce or a dead letter naming the field, inside the parser's guard; nothing
between the line and Kafka raises. (tests/test_tailer.py runs it through the real tailer.)"""

from __future__ import annotations

import json

import orjson
import pytest

from meterstream import settings as settings_mod
from meterstream.ingest.parser import Encoded, Parser, Rejected
from meterstream.ingest.pipeline import Encoder
from meterstream.schemas import LogRecord
from meterstream.schemas.apikeys import fingerprint_from_hex
from meterstream.schemas.records import RejectedLine, SourcePosition
from meterstream.schemas.wire import encode
from tests.test_parser import HTTPLOG, JSON_LINE

SRC = SourcePosition(stream="edge1:2049:77:ab12cd34", offset=4096)
EXTREMES = [2**31, -(2**31) - 1, 2**53, 2**63, -(2**63) - 1, 2**64, 10**24, str(10**24), "9" * 5000, "-" + "9" * 30,
            1e300, -1e300, 0.5, "1e400", "\x00", "a\x00b", "x" * 5000, [], {}, True]
FIELDS = sorted(set(LogRecord.model_fields) - {"v", "src"})


def classified(result: Encoded | Rejected) -> None:
    """A record that was written, or a rejection the parser made on purpose."""
    if isinstance(result, Rejected):
        assert not result.detail.startswith("unexpected "), result  # the parser's catch-all
        assert "cannot be encoded" not in result.detail, result  # the encoding guard's fallback
    else:
        assert orjson.loads(result.value) == orjson.loads(encode(result.record))


@pytest.mark.parametrize("field", FIELDS)
def test_an_extreme_value_in_any_json_field_is_produced_or_names_its_field(field: str) -> None:
    parser = Parser()
    for value in EXTREMES:
        obj = {**orjson.loads(JSON_LINE), field: value}
        result = parser.encoded(json.dumps(obj), SRC)  # stdlib json: integers beyond 64 bits too
        classified(result)
        if isinstance(result, Rejected) and result.reason == "invalid_field":
            assert result.detail.startswith(f"{field}:"), (value, result)


@pytest.mark.parametrize(("index", "field"), [(4, "TR"), (5, "status"), (6, "bytes_sent")])
@pytest.mark.parametrize("digits", [10, 20, 24, 5000])
def test_an_httplog_number_out_of_range_is_a_dead_letter_naming_its_field(index: int, field: str, digits: int) -> None:
    tokens = HTTPLOG.split(" ")
    tokens[index] = "9" * digits + ("/0/1/12/14" if field == "TR" else "")
    result = Parser().encoded(" ".join(tokens), SRC)
    if (field, digits) == ("bytes_sent", 10):  # 9,999,999,999 bytes: in range
        assert isinstance(result, Encoded) and result.record.bytes_sent == 9_999_999_999
        return
    assert isinstance(result, Rejected) and result.reason == "invalid_field", result
    assert result.detail.startswith(f"{field}:"), result


def test_the_issue_case_a_24_digit_byte_count() -> None:
    line = HTTPLOG.replace(" 1532 ", " 123456789012345678901234 ")
    result = Parser().encoded(line, SRC)
    assert result == Rejected("invalid_field", "bytes_sent: Input should be less than or equal to 9007199254740991")


def test_a_record_the_model_lets_through_but_json_cannot_carry_is_a_dead_letter() -> None:
    """The guard behind the model's bounds: a record built past validation (as a future field
    without a bound would be) becomes a dead letter naming the field, not an exception."""

    class Unbounded(Parser):
        def parse(self, raw: bytes | str, src: SourcePosition) -> LogRecord | Rejected:
            record = super().parse(raw, src)
            assert isinstance(record, LogRecord)
            return LogRecord.model_construct(**{**record.__dict__, "bytes_sent": 10**24})

    encoder = Encoder(settings_mod.load())
    encoder.parser = Unbounded(fast=False)  # the reference path's guard (the fast path defers to it)
    encoder._fast = None
    message = encoder.line(JSON_LINE.encode(), SRC, "/var/log/haproxy.log")
    assert message.topic == encoder.rejected_topic
    assert message.value is not None
    dead = orjson.loads(message.value)
    assert dead["reason"] == "invalid_field" and dead["detail"].startswith("bytes_sent: cannot be encoded")


def test_a_dead_letter_of_a_file_whose_name_is_not_utf8() -> None:
    """The OS hands such a name over with surrogate escapes, which JSON cannot carry."""
    encoder = Encoder(settings_mod.load())
    message = encoder.line(b"not a log line", SRC, "/var/log/haproxy-\udcff.log")
    assert message.value is not None
    dead = orjson.loads(message.value)
    assert dead["source"] == "/var/log/haproxy-\\xff.log" and dead["reason"] == "unknown_format"
    odd = RejectedLine.of(b"x", source="\ud800" * 2000, position=None, reason="r", detail="\udcff\x00", keep=10)
    assert len(odd.source) == 1024 and encode(odd)


@pytest.mark.parametrize("text", ["cb a0 c2", "cba0c27 ", "+ba0c270", "cba0c27g", "٣ba0c270"])
def test_a_fingerprint_is_eight_hex_characters(text: str) -> None:
    with pytest.raises(ValueError):
        fingerprint_from_hex(text)
    result = Parser().parse(JSON_LINE.replace("CBA0C270", text), SRC)
    assert isinstance(result, Rejected) and result.detail.startswith("api_key_fp:")
