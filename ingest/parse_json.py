"""The project's JSON log line (deploy/haproxy/haproxy.cfg's log-format, SPEC §4)."""

from __future__ import annotations

from typing import Any

import orjson

from meterstream.ingest.parse_fields import (
    FieldError,
    epoch_ms,
    fingerprint,
    int_or,
    opt_int,
    opt_str,
)
from meterstream.schemas.records import PATH_PREFIX_LEN

TIMERS = ("TR", "Tw", "Tc", "Tr", "Ta")


class NotJson(ValueError):
    pass


def fields(message: str) -> dict[str, Any]:
    """LogRecord fields (without src; request_id None when HAProxy had none)."""
    try:
        obj = orjson.loads(message)
    except orjson.JSONDecodeError as exc:
        raise NotJson(str(exc)) from None
    if not isinstance(obj, dict):
        raise NotJson("the line is JSON but not an object")
    if "ts" not in obj:
        raise FieldError("ts", "(missing)")
    get = obj.get
    record = {
        "ts": epoch_ms(obj["ts"]),
        "request_id": opt_str(get("request_id")),
        "client_ip": get("client_ip") or "",
        "api_key_fp": fingerprint(get("api_key_fp")),
        "service_type": opt_int("service_type", get("service_type")),
        "network": opt_int("network", get("network")),
        "server_id": opt_int("server_id", get("server_id")),
        "fe_type": opt_int("fe_type", get("fe_type")),
        "traffic_type": int_or("traffic_type", get("traffic_type"), 0),
        "event_type": int_or("event_type", get("event_type"), 0),
        "key_metadata": opt_str(get("key_metadata")),
        "status": int_or("status", get("status"), -1),
        "bytes_sent": int_or("bytes_sent", get("bytes_sent"), 0),
        "path": (opt_str(get("path")) or "")[:PATH_PREFIX_LEN],
        "backend_id": opt_int("backend_id", get("backend_id")),
        "termination_state": opt_str(get("termination_state")) or "",
        "config_hex": opt_str(get("config_hex")),
    }
    for timer in TIMERS:
        record[timer] = int_or(timer, get(timer), -1)
    return record
