"""Postgres sink benchmark: `meterstream sink-postgres` beside `psql \\copy`.

    python -m bench sink [--rows N [N ...]]
    python -m bench sink --scale       # 100,000, 1,000,000 and 5,000,000 rows (cost grows linearly)

For each N: produces N LogRecords to a fresh topic, then times the sink (on CPU 0, the broker on
CPU 1) from its process start until its stored offsets cover them all, in a fresh migrated
database, sampling its memory. The rows it wrote are exported to CSV and loaded with
`psql \\copy` (on CPU 0 too) into an identical table (same columns, constraints and indexes) in
another fresh database. Prints, per N: rows/s of both and their ratio (the goal:
0.9), the sink's rate once its first batch is committed (start-up left out), its CPU time per
row, and its peak and final resident memory (flat as N grows: memory is bounded by a batch).
Then where the time went: the sink's first commit and its CPU per row after it, the broker's
CPU per row, and, sampled every 20 ms, the CPU time of the sink's and psql's Postgres backends
per row and on which core they ran, and how often the sink was sleeping (waiting).

    python -m bench sink --pin-backend  # the sink's backend on CPU 1 (psql's as always)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer

from bench.common import WORK, cpu_seconds, fresh_db, peak_rss_mib, pin_broker, rss_mib, services, unpin_broker
from meterstream import settings as settings_mod
from meterstream.dev.databases import drop_database, dsn_of
from meterstream.dev.services.system import read_pid
from meterstream.kafka import ensure_topics
from meterstream.kafka_clients import client_kwargs
from meterstream.schemas.enums import FeType, Network, ServiceType, TrafficType
from meterstream.schemas.records import LogRecord, SourcePosition
from meterstream.schemas.topics import key_of
from meterstream.schemas.wire import encode

SCALE = (100_000, 1_000_000, 5_000_000)


def record(i: int) -> LogRecord:
    return LogRecord(ts=1_795_600_000_000 + i, request_id=f"0A000001:{i:08X}_bench",
                     client_ip=f"10.0.{i % 250}.{i % 200}",
                     api_key_fp=(i % 5000) + 1, service_type=ServiceType(1 + i % 3), network=Network(i % 4),
                     server_id=16 + i % 5, fe_type=FeType(2), traffic_type=TrafficType.GUARANTEED, event_type=0,
                     key_metadata="S", status=200, bytes_sent=100 + i % 5000,
                     path="v1/fetch_k", TR=0, Tw=0, Tc=1, Tr=i % 40, Ta=i % 40 + 2, backend_id=3,
                     termination_state="----", config_hex="00000000",
                     src=SourcePosition(stream="bench:1:2:abcdef", offset=i * 400))


async def produce(settings: settings_mod.Settings, rows: int) -> None:
    """The records, sent in batches the producer builds per partition (round robin): millions
    of per-message sends would take minutes before the measurement starts."""
    topic = settings.topic("haproxy.logs")
    producer = AIOKafkaProducer(**client_kwargs(settings.kafka), acks="all", enable_idempotence=True,
                                max_batch_size=512 * 1024)
    await producer.start()
    try:
        partitions = sorted(await producer.partitions_for(topic))
        builders = {p: producer.create_batch() for p in partitions}
        sent: list[asyncio.Future] = []
        for i in range(rows):
            r = record(i)
            p = partitions[i % len(partitions)]
            key, value = key_of(r), encode(r)
            if builders[p].append(key=key, value=value, timestamp=None) is None:  # full
                sent.append(await producer.send_batch(builders[p], topic, partition=p))
                builders[p] = producer.create_batch()
                builders[p].append(key=key, value=value, timestamp=None)
                if len(sent) >= 32:
                    await asyncio.gather(*sent)
                    sent.clear()
        for p, builder in builders.items():
            if builder.record_count():
                sent.append(await producer.send_batch(builder, topic, partition=p))
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def _run_state(pid: int) -> tuple[int, str, int] | None:
    """Run time so far (ns, /proc/PID/schedstat), state and the CPU it last ran on (/proc/PID/stat)."""
    try:
        ran = int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (OSError, ValueError, IndexError):
        return None
    return ran, fields[0], int(fields[36])


class Backends:
    """Samples, while a client works, the CPU time of its Postgres backends (found in
    pg_stat_activity) and on which core they ran, and how often the client itself was
    waiting (sleeping) rather than running: where a row's wall time goes."""

    def __init__(self, conn: asyncpg.Connection, client: int, pin: int | None = None) -> None:
        self.conn, self.client, self.pin = conn, client, pin
        self.ran: dict[int, int] = {}  # backend pid -> run time (ns) at the last sample
        self.on_cpu: dict[int, int] = defaultdict(int)  # core -> backend run time (ns) since the first sample
        self.samples = self.client_sleeping = self.backend_running = self.both_waiting = 0

    async def sample(self) -> None:
        pids = await self.conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                                     "AND pid <> pg_backend_pid() AND backend_type = 'client backend'")
        client = _run_state(self.client)
        running = False
        for (pid,) in pids:
            state = _run_state(pid)
            if state is None:
                continue
            ran, st, cpu = state
            if pid in self.ran:
                self.on_cpu[cpu] += ran - self.ran[pid]
            elif self.pin is not None:  # a backend first seen: onto that core
                subprocess.run(["taskset", "-p", "-c", str(self.pin), str(pid)], capture_output=True)
            self.ran[pid] = ran
            running = running or st == "R"
        if client is not None:
            self.samples += 1
            self.client_sleeping += client[1] != "R"
            self.backend_running += running
            self.both_waiting += client[1] != "R" and not running

    def summary(self, rows: int) -> dict[str, float]:
        total = sum(self.on_cpu.values())
        n = max(1, self.samples)
        return {"backend_us": total / rows / 1e3, "backend_cpu0": self.on_cpu.get(0, 0) / total if total else 0.0,
                "client_waiting": self.client_sleeping / n, "backend_busy": self.backend_running / n,
                "idle": self.both_waiting / n}


