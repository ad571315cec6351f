"""haproxy.logs -> haproxy_raw_logs: the row of a LogRecord (columns of migration 0001)."""

from __future__ import annotations

import operator

import asyncpg

from meterstream.schemas.records import LogRecord
from meterstream.sinks.pgvalues import inet

TABLE = "haproxy_raw_logs"
STAGING = "raw_logs_staging"
CONFLICT = "haproxy_raw_logs_request_id_unique"  # the same name with and without TimescaleDB
MODEL = LogRecord
# column <- LogRecord field, in the order of the row; the source position follows (src), then
# the client address (a value the row builds: last, so the row is one tuple the fields' plus one)
_FIELD_OF = {
    "request_id": "request_id", "ts": "ts", "api_key_fp": "api_key_fp",
    "service_type": "service_type", "network": "network", "server_id": "server_id", "fe_type": "fe_type",
    "traffic_type": "traffic_type", "event_type": "event_type", "key_metadata": "key_metadata",
    "status_code": "status", "bytes_sent": "bytes_sent", "path_prefix": "path", "time_request_ms": "TR",
    "time_queue_ms": "Tw", "time_connect_ms": "Tc", "time_response_ms": "Tr", "time_total_ms": "Ta",
    "backend_id": "backend_id", "termination_state": "termination_state", "config_hex": "config_hex",
}
COLUMNS = (*_FIELD_OF, "source_stream", "source_offset", "client_ip")
# one C call reads the fields, the source position's too: of the fast decoder's Struct
# (schemas/fast_decode.py) or of a LogRecord
_fields = operator.attrgetter(*_FIELD_OF.values(), "src.stream", "src.offset")


def row(r: LogRecord) -> tuple:
    """The row, as the sink's connections take it (sinks/pgvalues.py): ``ts`` in epoch
    milliseconds, the client address as a binary INET value (NULL when it is not an address).
    The enumerations are ints (IntEnum), which asyncpg encodes as such. ``r`` is a LogRecord or
    the fast decoder's Struct of one (the same fields)."""
    return _fields(r) + (inet(r.client_ip),)  # 0.56 us where building it around the address took 0.77


async def write_new(conn: asyncpg.Connection, rows: list[tuple]) -> int:
    """Copies the rows straight into the table, without a savepoint (two round trips less than
    ``write``): for the sink's batch transaction, which fails with UniqueViolationError when a
    request id is already there, and is then written again with ``write``."""
    await conn.copy_records_to_table(TABLE, records=rows, columns=COLUMNS)
    return len(rows)


async def write(conn: asyncpg.Connection, rows: list[tuple]) -> int:
    """Writes the rows, skipping request ids already there; returns how many were new.

    Repeats are rare (a tailer restart), so the rows are first copied straight into the table
    under a savepoint: one write instead of two. If a request id is already there the savepoint
    is rolled back and the rows go through the staging table and INSERT ... ON CONFLICT.
    """
    try:
        async with conn.transaction():  # a savepoint inside the batch's transaction
            return await write_new(conn, rows)
    except asyncpg.UniqueViolationError:
        pass
    await conn.copy_records_to_table(STAGING, records=rows, columns=COLUMNS)
    return await conn.fetchval(
        f"WITH new AS (INSERT INTO {TABLE} SELECT * FROM {STAGING} "
        f"ON CONFLICT ON CONSTRAINT {CONFLICT} DO NOTHING RETURNING 1) SELECT count(*) FROM new")
