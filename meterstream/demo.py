"""The README's local run: everything on the embedded defaults, then a report from Postgres."""

from __future__ import annotations

from collections.abc import Callable

from meterstream import pg, sample
from meterstream.kafka import ensure_topics
from meterstream.schemas.apikeys import fingerprint_to_hex
from meterstream.schemas.enums import ServiceType
from meterstream.schemas.migrate import migrate
from meterstream.schemas.money import format_cents
from meterstream.settings import Settings


async def run(settings: Settings, say: Callable[[str], None]) -> None:
    conn = await pg.connect(settings)
    try:
        applied = await migrate(conn)
        say("postgres: migrations " + (", ".join(f"{m.version:04d}_{m.name}" for m in applied)
                                        if applied else "already applied"))
        created = await ensure_topics(settings)
        say("kafka: topics " + (", ".join(created) if created else "already exist"))
        loaded = await sample.load(conn, settings)
        say(f"postgres: sample loaded from {sample.sample_file()} "
            f"({loaded.customers} customers, {loaded.instances} service instances, "
            f"{loaded.api_keys} API keys, {loaded.seal_keys} seal keys; existing rows kept)")
        await _report(conn, say)
    finally:
        await conn.close()


async def _report(conn, say: Callable[[str], None]) -> None:  # noqa: ANN001
    say("")
    say("customers in Postgres:")
    customers = await conn.fetch(
        "SELECT customer_id, name, status, spend_window, spend_cap_cents, balance_cents "
        "FROM customers ORDER BY name"
    )
    for c in customers:
        say(f"  {c['customer_id']:>10}  {c['name']:<22} {c['status']:<9} "
            f"cap {format_cents(c['spend_cap_cents'])} ({c['spend_window']}), "
            f"balance {format_cents(c['balance_cents'])}")
        for s in await conn.fetch(
            "SELECT service_type, tier, enabled, config::text AS config FROM service_instances "
            "WHERE customer_id = $1 ORDER BY service_type", c["customer_id"]
        ):
            extra = "" if s["config"] == "{}" else f" {s['config']}"
            state = "" if s["enabled"] else " (disabled)"
            say(f"              service {ServiceType(s['service_type']).name.lower():<8} "
                f"tier {s['tier']}{extra}{state}")
        for k in await conn.fetch(
            "SELECT api_key_fp, service_type, status FROM api_keys WHERE customer_id = $1 "
            "ORDER BY api_key_fp", c["customer_id"]
        ):
            say(f"              key fp {fingerprint_to_hex(k['api_key_fp'])} "
                f"({ServiceType(k['service_type']).name.lower()}, {k['status']})")
