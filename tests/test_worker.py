"""`meterstream worker` on the real broker: the corpus of meterstream/dev/corpus.py becomes exactly its
truth on meter.usage and meter.breaches, also when the worker is killed -9 again and again
while the records stream, and when one of two workers dies (a rebalance)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from meterstream.dev.corpus import BASE_TS, Corpus, build
from meterstream.dev.processes import Process
from meterstream.kafka_clients import client_kwargs
from meterstream.schemas import topics
from meterstream.schemas.usage import COUNTS
from meterstream.settings import Settings

pytestmark = pytest.mark.services


class Outputs:
    """Follows meter.usage, meter.breaches and the dead letters in the background."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.usage: dict[tuple, dict] = {}
        self.event_ids: list[str] = []
        self.events: dict[str, dict] = {}
        self.rejected: dict[str, int] = {}
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> Outputs:
        names = {self.settings.topic(n): n for n in (topics.METER_USAGE, topics.METER_BREACHES,
                                                     topics.HAPROXY_LOGS_REJECTED)}
        self.consumer = AIOKafkaConsumer(*names, **client_kwargs(self.settings.kafka),
                                         auto_offset_reset="earliest", enable_auto_commit=False)
        await self.consumer.start()

        async def run() -> None:
            while True:
                batch = await self.consumer.getmany(timeout_ms=300)
                for tp, messages in batch.items():
                    for m in messages:
                        try:
                            value = orjson.loads(m.value)
                        except (TypeError, orjson.JSONDecodeError):
                            continue  # a test's poison
                        self._take(names[tp.topic], value)

        self.task = asyncio.create_task(run())
        return self

    def _take(self, topic: str, v: dict) -> None:
        if topic == topics.METER_USAGE:
            key = (v["customer_id"], v["service_type"], v["network"], v["window_start"])
            if key not in self.usage or self.usage[key]["revision"] <= v["revision"]:
                self.usage[key] = v
        elif topic == topics.METER_BREACHES:
            self.event_ids.append(v["event_id"])
            self.events[v["event_id"]] = v
        else:
            self.rejected[v["reason"]] = self.rejected.get(v["reason"], 0) + 1

    def totals(self) -> dict[tuple, dict[str, int]]:
        return {k: {n: v[n] for n in COUNTS} for k, v in self.usage.items()}

    async def until_truth(self, corpus: Corpus, timeout: float, check: Callable[[], bool] | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.totals() == corpus.usage and set(self.events) == set(corpus.events):
                return
            if check is not None:
                check()
            await asyncio.sleep(0.5)
        missing = {k: v for k, v in corpus.usage.items() if self.totals().get(k) != v}
        raise AssertionError(f"{len(missing)} windows differ from the truth, e.g. "
                             f"{list(missing.items())[:2]} got {[self.totals().get(k) for k in list(missing)[:2]]}; "
                             f"events {sorted(self.events)} vs {sorted(corpus.events)}")

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        await self.consumer.stop()


async def publish(settings: Settings, corpus: Corpus, *, config: bool = True, records: slice = slice(None),
                  pace: float = 0.0) -> None:
    producer = AIOKafkaProducer(**client_kwargs(settings.kafka), enable_idempotence=True,
                                linger_ms=5)
    await producer.start()
    try:
        if config:
            for topic, key, value in corpus.config:
                await producer.send(settings.topic(topic), value, key=key)
        encoded = corpus.encoded()[records]
        logs = settings.topic(topics.HAPROXY_LOGS)
        for i, (key, value) in enumerate(encoded):
            await producer.send(logs, value, key=key)
            if pace and i % 1000 == 999:
                await producer.flush()
                await asyncio.sleep(pace)
        await producer.flush()
    finally:
        await producer.stop()


def worker(settings: Settings, tmp: Path, name: str = "worker") -> Process:
    env = {"MS_KAFKA__BOOTSTRAP": settings.kafka.bootstrap, "MS_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
           "MS_WORKER__COMMIT_INTERVAL_S": "0.5"}
    return Process(["worker"], env, tmp / f"{name}.log")


def check_exact(out: Outputs, corpus: Corpus) -> None:
    assert out.totals() == corpus.usage
    got = {i: (e["kind"], e["observed"], e["limit"], e["at"]) for i, e in out.events.items()}
    assert got == {i: (k.value, o, lim, at) for i, (k, o, lim, at) in corpus.events.items()}
    duplicates = {i for i in out.event_ids if out.event_ids.count(i) > 1}
    assert not duplicates, f"event ids published twice: {duplicates}"


async def test_corpus_becomes_its_truth(ms_topics: Settings, tmp_path: Path) -> None:
    corpus = build(bulk=3_000, now_ms=time.time_ns() // 1_000_000)
    await publish(ms_topics, corpus)
    proc = worker(ms_topics, tmp_path).start()
    try:
        async with Outputs(ms_topics) as out:
            await out.until_truth(corpus, 120)
            await asyncio.sleep(2)  # nothing more arrives
            check_exact(out, corpus)
            assert out.rejected == corpus.rejected
            # every closed window was published final
            last = max(r.ts for r in corpus.records if r.ts < BASE_TS + 86_400_000)
            assert all(v["final"] for k, v in out.usage.items() if k[3] + 120_000 <= last)
        assert proc.metric("meterstream_worker_records_total", 'outcome="repeat",stage="meter"') > 0
        assert proc.metric("meterstream_worker_unauthenticated_total", 'reason="unknown_key"') == 25 + 5
        assert proc.metric("meterstream_worker_limit_events_total", 'kind="spend_cap_reached"') == 1
        status, body = proc.get("/healthz")
        assert status == 200 and orjson.loads(body)["config_loaded"] is True
        assert proc.terminate() == 0
    finally:
        if proc.running():
            proc.kill9()


@pytest.mark.slow
async def test_kill_9_five_times_while_streaming(ms_topics: Settings, tmp_path: Path) -> None:
    corpus = build(bulk=200_000, now_ms=time.time_ns() // 1_000_000)
    assert len(corpus.records) >= 200_000
    rng = random.Random(5)
    proc = worker(ms_topics, tmp_path).start()
    async with Outputs(ms_topics) as out:
        sending = asyncio.create_task(publish(ms_topics, corpus, pace=0.01))
        for _ in range(5):
            await asyncio.sleep(rng.uniform(4, 9))
            proc.kill9()
            proc.start()
        await sending
        try:
            await out.until_truth(corpus, 240)
            await asyncio.sleep(3)
            check_exact(out, corpus)
            assert out.rejected.get("from_the_future", 0) >= 1
        finally:
            proc.kill9()


@pytest.mark.slow
async def test_two_workers_one_killed(ms_topics: Settings, tmp_path: Path) -> None:
    corpus = build(bulk=60_000, now_ms=time.time_ns() // 1_000_000)
    a = worker(ms_topics, tmp_path, "a").start()
    b = worker(ms_topics, tmp_path, "b").start()
    async with Outputs(ms_topics) as out:
        try:
            sending = asyncio.create_task(publish(ms_topics, corpus, pace=0.02))
            await asyncio.sleep(8)
            b.kill9()  # its partitions move to a, which recovers their tables
            await sending
            await out.until_truth(corpus, 240)
            await asyncio.sleep(3)
            check_exact(out, corpus)
        finally:
            for p in (a, b):
                if p.running():
                    p.kill9()
