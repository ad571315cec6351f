"""Worker benchmark: `meterstream worker` beside a bare aiokafka loop, each on one core.

    python -m bench.worker [--records N] [--customers C] [--repeat R] [--unnamed-file]

1. Throughput: the corpus of meterstream/dev/corpus.py with N ordinary records is produced to a fresh
   haproxy.logs; the bare loop (aiokafka ``getmany``, the same validation, resolution and
   per-minute, per-second and per-day aggregation in plain dicts, nothing published) reads
   it, then the worker (resolve + meter, publishing meter.resolved, meter.usage,
   meter.breaches and its changelogs, every batch acknowledged before it commits) does.
   Records/s of both (and CPU µs per record: steadier than rates on a shared machine), their
   ratio, the worker's peak RSS. Both run on core 0, the broker on core 1.
2. State: C customers x 3 services (keys, instances, customer states) and one record per
   (customer, service); the worker's resident memory at rest once it has applied them all.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from collections import defaultdict
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.common import WORK, cpu_seconds, peak_rss_mib, pin_broker, produce_all, rss_mib, services, unpin_broker
from meterstream import settings as settings_mod
from meterstream.dev import metrics
from meterstream.dev.corpus import build
from meterstream.dev.processes import Process
from meterstream.kafka import delete_topics_with_prefix, ensure_topics, partitions_of
from meterstream.kafka_clients import client_kwargs
from meterstream.meter.config_view import ConfigView
from meterstream.meter.resolve import resolve
from meterstream.schemas import topics
from meterstream.schemas.config import ApiKeyState, CustomerState, InstanceState
from meterstream.schemas.enums import Network, ServiceType, Tier, TrafficType
from meterstream.schemas.records import LogRecord, SourcePosition, is_billable
from meterstream.schemas.topics import key_of
from meterstream.schemas.wire import decode, encode


async def produce(settings: settings_mod.Settings, config: list, records: list[tuple[bytes, bytes]]) -> None:
    logs = settings.topic(topics.HAPROXY_LOGS)
    await produce_all(settings.kafka.bootstrap, [*((settings.topic(t), k, v) for t, k, v in config),
                                                 *((logs, k, v) for k, v in records)])


async def bare_loop(settings: settings_mod.Settings, config: list, total: int) -> tuple[float, float]:
    """Reads haproxy.logs with getmany and aggregates in dicts, on core 0; returns (records/s,
    CPU µs per record)."""
    os.sched_setaffinity(0, {0})
    view = ConfigView()
    for topic, key, value in config:
        view.apply(topic, key, value)
    name = settings.topic(topics.HAPROXY_LOGS)
    consumer = AIOKafkaConsumer(**client_kwargs(settings.kafka), enable_auto_commit=False,
                                max_partition_fetch_bytes=4 << 20)
    await consumer.start()
    parts = [TopicPartition(name, p) for p in await partitions_of(settings, name)]
    consumer.assign(parts)
    await consumer.seek_to_beginning(*parts)
    usage: dict = defaultdict(lambda: [0] * 7)
    cpu = 0.0
    seconds: dict = defaultdict(int)
    days: dict = defaultdict(int)
    seen = 0
    started = None
    while seen < total:
        batch = await consumer.getmany(timeout_ms=500, max_records=5000)
        if started is None:
            started, cpu = time.perf_counter(), time.process_time()
        for messages in batch.values():
            for m in messages:
                r = decode(LogRecord, m.value)
                customer, _ = resolve(view.keys, r.api_key_fp, r.service_type, r.event_type)
                w = usage[(customer, r.service_type, r.network, r.ts - r.ts % 60_000)]
                w[0] += 1
                billable = is_billable(r.traffic_type, r.status)
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
    cpu_us = (time.process_time() - cpu) / total * 1e6
    await consumer.stop()
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    return total / elapsed, cpu_us


def metered(worker: Process) -> float:
    """Records the worker is done with: metered (applied or a repeat) or refused, on their
    own partition or after being forwarded to their customer's."""
    try:
        text = worker.scrape(timeout=0)
    except OSError:
        return 0.0
    return metrics.total(text, "meterstream_worker_records_total", outcome=("applied", "repeat", "rejected"))


