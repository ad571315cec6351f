"""`meterstream worker`: the faust-streaming app that turns haproxy.logs into usage windows
and limit events (SPEC §5-§7; docs/metering.md).

Two agents, each with one actor per partition (``isolated_partitions``), taking batches:

- **resolve** (haproxy.logs, keyed by fingerprint): each record's fingerprint is looked up in
  the config view every worker holds in full; the record goes to ``meter.resolved`` keyed by
  its customer (0 when unauthenticated) with its upstream position. Fingerprints that keep
  hitting without resolving raise one ``invalid_key`` event an hour (table ``invalid-keys``).
- **meter** (meter.resolved, keyed by customer): meter.meter_stage applies the records to the
  tables ``windows``, ``rates``, ``spends`` and ``clocks`` and says what to publish.

Exactness (docs/metering.md "Exactly once") does not rest on faust's exactly_once mode: the
app runs at_least_once; every table value carries the high-water marks of what it applied;
messages are published and acknowledged before the table values that record them are
written; a batch is acknowledged to faust (so its offsets can be committed) only once all of
that is done, and any error ends the process before anything is acknowledged. A limit event
whose id meter.breaches already holds (read back at start) is not published again.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import faust
import orjson

from meterstream import http, logs
from meterstream.kafka import ensure_topics, partitions_of, read_to_end
from meterstream.meter import aggregates, metrics
from meterstream.meter.aggregates import InvalidKeyState, StateTable
from meterstream.meter.config_view import ConfigFollower, ConfigView
from meterstream.meter.highwater import stream_key
from meterstream.meter.meter_stage import TABLE_KINDS, MeterPartition, MeterRules, Tables
from meterstream.meter.resolve import InvalidKeyTracker, resolve
from meterstream.producer import Message, RoundProducer
from meterstream.schemas import topics
from meterstream.schemas.limits import LimitEvent
from meterstream.schemas.records import LogRecord, RejectedLine, SourcePosition
from meterstream.schemas.topics import key_of
from meterstream.schemas.usage import UsageWindow
from meterstream.schemas.wire import WireError, decode, encode
from meterstream.settings import Settings

log = logs.get(__name__)
EXIT_FAILED = 70  # an error in a batch: exit before acknowledging it, so it is processed again
SEEK_AGAIN_S = 3.0  # a seek back whose record has not come by then is made again


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Worker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        cfg = settings.worker
        self.view = ConfigView()
        self.follower = ConfigFollower(settings, self.view)
        self.rules = MeterRules(retention_ms=int(cfg.retention_h * 3_600_000), future_ms=int(cfg.future_s * 1000),
                                rate_clear_after_s=cfg.rate_clear_after_s)
        self.recent: set[str] = set()  # event ids meter.breaches holds
        self.recent_loaded_at = 0.0
        self.recent_lock = asyncio.Lock()
        self.ready = asyncio.Event()
        self.app: faust.App | None = None
        self.producer = RoundProducer(settings, "worker", metrics.PRODUCE_LATENCY, metrics.PRODUCE_FAILURES)

    def health(self) -> tuple[bool, dict[str, object]]:
        return self.ready.is_set(), {"config_loaded": self.ready.is_set(),
                                     "config_keys": len(self.view.keys)}

    # -- the app -----------------------------------------------------------------------------
    def build(self, logs_partitions: int, resolved_partitions: int) -> faust.App:
        s, cfg = self.settings, self.settings.worker
        datadir = cfg.datadir
        if not datadir:  # the memory store keeps nothing there worth keeping
            datadir = tempfile.mkdtemp(prefix="meterstream-worker-")
            atexit.register(shutil.rmtree, datadir, True)
        app = faust.App(
            f"{s.kafka.topic_prefix}{cfg.app_id}", broker=f"kafka://{s.kafka.bootstrap}", store="memory://",
            processing_guarantee="at_least_once", topic_partitions=resolved_partitions,
            table_standby_replicas=0, web_enabled=False, datadir=datadir, topic_replication_factor=1,
            broker_commit_interval=cfg.commit_interval_s, consumer_auto_offset_reset="earliest",
            stream_buffer_maxsize=2 * cfg.batch_records, producer_linger=0.005,
            producer_acks=-1, broker_client_id=f"{s.kafka.client_id}-worker",
            # a worker killed -9 leaves the group within 10 s, and its partitions move on
            broker_session_timeout=10.0, broker_heartbeat_interval=2.0,
        )
        self.app = app

        def topic(name: str, partitions: int | None = None) -> faust.TopicT:
            return app.topic(s.topic(name), key_serializer="raw", value_serializer="raw", partitions=partitions)

        logs_topic = topic(topics.HAPROXY_LOGS, logs_partitions)
        resolved_topic = topic(topics.METER_RESOLVED, resolved_partitions)

        # values are written by the worker itself, serialized by meter.aggregates (see _changes);
        # faust recovers them with its JSON serializer, and StateTable reads either form
        def table(name: str, partitions: int) -> faust.Table:
            return app.Table(name, partitions=partitions, key_type=bytes)

        self.invalid_table = table("invalid-keys", logs_partitions)
        self.positions = {"resolve": table("resolve-positions", logs_partitions),
                          "meter": table("meter-positions", resolved_partitions)}
        self.tables = {name: table(name, resolved_partitions) for name in TABLE_KINDS}

        @app.task
        async def start() -> None:
            endpoint = await http.start(s.http, self.health, "worker")
            try:
                await self.follower.load()
                self.ready.set()
                await self.follower.follow()
            finally:  # the worker stops: this task is cancelled
                await self.follower.close()
                await self.producer.stop()
                await endpoint.stop()

        @app.agent(logs_topic, isolated_partitions=True, name="resolve")
        async def resolve_agent(stream: faust.StreamT) -> None:
            await self._run_stage("resolve", stream, cfg.resolve_within_s, self._resolve_batch)

        @app.agent(resolved_topic, isolated_partitions=True, name="meter")
        async def meter_agent(stream: faust.StreamT) -> None:
            state: dict[str, Any] = {}
            try:
                await self._run_stage("meter", stream, cfg.meter_within_s,
                                      lambda events: self._meter_batch(events, state))
            finally:
                if "changed" in state:
                    self.view.unsubscribe(state["changed"])

        return app

    async def _run_stage(self, stage: str, stream: faust.StreamT, within: float, handle: Any) -> None:
        """Feeds one partition's records to ``handle`` batch by batch, in offset order, each
        offset exactly once.

        The next offset to process is kept in the stage's ``positions`` table, written once a
        batch's messages and table values are acknowledged; faust's committed offsets only
        say where fetching starts. A record below the position was processed already (a
        replay) and is skipped; a record above it means records were skipped (faust's
        commit can run ahead of what was processed after a rebalance, see
        docs/metering.md): the consumer is sought back to the position, and records beyond
        it are dropped until the sought record arrives.
        """
        await self.ready.wait()
        await self._load_recent()
        positions = self.positions[stage]
        store = StateTable(positions.data.data, "clock")
        expected: int | None = None
        seeking: float | None = None  # when the consumer was last sought back
        first = True
        async for events in stream.noack_take(self.settings.worker.batch_records, within=within):
            tp = events[0].message.tp
            if first:
                expected, first = store.get(b"p%d" % tp.partition), False
            batch: list[faust.EventT] = []
            repeats: list[faust.EventT] = []
            gap = False
            for event in events:
                offset = event.message.offset
                if expected is not None and offset < expected:
                    repeats.append(event)
                elif expected is None or offset == expected:
                    batch.append(event)
                    expected = offset + 1
                    seeking = None
                else:
                    gap = True
                    break
            try:
                if batch:
                    await handle(batch)
                    await self._write(positions, tp.partition, {b"p%d" % tp.partition: expected})
            except asyncio.CancelledError:
                raise  # a rebalance or a stop: nothing of the batch is acknowledged
            except Exception:
                log.exception("batch failed; exiting so that it is processed again", stage=stage)
                os._exit(EXIT_FAILED)
            metrics.RECORDS.labels(stage, "replayed").inc(len(repeats))
            for event in repeats + batch:
                await stream.ack(event)
            # records past a gap are dropped (not acknowledged) until the sought record comes;
            # a seek that did not take (the partition was moving) is repeated after a while
            if gap and (seeking is None or time.monotonic() - seeking > SEEK_AGAIN_S):
                assert expected is not None
                metrics.GAPS.labels(stage).inc()
                log.warning("records skipped by the consumer; seeking back", stage=stage, topic=tp.topic,
                            partition=tp.partition, expected=expected, got=events[len(batch) + len(repeats)].message.offset)
                # seek_wait runs on faust's consumer thread; Consumer.seek would touch aiokafka's
                # fetcher from this one (seen: a KeyError in fetched_records killed the consumer)
                await self.app.consumer.seek_wait({tp: expected})  # type: ignore[union-attr]
                seeking = time.monotonic()

    # -- resolve -----------------------------------------------------------------------------
    async def _resolve_batch(self, events: list[faust.EventT]) -> None:
        started = time.perf_counter()
        partition = events[0].message.partition
        keys = self.view.keys
        threshold = self.settings.worker.invalid_key_hits
        invalid_store = StateTable(self.invalid_table.data.data, "invalid")
        touched: dict[bytes, InvalidKeyState] = {}
        limit_events: list[LimitEvent] = []
        rejected: list[RejectedLine] = []
        resolved_name = self.settings.topic(topics.METER_RESOLVED)
        outgoing: list[Message] = []
        for event in events:
            message = event.message
            raw: bytes = message.value
            try:
                record = decode(LogRecord, raw)
            except WireError as exc:
                rejected.append(self._rejected(f"kafka:{message.topic}", message.topic, partition, message.offset,
                                               "invalid_record", str(exc), raw))
                continue
            fp = record.api_key_fp
            customer, reason = resolve(keys, fp, record.service_type)
            if reason is None:
                unauth_json = b"null"
            else:
                metrics.UNAUTHENTICATED.labels(reason.value).inc()
                unauth_json = b'"%s"' % reason.value.encode()
                if fp is not None:
                    key = b"%d" % fp
                    state = touched.get(key) or invalid_store.get(key) or InvalidKeyState(InvalidKeyTracker())
                    if state.seen.apply(stream_key(record.src.stream, fp), record.src.offset, record.ts):
                        hit = state.tracker.hit(fp, record.ts, threshold)
                        if hit is not None:
                            limit_events.append(hit)
                    touched[key] = state
            body = raw.rstrip()
            value = body[:-1] + (b',"customer_id":%d,"unauth":%s,"upstream":{"topic":%s,"partition":%d,"offset":%d}}'
                                 % (customer, unauth_json, orjson.dumps(message.topic), partition, message.offset))
            outgoing.append(Message(resolved_name, b"%d" % customer, value))
        await self._publish(outgoing, limit_events=limit_events, rejected=rejected)
        await self._write(self.invalid_table, partition, touched)
        metrics.RECORDS.labels("resolve", "applied").inc(len(events) - len(rejected))
        metrics.RECORDS.labels("resolve", "rejected").inc(len(rejected))
        metrics.TABLE_KEYS.labels("invalid-keys").set(len(invalid_store))
        self._lag(events[-1])
        metrics.BATCH_SECONDS.labels("resolve").observe(time.perf_counter() - started)

    # -- meter -------------------------------------------------------------------------------
    async def _meter_batch(self, events: list[faust.EventT], state: dict[str, Any]) -> None:
        started = time.perf_counter()
        partition = events[0].message.partition
        meter: MeterPartition | None = state.get("meter")
        if meter is None:
            state["changed"] = self.view.subscribe()
            tables = state["tables"] = Tables(**{name: StateTable(self.tables[name].data.data, kind)
                                                 for name, kind in TABLE_KINDS.items()})
            meter = state["meter"] = MeterPartition(partition, tables, self.view, self.rules)
        records = [orjson.loads(event.message.value) for event in events]
        now = _now_ms()
        changed = set(state["changed"])
        state["changed"].clear()
        result = meter.process(records, now, drained=len(events) < self.settings.worker.batch_records,
                               changed_customers=changed)
        rejected = [self._rejected(f"meter:{r.record['src']['stream']}", r.record["src"]["stream"], None,
                                   r.record["src"]["offset"], r.reason, r.detail, orjson.dumps(r.record))
                    for r in result.rejected]
        await self._publish([], usage=result.usage, limit_events=result.events, rejected=rejected)
        changes: list[Message] = []
        for name, writes in result.writes.items():
            changes += self._changes(self.tables[name], partition, writes)
        await self.producer.send_round(changes)
        for table in vars(state["tables"]).values():
            table.clear_cache()
        metrics.RECORDS.labels("meter", "applied").inc(result.applied)
        metrics.RECORDS.labels("meter", "repeat").inc(result.repeats)
        metrics.RECORDS.labels("meter", "rejected").inc(len(rejected))
        metrics.LATENCY.observe(max(now - records[-1]["ts"], 0) / 1000)
        for name, t in self.tables.items():
            metrics.TABLE_KEYS.labels(name).set(len(t.data))
        self._lag(events[-1])
        metrics.BATCH_SECONDS.labels("meter").observe(time.perf_counter() - started)

    # -- publishing and writing --------------------------------------------------------------
    async def _publish(self, outgoing: list[Message], usage: Sequence[UsageWindow] = (),
                       limit_events: Sequence[LimitEvent] = (), rejected: Sequence[RejectedLine] = ()) -> None:
        """Publishes, and returns once Kafka has acknowledged every message (retrying with
        backoff meanwhile: the stage takes nothing new until then)."""
        usage_topic = self.settings.topic(topics.METER_USAGE)
        for window in usage:
            outgoing.append(Message(usage_topic, key_of(window), encode(window)))
        new_events = [e for e in limit_events if e.event_id not in self.recent]
        metrics.EVENTS_SUPPRESSED.inc(sum(1 for e in limit_events if e.event_id in self.recent))
        breaches_topic = self.settings.topic(topics.METER_BREACHES)
        outgoing += [Message(breaches_topic, key_of(e), encode(e)) for e in new_events]
        rejected_topic = self.settings.topic(topics.HAPROXY_LOGS_REJECTED)
        outgoing += [Message(rejected_topic, key_of(line), encode(line)) for line in rejected]
        await self.producer.send_round(outgoing)
        self.recent.update(e.event_id for e in new_events)
        for e in new_events:
            metrics.LIMIT_EVENTS.labels(e.kind.value).inc()
        for line in rejected:
            metrics.REJECTED.labels(line.reason).inc()
        metrics.USAGE_PUBLISHED.inc(len(usage))

    def _changes(self, table: faust.Table, partition: int, writes: dict[bytes, Any]) -> list[Message]:
        """The changelog messages of new table values, which are set in the table's store."""
        store = table.data
        name = table.changelog_topic.get_topic_name()
        out = []
        for key, value in writes.items():
            if value is None:
                store.data.pop(key, None)
                out.append(Message(name, key, None, partition=partition))
            else:
                serialized = aggregates.dumps(value)
                store.data[key] = serialized  # kept serialized: StateTable decodes on access
                out.append(Message(name, key, serialized, partition=partition))
        return out

    async def _write(self, table: faust.Table, partition: int, writes: dict[bytes, Any]) -> None:
        """Writes table values through their changelog, acknowledged before returning."""
        await self.producer.send_round(self._changes(table, partition, writes))

    def _rejected(self, source: str, stream: str, partition: int | None, offset: int, reason: str, detail: str,
                  raw: bytes) -> RejectedLine:
        position = SourcePosition(stream=(stream if partition is None else f"{stream}:{partition}")[:256], offset=offset)
        return RejectedLine.of(raw, source=source, position=position, reason=reason, detail=detail,
                               keep=self.settings.produce.dead_letter_raw_bytes)

    def _lag(self, event: faust.EventT) -> None:
        tp = event.message.tp
        try:
            high = self.app.consumer.highwater(tp)  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001 - not known yet
            return
        if high is not None:
            metrics.LAG.labels(tp.topic, str(tp.partition)).set(max(high - event.message.offset - 1, 0))

    async def _load_recent(self) -> None:
        """Reads back the limit events published recently, so that a batch repeated after a
        crash (its events published, its table values not yet written) does not publish them
        again. Done whenever partitions are (re)assigned to this worker."""
        asked = time.monotonic()
        async with self.recent_lock:
            if self.recent_loaded_at > asked:
                return
            since = _now_ms() - int(self.settings.worker.recent_events_s * 1000)
            self.recent |= await read_event_ids(self.settings, since)
            self.recent_loaded_at = time.monotonic()


async def read_event_ids(settings: Settings, since_ms: int) -> set[str]:
    """The event ids on meter.breaches written since ``since_ms`` (broker time)."""
    return {orjson.loads(value)["event_id"]
            for _, value in await read_to_end(settings, settings.topic(topics.METER_BREACHES), since_ms=since_ms)
            if value is not None}


def run(settings: Settings) -> int:
    """Runs the worker until SIGTERM/SIGINT (faust commits what it acknowledged, exit 0)."""
    created = asyncio.run(ensure_topics(settings))
    if created:
        log.info("topics created", topics=created)
    logs_partitions = len(asyncio.run(partitions_of(settings, settings.topic(topics.HAPROXY_LOGS))))
    resolved_partitions = len(asyncio.run(partitions_of(settings, settings.topic(topics.METER_RESOLVED))))
    worker = Worker(settings)
    app = worker.build(logs_partitions, resolved_partitions)
    log.info("worker starting", app_id=app.conf.id, logs_partitions=logs_partitions,
             resolved_partitions=resolved_partitions)
    faust_worker = faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False,
                                override_logging=False)
    faust_worker.execute_from_commandline()
    return 0
