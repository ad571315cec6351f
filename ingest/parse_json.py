"""The project's JSON log line (deploy/haproxy/haproxy.cfg's log-format, docs/ingest.md).

Two forms of the line are read, field by field: the record's line the config writes now
(LogRecord's own values: `ts` in milliseconds, the fingerprint as its int32, bare numbers, null
for an absent sample) and the earlier line (quoted numbers, `ts` in seconds with a fraction,
the fingerprint's hex). Values go to the LogRecord model as HAProxy printed them: pydantic's
lax mode turns "200", "+500" and "-1" into integers (in Rust, fast), so the model stays the
one definition of every field's rules. Here only what the model cannot know: an absent sample
("-" or "", or a bare - in the line of a request HAProxy could not parse) means the field's
default, `ts` in seconds becomes integer milliseconds, the fingerprint's hex becomes its int32
(a number is the int32 already), and the path is cut to its prefix.

This is the reference path; most lines take the fast path (ingest/parse_json_fast.py), which
validates the bytes directly and must agree with this one. Both read JSON with pydantic-core's
parser (jiter), so they agree on what JSON is: orjson differs at the edges (it refuses NaN,
Infinity and 1e400, reads integers beyond 64 bits as floats, and nests deeper).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic_core import from_json

from meterstream.ingest.parse_fields import ABSENT, FieldError, epoch_ms, fingerprint
from meterstream.schemas.records import PATH_PREFIX_LEN, LogRecord

# fields taken as logged; the others are converted below (or set by the tailer: src)
_AS_LOGGED = frozenset(LogRecord.model_fields) - {"v", "src", "ts", "api_key_fp", "request_id", "path"}


class NotJson(ValueError):
    pass


# HAProxy's line for a request it could not parse (``<BADREQ>``): its rules never ran and no
# sample is evaluated, so the record's line holds its unquoted values as a bare "-", which is
# not JSON. Such a value is read as the quoted "-" of an absent sample. A fixed-width pattern:
# one pass, no backtracking; only tried on a line that is not JSON as it is.
_BARE_ABSENT = re.compile(r"(?<=:)-(?=[,}])")


def fields(message: str) -> dict[str, Any]:
    """LogRecord fields (without src; request_id None when HAProxy had none)."""
    try:
        obj = from_json(message)
    except ValueError as exc:
        obj = _bare_absent_read(message)
        if obj is _NOT_JSON:
            raise NotJson(str(exc)) from None
    if not isinstance(obj, dict):
        raise NotJson("the line is JSON but not an object")
    if "ts" not in obj:
        raise FieldError("ts", "(missing)")
    record = {k: v for k, v in obj.items() if k in _AS_LOGGED and v != "-" and v != ""}
    record["ts"] = epoch_ms(obj["ts"])
    record["api_key_fp"] = fingerprint(obj.get("api_key_fp"))
    request_id = obj.get("request_id")
    record["request_id"] = None if request_id is None or request_id in ABSENT else request_id
    record["path"] = path_prefix(obj.get("path"))
    return record


_NOT_JSON = object()


def _bare_absent_read(message: str) -> Any:
    """The line read with each bare "-" value as "-" (HAProxy's <BADREQ> line), or _NOT_JSON."""
    if ":-" not in message:
        return _NOT_JSON
    repaired, count = _BARE_ABSENT.subn('"-"', message)
    if not count:
        return _NOT_JSON
    try:
        return from_json(repaired)
    except ValueError:
        return _NOT_JSON


def path_prefix(path: object) -> str:
    """The logged path (HAProxy's first bytes, or absent) as LogRecord's prefix."""
    if path is None or path in ABSENT:
        return ""
    try:
        return str(path)[:PATH_PREFIX_LEN]
    except ValueError:  # an integer of more than 4300 digits has no str() (CPython's limit)
        raise FieldError("path", "(a number too long to read)") from None
