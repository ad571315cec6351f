"""HAProxy's stock `option httplog` line, with the project's fields in captured request headers.

    %ci:%cp [%tr] %ft %b/%s %TR/%Tw/%Tc/%Tr/%Ta %ST %B %CC %CS %tsc %ac/%fc/%bc/%sc/%rc
    %sq/%bq {%hrl} {%hsl} %{+Q}r

The captured request headers ({%hrl}, '|'-separated) carry, in this order (docs/ingest.md):
api_key_fp, service_type, network, server_id, fe_type, traffic_type, event_type,
key_metadata, config_hex. Missing or empty captures leave the fields absent. `%tr` has no
zone: it is read as UTC (run HAProxy with TZ=UTC, or use the JSON format).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from meterstream.ingest.parse_fields import FieldError, fingerprint, int_or, opt_int, opt_str
from meterstream.schemas.records import PATH_PREFIX_LEN

CAPTURED = ("api_key_fp", "service_type", "network", "server_id", "fe_type", "traffic_type",
            "event_type", "key_metadata", "config_hex")

_LINE = re.compile(
    r"^(?P<ci>\S+):(?P<cp>\d+) \[(?P<tr>[^\]]+)\] (?P<ft>\S+?)(?P<ssl>~)? (?P<b>\S+)/(?P<s>\S+) "
    r"(?P<TR>[+-]?\d+)/(?P<Tw>[+-]?\d+)/(?P<Tc>[+-]?\d+)/(?P<Tr>[+-]?\d+)/(?P<Ta>[+-]?\d+) "
    r"(?P<ST>-?\d+) (?P<B>\+?\d+) (?P<CC>\S+) (?P<CS>\S+) (?P<tsc>\S{4}) "
    r"\S+/\S+/\S+/\S+/\S+ \S+/\S+"
    r"(?: \{(?P<hrl>[^}]*)\})?(?: \{(?P<hsl>[^}]*)\})?"
    r"(?: \"(?P<req>[^\"]*)\"?)?\s*$"
)
_MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
_TR = re.compile(r"^(\d\d)/([A-Z][a-z]{2})/(\d{4}):(\d\d):(\d\d):(\d\d)(?:\.(\d{1,3}))?$")


class NotHttplog(ValueError):
    pass


def looks_like(message: str) -> bool:
    return " [" in message[:64]


def _accept_date(text: str) -> int:
    match = _TR.match(text)
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
    parts = request.split(" ")
    target = parts[1] if len(parts) > 1 else ""
    if "://" in target:  # absolute-form request target
        target = "/" + target.split("://", 1)[1].partition("/")[2]
    return target.lstrip("/").split("?", 1)[0][:PATH_PREFIX_LEN]


def fields(message: str) -> dict[str, Any]:
    match = _LINE.match(message)
    if match is None:
        raise NotHttplog("not an httplog line")
    captured: dict[str, str] = {}
    if match["hrl"]:
        captured = dict(zip(CAPTURED, match["hrl"].split("|"), strict=False))
    return {
        "ts": _accept_date(match["tr"]),
        "request_id": None,
        "client_ip": match["ci"],
        "api_key_fp": fingerprint(captured.get("api_key_fp")),
        "service_type": opt_int("service_type", captured.get("service_type")),
        "network": opt_int("network", captured.get("network")),
        "server_id": opt_int("server_id", captured.get("server_id")),
        "fe_type": opt_int("fe_type", captured.get("fe_type")),
        "traffic_type": int_or("traffic_type", captured.get("traffic_type"), 0),
        "event_type": int_or("event_type", captured.get("event_type"), 0),
        "key_metadata": opt_str(captured.get("key_metadata")),
        "status": int(match["ST"]),
        "bytes_sent": int(match["B"].lstrip("+")),
        "path": _path(match["req"]),
        "TR": int(match["TR"].lstrip("+")),
        "Tw": int(match["Tw"].lstrip("+")),
        "Tc": int(match["Tc"].lstrip("+")),
        "Tr": int(match["Tr"].lstrip("+")),
        "Ta": int(match["Ta"].lstrip("+")),
        "backend_id": None,  # httplog names the backend (%b), it does not number it
        "termination_state": match["tsc"],
        "config_hex": opt_str(captured.get("config_hex")),
    }
