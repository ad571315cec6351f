"""`meterstream report usage|limits` against a real Postgres (a migrated database of the test's
own), run as the command an operator types."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from meterstream.dev.processes import meterstream_exe

pytestmark = [pytest.mark.services]

ACME, INITECH = 184467441, 1299827003
HOUR = datetime(2026, 11, 3, 10, tzinfo=UTC)


def report(dsn: str, *args: str) -> str:
    result = subprocess.run([meterstream_exe(), "report", *args], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "MS_POSTGRES__DSN": dsn, "MS_LOG_FORMAT": "json"})
    assert result.returncode == 0, result.stderr
    return result.stdout


async def seed(pg: asyncpg.Connection) -> None:
    await pg.execute("INSERT INTO customers (customer_id, name) VALUES ($1, 'Acme'), ($2, 'Initech')", ACME, INITECH)
    usage = [  # customer, service, hour, requests, billable
        (ACME, 1, HOUR, 1000, 900), (ACME, 1, HOUR + timedelta(hours=1), 500, 450),
        (ACME, 2, HOUR, 30, 30), (INITECH, 1, HOUR, 12_345, 12_000),
        (0, 1, HOUR, 77, 0),
        (ACME, 1, HOUR - timedelta(days=40), 999_999, 999_999),  # outside the period
    ]
    await pg.executemany("INSERT INTO usage_records (customer_id, service_type, window_start, requests, "
                         "billable_requests) VALUES ($1, $2, $3, $4, $5)", usage)
    now = datetime.now(UTC)
    events = [  # id, customer, service, kind, observed, limit, window, at
        (f"{ACME}:-:spend_warning:rolling_30d:1", ACME, None, "spend_warning", 8_000_000_000, 10_000_000_000,
         "rolling_30d", now - timedelta(hours=2)),
        (f"{ACME}:-:spend_cap_reached:rolling_30d:1", ACME, None, "spend_cap_reached", 10_000_000_000,
         10_000_000_000, "rolling_30d", now - timedelta(hours=1)),
        (f"{INITECH}:1:rate_exceeded:r0:1", INITECH, 1, "rate_exceeded", 12, 5, "r0", now - timedelta(minutes=5)),
        (f"{INITECH}:1:rate_exceeded:r0:2", INITECH, 1, "rate_exceeded", 12, 5, "r0", now - timedelta(days=3)),
    ]
    await pg.executemany("INSERT INTO limit_events (event_id, customer_id, service_type, kind, observed, "
                         "limit_value, window_label, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", events)


async def test_usage_report_per_customer_and_service(pg_dsn: str, pg: asyncpg.Connection) -> None:
    await seed(pg)
    lines = json.loads(report(pg_dsn, "usage", "--from", "2026-11-01", "--to", "2026-12-01", "--format", "json"))
    assert [(x["customer_id"], x["service"], x["requests"], x["billable_requests"], x["charges_micros"],
             x["charges_usd"]) for x in lines] == [
        (0, "seal", 77, 0, 0, "0.0000"),
        (ACME, "seal", 1500, 1350, 135_000, "0.1350"),
        (ACME, "grpc", 30, 30, 3_000, "0.0030"),
        (INITECH, "seal", 12_345, 12_000, 1_200_000, "1.2000"),
    ]
    assert [x["customer"] for x in lines] == ["unauthenticated", "Acme", "Acme", "Initech"]
    # one customer; the period's end is exclusive (the second hour is left out)
    only = json.loads(report(pg_dsn, "usage", "--from", "2026-11-03T10:00", "--to", "2026-11-03T11:00",
                             "--customer", str(ACME), "--format", "json"))
    assert [(x["service"], x["requests"]) for x in only] == [("seal", 1000), ("grpc", 30)]


async def test_usage_report_formats(pg_dsn: str, pg: asyncpg.Connection) -> None:
    await seed(pg)
    rows = list(csv.DictReader(io.StringIO(report(pg_dsn, "usage", "--from", "2026-11-01", "--to", "2026-12-01",
                                                   "--format", "csv"))))
    assert list(rows[0]) == ["customer_id", "customer", "service", "requests", "billable_requests",
                             "charges_micros", "charges_usd"]
    assert rows[-1]["customer"] == "Initech" and rows[-1]["charges_usd"] == "1.2000"
    table = report(pg_dsn, "usage", "--from", "2026-11-01", "--to", "2026-12-01")
    assert "Initech" in table and "12345" in table and "1.2000" in table
    empty = json.loads(report(pg_dsn, "usage", "--from", "2020-01-01", "--to", "2020-02-01", "--format", "json"))
    assert empty == []


def test_usage_report_refuses_an_empty_period() -> None:
    result = subprocess.run([meterstream_exe(), "report", "usage", "--from", "2026-11-02", "--to", "2026-11-01"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--to must be after --from" in result.stderr


async def test_limits_report_recent_events_newest_first(pg_dsn: str, pg: asyncpg.Connection) -> None:
    await seed(pg)
    events = json.loads(report(pg_dsn, "limits", "--format", "json"))  # the last 24 hours
    assert [(e["customer"], e["kind"]) for e in events] == [
        ("Initech", "rate_exceeded"), ("Acme", "spend_cap_reached"), ("Acme", "spend_warning")]
    assert events[0]["service"] == "seal" and events[1]["service"] == "-"
    assert events[0]["observed"] == 12 and events[0]["limit"] == 5
    week = json.loads(report(pg_dsn, "limits", "--since", (datetime.now(UTC) - timedelta(days=7)).strftime("%Y-%m-%d"),
                             "--customer", str(INITECH), "--format", "json"))
    assert len(week) == 2
    one = json.loads(report(pg_dsn, "limits", "--kind", "spend_warning", "--format", "json"))
    assert [e["event_id"] for e in one] == [f"{ACME}:-:spend_warning:rolling_30d:1"]
    assert len(json.loads(report(pg_dsn, "limits", "--limit", "1", "--format", "json"))) == 1
    assert "spend_cap_reached" in report(pg_dsn, "limits")


def test_a_database_without_the_tables_is_one_line(empty_pg_dsn: str) -> None:
    result = subprocess.run([meterstream_exe(), "report", "limits"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "MS_POSTGRES__DSN": empty_pg_dsn})
    assert result.returncode == 1
    assert result.stderr.strip() == 'Error: postgres: UndefinedTableError: relation "limit_events" does not exist'
