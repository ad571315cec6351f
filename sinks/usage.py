"""meter.usage -> usage_minutes (absolute totals, newer revisions only) and usage_records
(hourly, recomputed from the minutes of the hours a batch touched: absolute, so idempotent).

A minute's totals are each within BIGINT (schemas.types.Count), but an hour sums up to 240 of
them (60 minutes x 4 networks): its totals saturate at the BIGINT maximum, as the meter's own
totals do, rather than overflow and make Postgres refuse the batch."""

from __future__ import annotations

import asyncpg

from meterstream.schemas.types import INT64_MAX
from meterstream.schemas.usage import COUNTS, UsageWindow

TABLE = "usage_minutes"
STAGING = "usage_minutes_staging"
COLUMNS = ("customer_id", "service_type", "network", "window_start", "revision", "final", *COUNTS)
MODEL = UsageWindow


def row(u: UsageWindow) -> tuple:
    """``window_start`` in epoch milliseconds, as the sink's connections take it (sinks/pgvalues.py)."""
    return (u.customer_id, int(u.service_type), int(u.network), u.window_start,
            u.revision, u.final, *(getattr(u, name) for name in COUNTS))


async def write(conn: asyncpg.Connection, rows: list[tuple]) -> int:
    """Returns the minute rows that changed."""
    await conn.copy_records_to_table(STAGING, records=rows, columns=COLUMNS)
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in ("revision", "final", *COUNTS))
    changed = await conn.fetchval(
        f"""WITH latest AS (
                SELECT DISTINCT ON (customer_id, service_type, network, window_start) *
                FROM {STAGING} ORDER BY customer_id, service_type, network, window_start, revision DESC, final DESC),
            up AS (
                INSERT INTO {TABLE} ({", ".join(COLUMNS)}) SELECT {", ".join(COLUMNS)} FROM latest
                ON CONFLICT (customer_id, service_type, network, window_start) DO UPDATE SET {updates},
                    updated_at = now()
                WHERE {TABLE}.revision < EXCLUDED.revision
                   OR ({TABLE}.revision = EXCLUDED.revision AND EXCLUDED.final AND NOT {TABLE}.final)
                RETURNING 1)
            SELECT count(*) FROM up""")
    sums = ", ".join(f"LEAST(sum({c}), {INT64_MAX})::bigint" for c in COUNTS)
    await conn.execute(
        f"""WITH hours AS (SELECT DISTINCT customer_id, service_type, date_trunc('hour', window_start) AS h
                           FROM {STAGING})
            INSERT INTO usage_records (customer_id, service_type, window_start, requests, billable_requests,
                                       bytes_sent, denied, client_errors, server_errors, ta_sum_ms)
            SELECT m.customer_id, m.service_type, hours.h, {sums}
            FROM usage_minutes m JOIN hours ON m.customer_id = hours.customer_id
                 AND m.service_type = hours.service_type AND date_trunc('hour', m.window_start) = hours.h
            GROUP BY m.customer_id, m.service_type, hours.h
            ON CONFLICT (customer_id, service_type, window_start) DO UPDATE SET
                requests = EXCLUDED.requests, billable_requests = EXCLUDED.billable_requests,
                bytes_sent = EXCLUDED.bytes_sent, denied = EXCLUDED.denied,
                client_errors = EXCLUDED.client_errors, server_errors = EXCLUDED.server_errors,
                ta_sum_ms = EXCLUDED.ta_sum_ms, updated_at = now()""")
    return changed
