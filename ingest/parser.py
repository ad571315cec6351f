"""One HAProxy log line -> a LogRecord, or a rejection with a reason. Pure: no I/O.

Accepts the project's JSON line and the stock `option httplog` line, each with or without an
RFC 3164 / RFC 5424 syslog header. Never raises on any input: whatever does not parse is a
Rejected with a machine-readable reason and a detail for people. A Parser is configured once
(the capture layouts of `parse.request_captures`); `parse()` uses the default configuration.
`Parser.encoded` also writes the record's Kafka key and value, under the same guard: what
it returns can be produced, so nothing between a line and Kafka can raise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import orjson
from pydantic import BaseModel

from meterstream.ingest import parse_httplog, parse_json, syslog_header
from meterstream.ingest.capture_layout import CaptureLayouts, CaptureMismatch, Layout
from meterstream.ingest.parse_fields import FieldError
from meterstream.schemas.records import LogRecord, SourcePosition
from meterstream.schemas.topics import key_of
from meterstream.schemas.wire import WireError, encode, validate
from meterstream.settings import Settings

# HAProxy's default maximum log line length: a longer line arrives cut there
HAPROXY_DEFAULT_LOG_LEN = 1024


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: str  # one of REASONS
    detail: str


@dataclass(frozen=True, slots=True)
class Encoded:
    """A record with its haproxy.logs key and value, ready to produce."""

    record: LogRecord
    key: bytes
    value: bytes


REASONS = {
    "empty_line": "the line is empty",
    "invalid_utf8": "the line is not valid UTF-8",
    "line_too_long": "the line is longer than the configured maximum",
    "not_json": "the line starts like the JSON format but is not JSON",
    "truncated": "the line was cut (HAProxy's log length limit) before it ended",
    "unknown_format": "neither the JSON nor the httplog format",
    "invalid_field": "a field is missing or holds a value out of its range",
    "capture_mismatch": "more captured request headers than parse.request_captures names for the frontend",
}


def derived_request_id(src: SourcePosition) -> str:
    """SPEC §4: without HAProxy's id, one derived from the line's source position, so a
    replay of the same line yields the same id."""
    digest = hashlib.blake2b(f"{src.stream}\0{src.offset}".encode(), digest_size=12).hexdigest()
    return f"ms-{digest}"


class Parser:
    def __init__(self, request_captures: Mapping[str, Sequence[str]] | None = None) -> None:
        """``request_captures``: the setting parse.request_captures (checked again here; "*"
        defaults to DEFAULT_REQUEST_CAPTURES)."""
        self.layouts = CaptureLayouts(request_captures or {})

    @classmethod
    def from_settings(cls, settings: Settings) -> Parser:
        return cls(settings.parse.request_captures)

    def parse(self, raw: bytes | str, src: SourcePosition) -> LogRecord | Rejected:
        try:
            return self._parse(raw, src)
        except Exception as exc:  # noqa: BLE001 - the contract: nothing escapes, all is reported
            return Rejected("unknown_format", f"unexpected {type(exc).__name__}: {exc}")

    def encoded(self, raw: bytes | str, src: SourcePosition) -> Encoded | Rejected:
        """The line as its haproxy.logs message, or why not. The model bounds every field to
        what JSON and the tables hold; should a value still not encode, the line is a dead
        letter naming the field rather than an exception in the tailer's loop."""
        result = self.parse(raw, src)
        if isinstance(result, Rejected):
            return result
        try:
            return Encoded(result, key_of(result), encode(result))
        except Exception as exc:  # noqa: BLE001 - the contract: nothing escapes, all is reported
            return Rejected("invalid_field", f"{_unencodable(result)}: cannot be encoded ({type(exc).__name__}: {exc})")

    def _parse(self, raw: bytes | str, src: SourcePosition) -> LogRecord | Rejected:
        if isinstance(raw, bytes):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return Rejected("invalid_utf8", f"invalid byte at {exc.start}")
        else:
            text = raw
            try:  # a str can hold what UTF-8 cannot (lone surrogates): no record could carry it
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                return Rejected("invalid_utf8", f"unencodable character at {exc.start}")
        text = text.rstrip("\r\n")
        if not text.strip():
            return Rejected("empty_line", REASONS["empty_line"])
        _host, message = syslog_header.strip(text)
        layout: Layout | None = None
        try:
            if message.startswith("{"):
                fields = parse_json.fields(message)
            elif parse_httplog.looks_like(message):
                fields, layout = parse_httplog.fields(message, self.layouts)
            else:
                return Rejected("unknown_format", REASONS["unknown_format"])
        except (parse_json.NotJson, parse_httplog.NotHttplog) as exc:
            cut = len(text.encode()) >= HAPROXY_DEFAULT_LOG_LEN - 1 and not message.rstrip().endswith(("}", '"'))
            if cut:
                return Rejected("truncated", f"{len(text.encode())} bytes, cut before the end: {exc}")
            if isinstance(exc, parse_json.NotJson):
                return Rejected("not_json", str(exc))
            return Rejected("unknown_format", REASONS["unknown_format"])
        except FieldError as exc:
            return Rejected("invalid_field", str(exc))
        except CaptureMismatch as exc:
            return Rejected("capture_mismatch", str(exc))
        if fields.get("request_id") is None:
            fields["request_id"] = derived_request_id(src)
        fields["src"] = src
        try:
            return validate(LogRecord, fields)
        except WireError as exc:
            position = layout.position(exc.field) if layout is not None else None
            where = "" if position is None else f" ({layout.where(position)})"  # type: ignore[union-attr]
            return Rejected("invalid_field", f"{exc.field}: {exc.message}{where}")


def _unencodable(record: LogRecord) -> str:
    """The first field of ``record`` that JSON cannot carry."""
    for name, value in record.__dict__.items():
        try:
            orjson.dumps(value, default=_nested)
        except Exception:  # noqa: BLE001 - any failure names the field
            return name
    return "(record)"


def _nested(value: object) -> object:
    if isinstance(value, BaseModel):
        return value.__dict__
    raise TypeError(f"cannot encode {type(value).__name__}")


_DEFAULT = Parser()


def parse(raw: bytes | str, src: SourcePosition) -> LogRecord | Rejected:
    """A line, read with the default capture layout."""
    return _DEFAULT.parse(raw, src)
