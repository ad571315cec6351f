"""haproxy.logs -> haproxy_raw_logs: the row of a LogRecord (columns of migration 0001)."""

from __future__ import annotations

import functools
import ipaddress
from datetime import UTC, datetime, timedelta

import asyncpg

from meterstream.schemas.records import LogRecord

TABLE = "haproxy_raw_logs"
STAGING = "raw_logs_staging"
CONFLICT = "haproxy_raw_logs_request_id_unique"  # the same name with and without TimescaleDB
MODEL = LogRecord
COLUMNS = (
    "request_id", "ts", "client_ip", "api_key_fp", "service_type", "network", "server_id",
    "fe_type", "traffic_type", "event_type", "key_metadata", "status_code", "bytes_sent",
    "path_prefix", "time_request_ms", "time_queue_ms", "time_connect_ms", "time_response_ms",
    "time_total_ms", "backend_id", "termination_state", "config_hex", "source_stream", "source_offset",
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@functools.lru_cache(maxsize=65_536)
def _ip(text: str) -> bytes | None:
    """The address packed (4 or 16 bytes), which asyncpg's INET encoder takes without parsing
    text again; cached, since client addresses repeat. Parsing was most of a row's cost."""
    try:
        return ipaddress.ip_address(text).packed
    except ValueError:
        return None  # HAProxy logs a unix socket peer or nothing: no INET value


def _code(value: int | None) -> int | None:
    return None if value is None else int(value)


def row(r: LogRecord) -> tuple:
    return (
        r.request_id, _EPOCH + timedelta(milliseconds=r.ts), _ip(r.client_ip), r.api_key_fp,
        _code(r.service_type), _code(r.network), r.server_id, _code(r.fe_type), int(r.traffic_type),
        r.event_type, r.key_metadata, r.status, r.bytes_sent, r.path, r.TR, r.Tw, r.Tc, r.Tr, r.Ta,
        r.backend_id, r.termination_state, r.config_hex, r.src.stream, r.src.offset,
    )


async def write(conn: asyncpg.Connection, rows: list[tuple]) -> int:
    """Writes the rows, skipping request ids already there; returns how many were new.

    Repeats are rare (a tailer restart), so the rows are first copied straight into the table
    under a savepoint: one write instead of two. If a request id is already there the savepoint
    is rolled back and the rows go through the staging table and INSERT ... ON CONFLICT.
    """
    try:
        async with conn.transaction():  # a savepoint inside the batch's transaction
            await conn.copy_records_to_table(TABLE, records=rows, columns=COLUMNS)
        return len(rows)
    except asyncpg.UniqueViolationError:
        pass
    await conn.copy_records_to_table(STAGING, records=rows, columns=COLUMNS)
    return await conn.fetchval(
        f"WITH new AS (INSERT INTO {TABLE} SELECT * FROM {STAGING} "
        f"ON CONFLICT ON CONSTRAINT {CONFLICT} DO NOTHING RETURNING 1) SELECT count(*) FROM new")
