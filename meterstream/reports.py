"""`meterstream report`: usage per customer and service (usage_records) and recent limit events
(limit_events), as a table, CSV or JSON (docs/operations.md)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime

import asyncpg
from rich.console import Console
from rich.table import Table

from meterstream.schemas.enums import ServiceType
from meterstream.schemas.money import MICROS_PER_DOLLAR, PRICE_PER_BILLABLE_REQUEST_MICROS

FORMATS = ("table", "csv", "json")


@dataclass(frozen=True)
class UsageLine:
    customer_id: int
    customer: str
    service: str
    requests: int
    billable_requests: int
    charges_micros: int
    charges_usd: str


@dataclass(frozen=True)
class LimitLine:
    at: str
    customer_id: int
    customer: str
    service: str
    kind: str
    observed: int
    limit: int
    window: str
    event_id: str


def dollars(micros: int) -> str:
    """Exact: charges are whole multiples of 100 µ$, so four decimals say them all."""
    whole, part = divmod(micros, MICROS_PER_DOLLAR)
    return f"{whole}.{part // 100:04d}"


def _service(code: int | None) -> str:
    return "-" if code is None else ServiceType(code).name.lower()


def _customer(customer_id: int, name: str | None) -> str:
    return name if name is not None else ("unauthenticated" if customer_id == 0 else "")


async def usage(conn: asyncpg.Connection, start: datetime, end: datetime, customer: int | None) -> list[UsageLine]:
    """Requests, billable requests and charges per customer and service, over the hours of
    usage_records that start in [start, end)."""
    rows = await conn.fetch(
        """SELECT u.customer_id, c.name, u.service_type,
                  sum(u.requests)::bigint AS requests, sum(u.billable_requests)::bigint AS billable
             FROM usage_records u LEFT JOIN customers c ON c.customer_id = u.customer_id
            WHERE u.window_start >= $1 AND u.window_start < $2 AND ($3::integer IS NULL OR u.customer_id = $3)
            GROUP BY u.customer_id, c.name, u.service_type
            ORDER BY u.customer_id, u.service_type""", start, end, customer)
    return [UsageLine(r["customer_id"], _customer(r["customer_id"], r["name"]), _service(r["service_type"]),
                      r["requests"], r["billable"], r["billable"] * PRICE_PER_BILLABLE_REQUEST_MICROS,
                      dollars(r["billable"] * PRICE_PER_BILLABLE_REQUEST_MICROS))
            for r in rows]


async def limits(conn: asyncpg.Connection, since: datetime, customer: int | None, kind: str | None,
                 count: int) -> list[LimitLine]:
    """The latest ``count`` limit events at or after ``since``, newest first."""
    rows = await conn.fetch(
        """SELECT e.event_id, e.customer_id, c.name, e.service_type, e.kind, e.observed, e.limit_value,
                  e.window_label, e.at
             FROM limit_events e LEFT JOIN customers c ON c.customer_id = e.customer_id
            WHERE e.at >= $1 AND ($2::integer IS NULL OR e.customer_id = $2) AND ($3::text IS NULL OR e.kind = $3)
            ORDER BY e.at DESC, e.event_id DESC LIMIT $4""", since, customer, kind, count)
    return [LimitLine(r["at"].isoformat().replace("+00:00", "Z"), r["customer_id"],
                      _customer(r["customer_id"], r["name"]), _service(r["service_type"]), r["kind"],
                      r["observed"], r["limit_value"], r["window_label"], r["event_id"])
            for r in rows]


def render(lines: Sequence[UsageLine] | Sequence[LimitLine], fmt: str, title: str,
           columns: Sequence[str]) -> str:
    """``columns``: the fields of the lines, in order (also the CSV header and the JSON keys)."""
    records = [asdict(line) for line in lines]
    if fmt == "json":
        return json.dumps(records, indent=2) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        return out.getvalue()
    table = Table(title=title, title_justify="left")
    numeric = {"customer_id", "requests", "billable_requests", "charges_micros", "charges_usd", "observed", "limit"}
    for column in columns:
        table.add_column(column, justify="right" if column in numeric else "left")
    for record in records:
        table.add_row(*(str(record[c]) for c in columns))
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(table)
    return console.file.getvalue()  # type: ignore[attr-defined]


USAGE_COLUMNS = ("customer_id", "customer", "service", "requests", "billable_requests", "charges_micros", "charges_usd")
LIMIT_COLUMNS = ("at", "customer_id", "customer", "service", "kind", "observed", "limit", "window", "event_id")
