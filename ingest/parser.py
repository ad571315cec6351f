"""One HAProxy log line -> a LogRecord, or a rejection with a reason. Pure: no I/O.

Accepts the project's JSON line and the stock `option httplog` line, each with or without an
RFC 3164 / RFC 5424 syslog header. Never raises on any input: whatever does not parse is a
Rejected with a machine-readable reason and a detail for people. A Parser is configured once
(the capture layouts of `parse.request_captures`); `parse()` uses the default configuration.
`Parser.encoded` also writes the record's Kafka key and value, under the same guard: what
it returns can be produced, so nothing between a line and Kafka can raise.

`Parser.encoded_at` (the tailer's and the receiver's) first tries the JSON line's fast path
(ingest/parse_json_fast.py: pydantic-core validates the bytes straight into LogRecord's field
schemas); whatever it defers goes through the reference path here, which decides, with its
reason. Both give the same records (tests/test_parse_fast.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import orjson
from pydantic import BaseModel

from meterstream import logs
from meterstream.ingest import parse_httplog, parse_json, syslog_header
from meterstream.ingest.capture_layout import CaptureLayouts, CaptureMismatch, Layout
from meterstream.ingest.parse_fields import FieldError
from meterstream.ingest.parse_json_fast import FastJson
from meterstream.schemas.records import LogRecord, SourcePosition
from meterstream.schemas.topics import key_of
from meterstream.schemas.wire import WireError, decode, encode, validate
from meterstream.settings import Settings

log = logs.get(__name__)
# HAProxy's default maximum log line length: a longer line arrives cut there
HAPROXY_DEFAULT_LOG_LEN = 1024
# what a line with a syslog header can start with (syslog_header.strip's own test)
_HEADER_START = frozenset(b"<ADFJMNOS0123456789")


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: str  # one of REASONS
    detail: str


class Encoded:
    """A record's haproxy.logs key and value, ready to produce, and its event time. The fast
    path writes them without a LogRecord object: ``record`` reads the value back (tests, tools)."""

    __slots__ = ("_record", "key", "ts", "value")

    def __init__(self, key: bytes, value: bytes, ts: int, record: LogRecord | None = None) -> None:
        self.key, self.value, self.ts, self._record = key, value, ts, record

    @property
    def record(self) -> LogRecord:
        if self._record is None:
            self._record = decode(LogRecord, self.value)
        return self._record

    def __repr__(self) -> str:
        return f"Encoded(key={self.key!r}, value={self.value!r})"


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
    """Without HAProxy's id, one derived from the line's source position, so a
    replay of the same line yields the same id."""
    digest = hashlib.blake2b(f"{src.stream}\0{src.offset}".encode(), digest_size=12).hexdigest()
    return f"ms-{digest}"


class Parser:
    def __init__(self, request_captures: Mapping[str, Sequence[str]] | None = None, fast: bool = True) -> None:
        """``request_captures``: the setting parse.request_captures (checked again here; "*"
        defaults to DEFAULT_REQUEST_CAPTURES). ``fast``: try the JSON fast path first."""
        self.layouts = CaptureLayouts(request_captures or {})
        self.fast = FastJson.build() if fast else None
        if fast and self.fast is None:
            log.warning("the JSON fast path cannot carry LogRecord's rules: every line takes the reference path")

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
            return Encoded(key_of(result), encode(result), result.ts, result)
        except Exception as exc:  # noqa: BLE001 - the contract: nothing escapes, all is reported
            return Rejected("invalid_field", f"{_unencodable(result)}: cannot be encoded ({type(exc).__name__}: {exc})")

    def encoded_at(self, raw: bytes, stream: str, offset: int, fast_tried: bool = False) -> Encoded | Rejected:
        """``encoded`` of a line at ``offset`` in ``stream``, by the fast path when it takes the
        line; the position is built only for the lines the reference path decides.
        ``fast_tried``: the fast path has deferred this line already (as a bare line)."""
        fast = self.fast
        if fast is not None:
            if raw[:1] == b"{":
                done = None if fast_tried else fast.encoded(raw, stream, offset)
            elif raw[:1] and raw[0] in _HEADER_START:  # a syslog header: the JSON message after it
                done = self._fast_after_header(fast, raw, stream, offset)
            else:
                done = None
            if done is not None:
                return Encoded(*done)
        return self.encoded(raw, SourcePosition(stream=stream, offset=offset))

    @staticmethod
    def _fast_after_header(fast: FastJson, raw: bytes, stream: str, offset: int) -> tuple[bytes, bytes, int] | None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
        _host, message = syslog_header.strip(text.rstrip("\r\n"))
        if message[:1] != "{":
            return None
        return fast.encoded(message.encode("utf-8"), stream, offset)

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