async def measure(rows: int, dev, admin_dsn: str, pin_backend: bool = False) -> dict[str, Any]:  # noqa: ANN001
    settings = settings_mod.load(None, kafka={"bootstrap": dev.kafka.bootstrap,
                                              "topic_prefix": f"bench{uuid.uuid4().hex[:6]}."})
    await ensure_topics(settings, partitions=4)
    started = time.perf_counter()
    await produce(settings, rows)
    print(f"# produced {rows:,} records in {time.perf_counter() - started:.1f}s", flush=True)
    sink_dsn, copy_dsn = await fresh_db(admin_dsn), await fresh_db(admin_dsn)

    env = {**os.environ, "MS_KAFKA__BOOTSTRAP": settings.kafka.bootstrap,
           "MS_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix, "MS_POSTGRES__DSN": sink_dsn,
           "MS_SINK__TOPICS": '["haproxy.logs"]', "MS_SINK__CONSUMER": f"bench-{uuid.uuid4().hex[:6]}"}
    conn = await asyncpg.connect(sink_dsn)
    pin_broker(dev, 1)
    broker = read_pid(dev.kafka.pidfile)
    broker_cpu = cpu_seconds(broker) if broker else float("nan")
    try:
        started = time.perf_counter()
        proc = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-m", "meterstream.cli", "--log-level",
                                 "warning", "sink-postgres", "--http-port", "0"], env=env)
        peak, first = 0.0, None
        backends = Backends(conn, proc.pid, 1 if pin_backend else None)
        while (done := await conn.fetchval("SELECT coalesce(sum(next_offset), 0) FROM sink_offsets")) < rows:
            if done and first is None:
                first = (time.perf_counter(), int(done), cpu_seconds(proc.pid))
            peak = max(peak, peak_rss_mib(proc.pid))
            await backends.sample()
            if proc.poll() is not None:
                raise RuntimeError(f"the sink exited with {proc.returncode}")
            await asyncio.sleep(0.02)
        ended = time.perf_counter()
        await backends.sample()
        peak, final, cpu = max(peak, peak_rss_mib(proc.pid)), rss_mib(proc.pid), cpu_seconds(proc.pid)
        broker_cpu = cpu_seconds(broker) - broker_cpu if broker else float("nan")
        proc.terminate()
        proc.wait(60)
    finally:
        unpin_broker(dev)
    assert await conn.fetchval("SELECT count(*) FROM haproxy_raw_logs") == rows
    await conn.close()

    csv = WORK / "raw_logs.csv"
    psql = [str(dev.postgres._bin("psql")), "-X", "-q", "-v", "ON_ERROR_STOP=1"]  # noqa: SLF001
    subprocess.run([*psql, sink_dsn, "-c", f"\\copy haproxy_raw_logs TO '{csv}' CSV"], check=True)
    copy_conn = await asyncpg.connect(copy_dsn)
    copy_started = time.perf_counter()
    copying = asyncio.ensure_future(asyncio.to_thread(
        subprocess.run, ["taskset", "-c", "0", *psql, copy_dsn, "-c", f"\\copy haproxy_raw_logs FROM '{csv}' CSV"],
        check=True))
    copy_backends = Backends(copy_conn, os.getpid())
    while not copying.done():
        await copy_backends.sample()
        await asyncio.wait([copying], timeout=0.02)
    await copying
    copy_seconds = time.perf_counter() - copy_started
    await copy_conn.close()
    csv.unlink()

    for dsn in (sink_dsn, copy_dsn):
        await drop_database(admin_dsn, dsn.rsplit("/", 1)[1])
    sink_seconds = ended - started
    steady = (rows - first[1]) / (ended - first[0]) if first and first[1] < rows else float("nan")
    steady_cpu = (cpu - first[2]) / (rows - first[1]) * 1e6 if first and first[1] < rows else float("nan")
    return {"rows": rows, "copy": rows / copy_seconds, "sink": rows / sink_seconds,
            "ratio": copy_seconds / sink_seconds, "sink_pg": backends.summary(rows),
            "copy_pg": copy_backends.summary(rows),
            "steady": steady, "steady_cpu": steady_cpu,
            "first": (first[0] - started, first[1]) if first else (float("nan"), 0),
            "cpu_us": cpu / rows * 1e6, "broker_us": broker_cpu / rows * 1e6, "peak": peak, "final": final}


