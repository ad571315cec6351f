"""meter.breaches -> limit_events, idempotent on event_id."""

from __future__ import annotations

import asyncpg

from meterstream.schemas.limits import LimitEvent

TABLE = "limit_events"
STAGING = "limit_events_staging"
COLUMNS = ("event_id", "customer_id", "service_type", "kind", "observed", "limit_value", "window_label",
           "at", "api_key_fp", "region_id")
MODEL = LimitEvent


def row(e: LimitEvent) -> tuple:
    """``at`` in epoch milliseconds, as the sink's connections take it (sinks/pgvalues.py)."""
    return (e.event_id, e.customer_id, None if e.service_type is None else int(e.service_type), e.kind.value,
            e.observed, e.limit, e.window, e.at, e.api_key_fp, e.region_id)


async def write(conn: asyncpg.Connection, rows: list[tuple]) -> int:
    """Returns the events that were new."""
    await conn.copy_records_to_table(STAGING, records=rows, columns=COLUMNS)
    return await conn.fetchval(
        f"""WITH new AS (INSERT INTO {TABLE} ({", ".join(COLUMNS)}) SELECT {", ".join(COLUMNS)} FROM {STAGING}
                         ON CONFLICT (event_id) DO NOTHING RETURNING 1)
            SELECT count(*) FROM new""")
