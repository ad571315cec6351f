"""Postgres sink benchmark (issue 6): `meterstream sink-postgres` beside `psql \\copy`.

    python -m bench.sink [--rows N]

Produces N LogRecords to a fresh topic, then times the sink (on CPU 0, the broker on CPU 1)
from start until its stored offsets cover them all, in a fresh migrated database. The rows it
wrote are exported to CSV and loaded with `psql \\copy` into an identical table (same columns,
constraints and indexes) in another fresh database: rows/s of both, their ratio, the sink's
peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid

import asyncpg

from bench.common import WORK, fresh_db, peak_rss_mib, pin_broker, produce_all, services, unpin_broker
from meterstream import settings as settings_mod
from meterstream.kafka import ensure_topics
from meterstream.schemas.records import LogRecord, SourcePosition
from meterstream.schemas.topics import key_of
from meterstream.schemas.wire import encode


def record(i: int) -> LogRecord:
    return LogRecord(ts=1_795_600_000_000 + i, request_id=f"0A000001:{i:08X}_bench", client_ip=f"10.0.{i % 250}.{i % 200}",
                     api_key_fp=(i % 5000) + 1, service_type=1 + i % 3, network=i % 4, server_id=16 + i % 5,
                     fe_type=2, traffic_type=1, event_type=0, key_metadata="S", status=200, bytes_sent=100 + i % 5000,
                     path="v1/fetch_k", TR=0, Tw=0, Tc=1, Tr=i % 40, Ta=i % 40 + 2, backend_id=3,
                     termination_state="----", config_hex="00000000",
                     src=SourcePosition(stream="bench:1:2:abcdef", offset=i * 400))


async def produce(settings: settings_mod.Settings, rows: int) -> None:
    topic = settings.topic("haproxy.logs")
    await produce_all(settings.kafka.bootstrap, ((topic, key_of(r), encode(r)) for r in map(record, range(rows))))


async def main_async(rows: int, dev) -> None:  # noqa: ANN001
    admin_dsn = dev.postgres.dsn.rsplit("/", 1)[0] + "/postgres"
    settings = settings_mod.load(None, kafka={"bootstrap": dev.kafka.bootstrap,
                                              "topic_prefix": f"bench{uuid.uuid4().hex[:6]}."})
    await ensure_topics(settings, partitions=4)
    started = time.perf_counter()
    await produce(settings, rows)
    print(f"# produced {rows:,} records in {time.perf_counter() - started:.1f}s")
    sink_dsn, copy_dsn = await fresh_db(admin_dsn), await fresh_db(admin_dsn)

    env = {**os.environ, "MS_KAFKA__BOOTSTRAP": settings.kafka.bootstrap,
           "MS_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix, "MS_POSTGRES__DSN": sink_dsn,
           "MS_SINK__TOPICS": '["haproxy.logs"]', "MS_SINK__CONSUMER": f"bench-{uuid.uuid4().hex[:6]}"}
    conn = await asyncpg.connect(sink_dsn)
    pin_broker(dev, 1)
    try:
        started = time.perf_counter()
        proc = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-m", "meterstream.cli", "--log-level",
                                 "warning", "sink-postgres", "--http-port", "0"], env=env)
        peak = 0.0
        while (await conn.fetchval("SELECT coalesce(sum(next_offset), 0) FROM sink_offsets")) < rows:
            peak = max(peak, peak_rss_mib(proc.pid))
            if proc.poll() is not None:
                raise RuntimeError(f"the sink exited with {proc.returncode}")
            await asyncio.sleep(0.05)
        sink_seconds = time.perf_counter() - started
        proc.terminate()
        proc.wait(60)
    finally:
        unpin_broker(dev)
    assert await conn.fetchval("SELECT count(*) FROM haproxy_raw_logs") == rows
    await conn.close()

    csv = WORK / "raw_logs.csv"
    psql = [str(dev.postgres._bin("psql")), "-X", "-q", "-v", "ON_ERROR_STOP=1"]  # noqa: SLF001
    subprocess.run([*psql, sink_dsn, "-c", f"\\copy haproxy_raw_logs TO '{csv}' CSV"], check=True)
    started = time.perf_counter()
    subprocess.run(["taskset", "-c", "0", *psql, copy_dsn, "-c", f"\\copy haproxy_raw_logs FROM '{csv}' CSV"],
                   check=True)
    copy_seconds = time.perf_counter() - started

    admin = await asyncpg.connect(admin_dsn)
    for dsn in (sink_dsn, copy_dsn):
        await admin.execute(f'DROP DATABASE "{dsn.rsplit("/", 1)[1]}" WITH (FORCE)')
    await admin.close()
    print(f"psql \\copy             {rows / copy_seconds:>10,.0f} rows/s")
    print(f"meterstream sink       {rows / sink_seconds:>10,.0f} rows/s (from process start, Kafka to committed rows)")
    print(f"ratio sink/copy        {copy_seconds / sink_seconds:>10.2f}")
    print(f"sink peak RSS          {peak:>10.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=300_000)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    dev = services()  # synchronous: before the event loop
    asyncio.run(main_async(args.rows, dev))


if __name__ == "__main__":
    main()
