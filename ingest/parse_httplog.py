"""HAProxy's stock `option httplog` line, with the project's fields in captured request headers.

    %ci:%cp [%tr] %ft %b/%s %TR/%Tw/%Tc/%Tr/%Ta %ST %B %CC %CS %tsc %ac/%fc/%bc/%sc/%rc
    %sq/%bq {%hrl} {%hsl} %{+Q}r

The captured request headers ({%hrl}, '|'-separated) are read by the layout of the line's
frontend (`parse.request_captures`, ingest/capture_layout.py); by default, in this order:
api_key_fp, service_type, network, server_id, fe_type, traffic_type, event_type,
key_metadata, config_hex. Missing or empty captures leave the fields absent. `%tr` has no
zone: it is read as UTC (run HAProxy with TZ=UTC, or use the JSON format).

Linear in the line's length: the line is split on spaces once and each token is checked
on its own (no regex over the whole line, so nothing can backtrack). Numbers go to the
LogRecord model as HAProxy printed them: the model alone decides their range.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from meterstream.ingest.capture_layout import CaptureLayouts, Layout
from meterstream.ingest.parse_fields import FieldError
from meterstream.schemas.records import PATH_PREFIX_LEN

# the tokens before the captures and the request: %ci:%cp .. %sq/%bq
_FIXED = 12
_MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
# bounded repetitions only: linear
_TR = re.compile(r"(\d\d)/([A-Z][a-z]{2})/(\d{4}):(\d\d):(\d\d):(\d\d)(?:\.(\d{1,3}))?", re.ASCII)
_OTHER_SPACE = re.compile(r"[^\S ]")  # whitespace other than the separating spaces


class NotHttplog(ValueError):
    pass


def looks_like(message: str) -> bool:
    return " [" in message[:64]


def _number(token: str, signs: str) -> str:
    """An integer as HAProxy prints it (ASCII digits, an optional sign among ``signs``),
    returned as printed for the model to convert and bound."""
    digits = token[1:] if signs and token[:1] in signs else token
    if not (digits.isascii() and digits.isdigit()):
        raise NotHttplog(f"not a number: {token[:20]!r}")
    return token


def _parts(token: str, count: int) -> list[str]:
    """``count`` non-empty '/'-separated parts."""
    parts = token.split("/", count)
    if len(parts) != count or not all(parts):
        raise NotHttplog(f"not {count} '/'-separated values: {token[:20]!r}")
    return parts


def _accept_date(text: str) -> int:
    match = _TR.fullmatch(text)
    if match is None or match[2] not in _MONTHS:
        raise FieldError("ts", text)
    day, month, year = int(match[1]), _MONTHS[match[2]], int(match[3])
    try:
        moment = datetime(year, month, day, int(match[4]), int(match[5]), int(match[6]), tzinfo=UTC)
    except ValueError:
        raise FieldError("ts", text) from None
    return int(moment.timestamp()) * 1000 + int((match[7] or "0").ljust(3, "0"))


def _path(request: str | None) -> str:
    if not request or request.startswith("<BADREQ>"):
        return ""
    target = request.partition(" ")[2].partition(" ")[0]
    if "://" in target:  # absolute-form request target
        target = "/" + target.partition("://")[2].partition("/")[2]
    return target.lstrip("/").partition("?")[0][:PATH_PREFIX_LEN]


def _block(rest: str) -> tuple[str | None, str]:
    """A ` {...}` capture block at the start of ``rest``: (its content, what follows)."""
    if not rest.startswith(" {"):
        return None, rest
    end = rest.find("}", 2)
    if end < 0:
        raise NotHttplog("a capture block without its '}'")
    return rest[2:end], rest[end + 1:]


def _request(rest: str) -> str | None:
    """The quoted request (`%{+Q}r`; its closing quote may be cut) and nothing but spaces after."""
    request = None
    if rest.startswith(' "'):
        end = rest.find('"', 2)
        request, rest = (rest[2:], "") if end < 0 else (rest[2:end], rest[end + 1:])
    if rest.strip():
        raise NotHttplog("unexpected text after the request")
    return request


def _tokens(message: str) -> tuple[list[str], str]:
    """The fixed tokens and the rest (from the space after %sq/%bq)."""
    tokens = message.split(" ", _FIXED)
    if len(tokens) < _FIXED:
        raise NotHttplog("too few fields")
    rest = " " + tokens.pop() if len(tokens) > _FIXED else ""
    # each token is non-empty and holds no other whitespace (tabs, newlines...)
    if not all(tokens) or _OTHER_SPACE.search(message, 0, len(message) - len(rest)):
        raise NotHttplog("empty field or stray whitespace")
    return tokens, rest


def fields(message: str, layouts: CaptureLayouts) -> tuple[dict[str, Any], Layout]:
    """The LogRecord fields of the line (request_id and src are the parser's), and the capture
    layout of its frontend."""
    tokens, rest = _tokens(message)
    client, date, frontend, server, timers, status, sent, _cc, _cs, tsc, conns, queues = tokens
    ci, colon, cp = client.rpartition(":")
    if not (ci and colon):
        raise NotHttplog("no client address:port")
    _number(cp, "")
    if not (date[0] == "[" and date[-1] == "]" and len(date) > 2 and "]" not in date[1:-1]):
        raise NotHttplog("no [accept date]")
    if "/" not in server[1:-1]:
        raise NotHttplog("no backend/server")
    tr, tw, tc, tr_, ta = (_number(t, "+-") for t in _parts(timers, 5))
    _number(status, "-")
    _number(sent, "+")
    if len(tsc) != 4:
        raise NotHttplog("termination state is not 4 characters")
    _parts(conns, 5)
    _parts(queues, 2)
    first, rest = _block(rest)
    _second, rest = _block(rest)
    request = _request(rest)
    layout = layouts.of(frontend)
    # a frontend without request captures logs only its response captures' block, if any
    record = layout.read(first) if first is not None and layout.names else {}
    record.update({
        "ts": _accept_date(date[1:-1]),
        "client_ip": ci,
        "status": status,
        "bytes_sent": sent,
        "path": _path(request),
        "TR": tr, "Tw": tw, "Tc": tc, "Tr": tr_, "Ta": ta,
        "termination_state": tsc,
    })
    return record, layout
