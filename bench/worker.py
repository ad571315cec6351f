"""Worker benchmark (issue 5): `meterstream worker` beside a bare aiokafka loop.

    python -m bench.worker [--records N] [--customers C]

1. Throughput: the corpus of tests/corpus.py with N ordinary records is produced to a fresh
   haproxy.logs; the bare loop (aiokafka ``getmany``, the same validation, resolution and
   per-minute, per-second and per-day aggregation in plain dicts, nothing published) reads
   it, then the worker (resolve + meter, publishing meter.resolved, meter.usage,
   meter.breaches and its changelogs, every batch acknowledged before it commits) does.
   Records/s of both, their ratio, the worker's peak RSS.
2. State: C customers x 3 services (keys, instances, customer states) and one record per
   (customer, service); the worker's resident memory once it has applied them all.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.common import WORK, peak_rss_mib, produce_all, services
from meterstream import settings as settings_mod
from meterstream.kafka import ensure_topics, partitions_of
from meterstream.meter.config_view import ConfigView
from meterstream.meter.resolve import resolve
from meterstream.schemas import topics
from meterstream.schemas.config import ApiKeyState, CustomerState, InstanceState
from meterstream.schemas.enums import ServiceType, Tier
from meterstream.schemas.records import LogRecord, SourcePosition
from meterstream.schemas.topics import key_of
from meterstream.schemas.wire import decode, encode
from tests.corpus import build


async def produce(settings: settings_mod.Settings, config: list, records: list[tuple[bytes, bytes]]) -> None:
    logs = settings.topic(topics.HAPROXY_LOGS)
    await produce_all(settings.kafka.bootstrap, [*((settings.topic(t), k, v) for t, k, v in config),
                                                 *((logs, k, v) for k, v in records)])


async def bare_loop(settings: settings_mod.Settings, config: list, total: int) -> float:
    """Reads haproxy.logs with getmany and aggregates in dicts; returns records/s."""
    view = ConfigView()
    for topic, key, value in config:
        view.apply(topic, key, value)
    name = settings.topic(topics.HAPROXY_LOGS)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap, enable_auto_commit=False,
                                max_partition_fetch_bytes=4 << 20)
    await consumer.start()
    parts = [TopicPartition(name, p) for p in await partitions_of(settings, name)]
    consumer.assign(parts)
    await consumer.seek_to_beginning(*parts)
    usage: dict = defaultdict(lambda: [0] * 7)
    seconds: dict = defaultdict(int)
    days: dict = defaultdict(int)
    seen = 0
    started = None
    while seen < total:
        batch = await consumer.getmany(timeout_ms=500, max_records=5000)
        started = started or time.perf_counter()
        for messages in batch.values():
            for m in messages:
                r = decode(LogRecord, m.value)
                customer, _ = resolve(view.keys, r.api_key_fp, r.service_type)
                w = usage[(customer, r.service_type, r.network, r.ts - r.ts % 60_000)]
                w[0] += 1
                billable = r.traffic_type.is_chargeable and 200 <= r.status <= 399
                w[1] += billable
                w[2] += r.bytes_sent
                w[3] += r.traffic_type.is_denied
                w[4] += 400 <= r.status <= 499
                w[5] += 500 <= r.status <= 599
                w[6] += max(r.Ta, 0)
                seconds[(customer, r.service_type, (r.server_id or 0) >> 4, r.ts // 1000)] += 1
                if billable:
                    days[(customer, r.ts // 86_400_000)] += 1
                seen += 1
    elapsed = time.perf_counter() - (started or time.perf_counter())
    await consumer.stop()
    return total / elapsed


def metric(port: int, name: str) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            body = r.read().decode()
    except OSError:
        return 0.0
    return sum(float(line.split()[-1]) for line in body.splitlines() if line.startswith(name + "{")
               and 'stage="meter"' in line)


def run_worker(settings: settings_mod.Settings, total: int, log: Path) -> tuple[float, float, float]:
    """Starts the worker; returns (records/s from its first to its last record, peak RSS MiB,
    RSS MiB at the end)."""
    port = 18_000 + os.getpid() % 1000
    env = {**os.environ, "MS_KAFKA__BOOTSTRAP": settings.kafka.bootstrap,
           "MS_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix}
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "meterstream.cli", "--log-format", "json", "worker",
                                 "--http-port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        first = None
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the worker exited with {proc.returncode}; see {log}")
            done = metric(port, "meterstream_worker_records_total")
            if done and first is None:
                first = (time.perf_counter(), done)
            if done >= total:
                break
            time.sleep(0.2)
        else:
            raise TimeoutError(f"the worker did not finish {total} records; see {log}")
        end = time.perf_counter()
        rate = (total - first[1]) / (end - first[0]) if first and end > first[0] else float("nan")
        rss = int(next(line for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                       if line.startswith("VmRSS:")).split()[1]) / 1024
        return rate, peak_rss_mib(proc.pid), rss
    finally:
        proc.terminate()
        proc.wait(60)


def state_corpus(customers: int) -> tuple[list, list[tuple[bytes, bytes]]]:
    config: list = []
    records: list[tuple[bytes, bytes]] = []
    ts = 1_795_165_200_000
    for c in range(1, customers + 1):
        state = CustomerState(customer_id=c, balance_micros=10**9)
        config.append((topics.METER_CUSTOMERS, key_of(state), encode(state)))
        for service in ServiceType:
            fp = c * 4 + int(service)
            inst = InstanceState(customer_id=c, service_type=service, tier=Tier.PRO)
            key = ApiKeyState(api_key_fp=fp, api_key_hash=f"{fp:064x}", customer_id=c, service_type=service)
            config += [(topics.METER_INSTANCES, key_of(inst), encode(inst)), (topics.METER_APIKEYS, key_of(key), encode(key))]
            rec = LogRecord(ts=ts + c % 60_000, request_id=f"s{c}-{int(service)}", client_ip="10.0.0.1", api_key_fp=fp,
                            service_type=service, network=1, server_id=17, traffic_type=1, status=200, bytes_sent=10,
                            src=SourcePosition(stream="bench-state:1:1:x", offset=c * 4 + int(service)))
            records.append((key_of(rec), encode(rec)))
    return config, records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--customers", type=int, default=100_000)
    args = parser.parse_args()
    dev = services()
    WORK.mkdir(parents=True, exist_ok=True)

    corpus = build(bulk=args.records, now_ms=time.time_ns() // 1_000_000)
    settings = settings_mod.load(None, kafka={"bootstrap": dev.kafka.bootstrap,
                                              "topic_prefix": f"bench.w{uuid.uuid4().hex[:6]}."})
    asyncio.run(ensure_topics(settings, partitions=4))
    encoded = corpus.encoded()
    asyncio.run(produce(settings, corpus.config, encoded))
    total = len(encoded)
    print(f"corpus: {total} records ({args.records} ordinary), 4 partitions")
    bare = asyncio.run(bare_loop(settings, corpus.config, total))
    print(f"bare aiokafka getmany loop : {bare:>10,.0f} records/s")
    rate, peak, _ = run_worker(settings, total, WORK / "worker-throughput.log")
    print(f"meterstream worker         : {rate:>10,.0f} records/s  ({rate / bare:.2f}x the bare loop), "
          f"peak RSS {peak:.0f} MiB")

    settings = settings_mod.load(None, kafka={"bootstrap": dev.kafka.bootstrap,
                                              "topic_prefix": f"bench.s{uuid.uuid4().hex[:6]}."})
    asyncio.run(ensure_topics(settings, partitions=4))
    config, records = state_corpus(args.customers)
    asyncio.run(produce(settings, config, records))
    _, peak, rss = run_worker(settings, len(records), WORK / "worker-state.log")
    print(f"state of {args.customers:,} customers x 3 services: RSS {rss:.0f} MiB (peak {peak:.0f} MiB)")


if __name__ == "__main__":
    main()
