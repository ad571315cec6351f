"""The README's local run: the whole pipeline on the embedded defaults over a sample log
(sync-config -> tail -> worker -> sink-postgres -> vault), then a report read back from
Postgres and the vault."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson

from meterstream import pg
from meterstream.dev import sample
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
        await _sync_config(settings, say)
        await _ingest(settings, say, workdir)
        await _meter(settings, say, workdir)
        await _persist(conn, settings, say)
        entries = await _vault(conn, settings, say, workdir)
        await _report(conn, say)
        await _report_logs(conn, settings, say)
        await _report_usage(conn, say)
        await _report_events(conn, say)
        _report_vault(entries, say)
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
    dead = [orjson.loads(v) for _, v in await read_to_end(settings, settings.topic(topics.HAPROXY_LOGS_REJECTED))
            if v is not None]
    reasons = Counter(d["reason"] for d in dead)
    say(f"haproxy.logs.rejected: {len(dead)} dead letters"
        + (" (" + ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())) + ")" if dead else ""))



async def _sync_config(settings: Settings, say: Callable[[str], None]) -> None:
    from meterstream.meter.config_sync import ConfigSync

    published = await ConfigSync(settings).publish_once()
    say(f"sync-config: {published} configuration states published to meter.apikeys, meter.instances, "
        "meter.customers")


async def _meter(settings: Settings, say: Callable[[str], None], workdir: Path) -> None:
    """`meterstream worker` (a faust worker, so its own process) until it has committed the
    end of haproxy.logs and of meter.resolved; then SIGTERM."""
    import asyncio

    from meterstream.dev.processes import Process
    from meterstream.dev.topics import wait_caught_up

    workdir.mkdir(parents=True, exist_ok=True)
    worker = Process(["worker"], {}, workdir / "worker.log").start()

    def running() -> None:
        if not worker.running():
            code = worker.proc.returncode if worker.proc is not None else None
            raise RuntimeError(f"meterstream worker exited with {code}; see {worker.log}")

    try:
        took = await wait_caught_up(settings, f"{settings.kafka.topic_prefix}{settings.worker.app_id}",
                                    [settings.topic(topics.HAPROXY_LOGS), settings.topic(topics.METER_RESOLVED)],
                                    180, check=running, what=f"the worker (see {worker.log})")
    finally:
        code: int | None
        if worker.running():
            code = await asyncio.to_thread(worker.terminate, 60)
        else:
            code = worker.proc.returncode if worker.proc is not None else None
    usage = sum(1 for _ in await read_to_end(settings, settings.topic(topics.METER_USAGE)))
    breaches = sum(1 for _ in await read_to_end(settings, settings.topic(topics.METER_BREACHES)))
    say(f"worker: meterstream worker metered haproxy.logs in {took:.1f} s (exit {code}); "
        f"meter.usage holds {usage} window updates, meter.breaches {breaches} limit events")


async def _vault(conn, settings: Settings, say: Callable[[str], None], workdir: Path):  # noqa: ANN001, ANN202
    from meterstream.sinks.vault import Vault

    directory = Path(settings.vault.directory)
    if not directory.is_absolute():
        directory = workdir / directory
    vault_settings = settings.model_copy(update={"vault": settings.vault.model_copy(
        update={"directory": str(directory), "map_path": settings.vault.map_path or str(directory / "vault.map")})})
    vault = Vault(vault_settings)
    await vault.prepare()
    state = await vault.build_once(conn)
    await vault.producer.stop()
    latest = await conn.fetchrow("SELECT version, content_hash, path FROM vault_versions ORDER BY version DESC LIMIT 1")
    say(f"vault: version {latest['version']} ({latest['path']}, sha256 {latest['content_hash'][:12]}...), "
        f"HAProxy map {vault.map_path} ({len(state.map_lines)} keys); "
        f"read it back with: meterstream vault decrypt {latest['path']}")
    return state.entries


async def _report_usage(conn, say: Callable[[str], None]) -> None:  # noqa: ANN001
    rows = await conn.fetch(
        """SELECT u.customer_id, COALESCE(c.name, '(unauthenticated)') AS name, u.service_type,
                  sum(u.requests)::bigint AS requests, sum(u.billable_requests)::bigint AS billable,
                  sum(u.client_errors)::bigint AS c4xx, sum(u.server_errors)::bigint AS c5xx
           FROM usage_records u LEFT JOIN customers c USING (customer_id)
           GROUP BY 1, 2, 3 ORDER BY 1, 3""")
    say("")
    say("usage per customer (usage_records, rolled up from the worker's minute windows):")
    say(f"  {'customer':>10}  {'name':<20} {'service':<8} {'requests':>8} {'billable':>8} {'4xx':>5} {'5xx':>5}"
        f" {'charges':>10}")
    for r in rows:
        service = ServiceType(r["service_type"]).name.lower()
        charges = format_cents(r["billable"] // 100)  # 100 µ$ a billable request: 1 cent per 100
        say(f"  {r['customer_id']:>10}  {r['name']:<20} {service:<8} {r['requests']:>8} {r['billable']:>8} "
            f"{r['c4xx']:>5} {r['c5xx']:>5} {charges:>10}")


async def _report_events(conn, say: Callable[[str], None]) -> None:  # noqa: ANN001
    rows = await conn.fetch("SELECT event_id, kind, customer_id, observed, limit_value, window_label "
                            "FROM limit_events ORDER BY at, event_id")
    say("")
    say(f"limit events (limit_events, {len(rows)}):")
    for r in rows:
        unit = "µ$" if r["kind"].startswith(("spend", "balance")) else ""
        say(f"  {r['kind']:<18} customer {r['customer_id']:>10}  observed {r['observed']}{unit} "
            f"limit {r['limit_value']}{unit}  ({r['event_id']})")


def _report_vault(entries: list, say: Callable[[str], None]) -> None:
    say("")
    say("the vault (MA_VAULT) as HAProxy enforces it:")
    for e in entries:
        services = ", ".join(f"{name} {s.tier.value} {s.guaranteed_rps} rps" + ("" if s.enabled else " (disabled)")
                             for name, s in sorted(e.services.items()))
        say(f"  customer:{e.customer_id:<10} {e.status.value:<9} {len(e.api_keys)} keys; {services}")
