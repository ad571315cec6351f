"""The README's local run: everything on the embedded defaults, then a report from Postgres."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson

from meterstream import pg, sample
from meterstream.kafka import ensure_topics, read_to_end
from meterstream.schemas import topics
from meterstream.schemas.apikeys import fingerprint_to_hex
from meterstream.schemas.enums import ServiceType
from meterstream.schemas.migrate import migrate
from meterstream.schemas.money import format_cents
from meterstream.settings import Settings


async def run(settings: Settings, say: Callable[[str], None], workdir: Path) -> None:
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
        await _ingest(settings, say, workdir)
        await _persist(conn, settings, say)
        await _report(conn, say)
        await _report_logs(conn, settings, say)
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


async def _ingest(settings: Settings, say: Callable[[str], None], workdir: Path) -> None:
    """Tail the sample log once into haproxy.logs (its checkpoint makes a rerun send nothing)."""
    from meterstream.ingest.tailer import Tailer

    log = workdir / "haproxy.log"
    created = sample.write_sample_log(log, settings)
    say(f"ingest: sample log {log} ({'written' if created else 'kept from an earlier run'})")
    tail_settings = settings.model_copy(update={"tail": settings.tail.model_copy(
        update={"paths": [str(log)], "checkpoint_path": str(workdir / "tail.checkpoint")})})
    tailer = Tailer(tail_settings, once=True)

    def done() -> int:
        return max((e.offset for e in tailer.checkpoint.streams.values()), default=0)

    before = done()
    await tailer.run()
    after = done()
    say(f"ingest: meterstream tail --once read {after - before} new bytes of {log.stat().st_size}")


async def _persist(conn, settings: Settings, say: Callable[[str], None]) -> None:  # noqa: ANN001
    """Run the Postgres sink until it has stored everything on its topics."""
    import asyncio

    from meterstream.kafka import end_offsets
    from meterstream.sinks.postgres_sink import PostgresSink

    sink = PostgresSink(settings)
    ends = {(t, p): end for t in sink.handlers for p, end in (await end_offsets(settings, t)).items()}
    task = asyncio.create_task(sink.run())
    try:
        for _ in range(600):
            stored = {(r["topic"], r["partition"]): r["next_offset"] for r in await conn.fetch(
                "SELECT topic, partition, next_offset FROM sink_offsets WHERE consumer = $1", sink.consumer_name)}
            if all(stored.get(tp, 0) >= end for tp, end in ends.items()):
                break
            await asyncio.sleep(0.1)
        else:
            raise TimeoutError("the sink did not catch up within 60 s")
    finally:
        sink.request_stop()
        await task
    rows = await conn.fetchval("SELECT count(*) FROM haproxy_raw_logs")
    say(f"sink-postgres: haproxy_raw_logs holds {rows} rows (offsets stored with them)")


async def _report_logs(conn, settings: Settings, say: Callable[[str], None]) -> None:  # noqa: ANN001
    """Requests per customer as Postgres holds them, and the dead letters from Kafka."""
    rows = await conn.fetch(
        """SELECT CASE WHEN r.api_key_fp IS NULL THEN '(no API key)'
                       WHEN c.name IS NULL THEN '(unknown key)'
                       WHEN k.status = 'revoked' THEN c.name || ' (revoked key)'
                       ELSE c.name END AS owner,
                  count(*) AS requests,
                  count(*) FILTER (WHERE r.traffic_type IN (1, 2) AND r.status_code BETWEEN 200 AND 399) AS billable
           FROM haproxy_raw_logs r
           LEFT JOIN api_keys k ON k.api_key_fp = r.api_key_fp
           LEFT JOIN customers c ON c.customer_id = k.customer_id
           GROUP BY 1 ORDER BY 2 DESC, 1""")
    messages = len(await read_to_end(settings, settings.topic(topics.HAPROXY_LOGS)))
    say("")
    say(f"haproxy_raw_logs in Postgres ({messages} messages on haproxy.logs):")
    say(f"  {'requests':>8} {'billable':>8}  key owner")
    for r in rows:
        say(f"  {r['requests']:>8} {r['billable']:>8}  {r['owner']}")
    dead = [orjson.loads(v) for _, v in await read_to_end(settings, settings.topic(topics.HAPROXY_LOGS_REJECTED))]
    reasons = Counter(d["reason"] for d in dead)
    say(f"haproxy.logs.rejected: {len(dead)} dead letters"
        + (" (" + ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())) + ")" if dead else ""))
    say("(per-customer usage windows, limit events and the vault come with the meter worker and the vault)")