async def main_async(sizes: list[int], dev, pin_backend: bool = False) -> None:  # noqa: ANN001
    admin_dsn = dsn_of(dev.postgres.dsn, "postgres")
    results = [await measure(rows, dev, admin_dsn, pin_backend) for rows in sizes]
    copy = "psql \\copy"
    print(f"{'rows':>10} {copy:>12} {'sink':>10} {'ratio':>6} {'sink after':>11} {'sink CPU':>9} "
          f"{'peak RSS':>9} {'end RSS':>8}")
    print(f"{'':>10} {'rows/s':>12} {'rows/s':>10} {'':>6} {'1st batch':>11} {'us/row':>9} {'MiB':>9} {'MiB':>8}")
    for r in results:
        print(f"{r['rows']:>10,} {r['copy']:>12,.0f} {r['sink']:>10,.0f} {r['ratio']:>6.2f} {r['steady']:>11,.0f} "
              f"{r['cpu_us']:>9.1f} {r['peak']:>9.0f} {r['final']:>8.0f}")
    for r in results:
        print(f"# {r['rows']:,} sink: its first commit {r['first'][0]:.2f} s after its start ({r['first'][1]:,} rows); "
              f"after it, {r['steady_cpu']:.1f} us of CPU per row; the broker (on CPU 1) meanwhile "
              f"{r['broker_us']:.1f} us of CPU per row")
        for who in ("sink", "copy"):
            b = r[f"{who}_pg"]
            waiting = f", sink waiting {b['client_waiting']:.0%}, both waiting {b['idle']:.0%}" if who == "sink" else ""
            print(f"# {r['rows']:,} {who}: its Postgres backend {b['backend_us']:.1f} us CPU/row, "
                  f"{b['backend_cpu0']:.0%} of it on CPU 0; samples: backend running {b['backend_busy']:.0%}{waiting}")
    print("# sink rows/s: from its process start to the commit of the last row (Kafka to committed rows); "
          "ratio: sink/copy rows/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[300_000], help="one measurement per number")
    parser.add_argument("--scale", action="store_true", help=f"--rows {' '.join(map(str, SCALE))}")
    parser.add_argument("--pin-backend", action="store_true",
                        help="the sink's Postgres backend on CPU 1 (with the broker) as soon as it is seen, "
                             "as a Postgres on other cores or another host would be; psql's backend as always")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    dev = services()  # synchronous: before the event loop
    asyncio.run(main_async(list(SCALE) if args.scale else args.rows, dev, args.pin_backend))


if __name__ == "__main__":
    main()