def run_worker(settings: settings_mod.Settings, total: int, log: Path,
               rest_s: float = 0.0) -> tuple[float, float, float, float]:
    """Starts the worker on core 0; returns (records/s from its first to its last record, CPU
    µs per record meanwhile, peak RSS MiB, RSS MiB ``rest_s`` after the last record)."""
    env = {"MS_KAFKA__BOOTSTRAP": settings.kafka.bootstrap, "MS_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
           "MS_WORKER__APP_ID": f"meterstream-worker-{uuid.uuid4().hex[:8]}"}  # each run from the start
    worker = Process(["worker"], env, log, wrap=["taskset", "-c", "0"]).start()
    proc = worker.proc
    assert proc is not None
    try:
        first = None
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the worker exited with {proc.returncode}; see {log}")
            done = metered(worker)
            if done and first is None:
                first = (time.perf_counter(), done, cpu_seconds(proc.pid))
            if done >= total:
                break
            time.sleep(0.1)
        else:
            raise TimeoutError(f"the worker did not finish {total} records; see {log}")
        end, cpu = time.perf_counter(), cpu_seconds(proc.pid)
        assert first is not None
        rate = (total - first[1]) / (end - first[0]) if end > first[0] else float("nan")
        cpu_us = (cpu - first[2]) / max(total - first[1], 1) * 1e6
        time.sleep(rest_s)
        return rate, cpu_us, peak_rss_mib(proc.pid), rss_mib(proc.pid)
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
            config += [(topics.METER_INSTANCES, key_of(inst), encode(inst)),
                       (topics.METER_APIKEYS, key_of(key), encode(key))]
            rec = LogRecord(ts=ts + c % 60_000, request_id=f"s{c}-{int(service)}", client_ip="10.0.0.1", api_key_fp=fp,
                            service_type=service, network=Network.MAINNET, server_id=17,
                            traffic_type=TrafficType.GUARANTEED, status=200, bytes_sent=10,
                            customer_id=c, src=SourcePosition(stream="bench-state:1:1:x", offset=c * 4 + int(service)))
            records.append((key_of(rec), encode(rec)))
    return config, records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=1, help="throughput runs (medians are printed)")
    parser.add_argument("--unnamed-file", action="store_true",
                        help="a third of the ordinary traffic from a frontend that does not log the customer "
                             "(forwarded between partitions); default: as deploy/haproxy/haproxy.cfg logs")
    args = parser.parse_args()
    dev = services()
    WORK.mkdir(parents=True, exist_ok=True)
    pin_broker(dev, 1)  # the measured processes run on core 0
    try:
        corpus = build(bulk=args.records, now_ms=time.time_ns() // 1_000_000, unnamed_file=args.unnamed_file)
        settings = settings_mod.load(None, kafka={"bootstrap": dev.kafka.bootstrap,
                                                  "topic_prefix": f"bench.w{uuid.uuid4().hex[:6]}."})
        asyncio.run(ensure_topics(settings, partitions=4))
        encoded = corpus.encoded()
        asyncio.run(produce(settings, corpus.config, encoded))
        total = len(encoded)
        named = "a third from a frontend that does not name the customer" if args.unnamed_file else \
            "HAProxy names each key's customer"
        print(f"corpus: {total} records ({args.records} ordinary; {named}), 4 partitions; "
              f"worker and bare loop on core 0, the broker on core 1; load {os.getloadavg()[0]:.1f}")
        bare_runs, worker_runs = [], []
        for _ in range(args.repeat):
            bare_runs.append(asyncio.run(bare_loop(settings, corpus.config, total)))
            worker_runs.append(run_worker(settings, total, WORK / "worker-throughput.log"))
        bare = statistics.median(r for r, _ in bare_runs)
        bare_cpu = statistics.median(c for _, c in bare_runs)
        rate = statistics.median(r[0] for r in worker_runs)
        cpu = statistics.median(r[1] for r in worker_runs)
        peak = max(r[2] for r in worker_runs)
        print(f"bare aiokafka getmany loop : {bare:>10,.0f} records/s, {bare_cpu:5.1f} CPU µs/record")
        print(f"meterstream worker         : {rate:>10,.0f} records/s, {cpu:5.1f} CPU µs/record  "
              f"({rate / bare:.2f}x the bare loop), peak RSS {peak:.0f} MiB")
        if args.repeat > 1:
            print(f"  runs: bare {[round(r) for r, _ in bare_runs]}, worker {[round(r[0]) for r in worker_runs]}")
        asyncio.run(delete_topics_with_prefix(settings))

        settings = settings_mod.load(None, kafka={"bootstrap": dev.kafka.bootstrap,
                                                  "topic_prefix": f"bench.s{uuid.uuid4().hex[:6]}."})
        asyncio.run(ensure_topics(settings, partitions=4))
        config, records = state_corpus(args.customers)
        asyncio.run(produce(settings, config, records))
        _, _, peak, rss = run_worker(settings, len(records), WORK / "worker-state.log", rest_s=12.0)
        print(f"state of {args.customers:,} customers x 3 services: RSS {rss:.0f} MiB at rest "
              f"(peak {peak:.0f} MiB)")
        asyncio.run(delete_topics_with_prefix(settings))
    finally:
        unpin_broker(dev)


if __name__ == "__main__":
    main()
