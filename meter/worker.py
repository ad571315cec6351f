"""`meterstream worker`: the faust-streaming app that meters haproxy.logs in one pass
(docs/metering.md).

Two agents, one actor per partition (``isolated_partitions``), each taking one faust event
per fetched batch of its partition (meter.batches):

- **meter** (``haproxy.logs``, keyed by the customer HAProxy matched): each record is
  resolved against the configuration every worker holds in full (meter.config_view) and
  metered on its partition when its customer belongs there (meter.meter_stage), or forwarded
  to its customer's partition through ``meter.resolved`` (packed, schemas.resolved);
- **forwarded** (``meter.resolved``): the records other partitions forwarded, metered the same.

A partition's two actors share its state and take turns. Per batch: the stage's position
says which records are new (meter.offsets); the meter stage says what to publish and which
table values to write; the worker (1) publishes and waits for Kafka's acknowledgement,
(2) writes the table values to their changelogs and waits, (3) writes the stage's next
offset and waits, and only then acknowledges the batch to faust. Any error ends the process
before (3). A limit event whose id meter.breaches already holds (read back when partitions
are assigned) is not published again. docs/metering.md "Exactly once" has the argument.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import faust
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import ConsumerRecord
from faust.types import TP

from meterstream import http, logs, memory
from meterstream.kafka import ensure_topics, partitions_of, read_to_end
from meterstream.kafka_access import check_or_exit
from meterstream.kafka_clients import faust_credentials
from meterstream.meter import aggregates, batches, metrics
from meterstream.meter.aggregates import StateTable, StateValue
from meterstream.meter.config_view import ConfigFollower, ConfigView
from meterstream.meter.meter_stage import TABLE_KINDS, BatchResult, MeterPartition, MeterRules, Tables
from meterstream.meter.offsets import Action, PartitionPosition
from meterstream.producer import Message, Refused, RoundProducer, Stopped
from meterstream.schemas import topics
from meterstream.schemas.limits import LimitEvent
from meterstream.schemas.records import LogRecord, RejectedLine, SourcePosition
from meterstream.schemas.resolved import ResolvedBatch, pack, unpack
from meterstream.schemas.topics import customer_key, key_of, usage_key
from meterstream.schemas.wire import WireError, decode, encode
from meterstream.settings import Settings

log = logs.get(__name__)
EXIT_FAILED = 70  # an error in a batch: exit before acknowledging it, so it is processed again
EXIT_CONFIG = 2  # the topics do not fit the design (partition counts)
UNHEALTHY_AFTER_REFUSAL_S = 300.0  # /healthz is 503 this long after Kafka refused a message
POSITIONS_EVERY_S = 1.0  # a position not written with a later batch is written after this long
RELEASE_MEMORY_EVERY_S = 10.0
STAGES = {"meter": topics.HAPROXY_LOGS, "forwarded": topics.METER_RESOLVED}


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class Sent:
    """What a partition last sent a destination it forwards to."""

    record_ts: int  # event time of the last record forwarded there
    progress: int  # the progress last sent there
    idle: bool  # the idleness last sent there


@dataclass
class PartitionState:
    """What the worker holds for one partition it owns: the meter stage, each stage's
    position, the customers whose configuration changed, and the lock its two actors take
    turns with."""

    meter: MeterPartition
    tables: Tables
    positions: dict[str, PartitionPosition]
    changed: set[int]
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    actors: int = 0
    # destination partition -> what was last sent there: time keeps moving at a destination
    # that gets few records
    forwarded_to: dict[int, Sent] = field(default_factory=dict)
    # positions of batches already durable, not yet written: they ride with the next batch's
    # table values (or the position timer writes them): a position never runs ahead of state
    unsaved: dict[bytes, int] = field(default_factory=dict)
    unsaved_since: float = 0.0


class Worker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        cfg = settings.worker
        self.view = ConfigView(partition_of=self._partition)
        self.follower = ConfigFollower(settings, self.view)
        self.rules = MeterRules(retention_ms=int(cfg.retention_h * 3_600_000), future_ms=int(cfg.future_s * 1000),
                                rate_clear_after_s=cfg.rate_clear_after_s, invalid_key_hits=cfg.invalid_key_hits,
                                invalid_keys_max=cfg.invalid_keys_max)
        self.recent: dict[str, float] = {}  # event ids meter.breaches holds -> when learnt (monotonic)
        self.recent_loaded_at = 0.0
        self.recent_lock = asyncio.Lock()
        self.ready = asyncio.Event()
        self.app: faust.App | None = None
        self.producer = RoundProducer(settings, "worker", metrics.PRODUCE_LATENCY, metrics.PRODUCE_FAILURES)
        self.partitions: dict[int, PartitionState] = {}
        self.count = 0  # partitions of haproxy.logs (= meter.resolved = every table)
        self._partitioner = DefaultPartitioner()
        self._partition_of: dict[int, int] = {}
        self.names = {stage: settings.topic(name) for stage, name in STAGES.items()}
        self.usage_topic = settings.topic(topics.METER_USAGE)
        self.breaches_topic = settings.topic(topics.METER_BREACHES)
        self.rejected_topic = settings.topic(topics.HAPROXY_LOGS_REJECTED)
        metrics.CHECKPOINT_AGE.set_function(self.checkpoint_age)

    def checkpoint_age(self) -> float:
        """Seconds the oldest processed position not yet in the positions table has waited."""
        waiting = [s.unsaved_since for s in list(self.partitions.values()) if s.unsaved]
        return time.monotonic() - min(waiting) if waiting else 0.0

    def health(self) -> tuple[bool, dict[str, object]]:
        refused_at = self.producer.refused_at
        refused_s = None if refused_at is None else round(time.monotonic() - refused_at, 1)
        refusing = refused_s is not None and refused_s < UNHEALTHY_AFTER_REFUSAL_S
        healthy = self.ready.is_set() and self.producer.failure.healthy() and not refusing
        return healthy, {"config_loaded": self.ready.is_set(), "config_keys": len(self.view.keys),
                         "kafka_failing_s": round(self.producer.failure.seconds(), 1),
                         "refused_s_ago": refused_s, "partitions": sorted(self.partitions)}

    def partition_of(self, customer: int) -> int:
        """The partition of a customer's records and state: Kafka's default partitioner on its
        key (kept with a configured customer's configuration; cached for the others)."""
        found = self.view.partition(customer)
        if found is None:
            found = self._partition_of.get(customer)
            if found is None:
                if len(self._partition_of) > 10_000:
                    self._partition_of.clear()
                found = self._partition_of[customer] = self._partition(customer)
        return found

    def _partition(self, customer: int) -> int:
        every = list(range(self.count))
        return self._partitioner(customer_key(customer), every, every)

    # -- the app -----------------------------------------------------------------------------
    def build(self, count: int) -> faust.App:
        s, cfg = self.settings, self.settings.worker
        self.count = count
        datadir = cfg.datadir
        if not datadir:  # the memory store keeps nothing there worth keeping
            datadir = tempfile.mkdtemp(prefix="meterstream-worker-")
            atexit.register(shutil.rmtree, datadir, True)
        app = faust.App(
            f"{s.kafka.topic_prefix}{cfg.app_id}", broker=batches.broker_url(s.kafka.bootstrap), store="memory://",
            # TLS and SASL: faust hands them to every client it makes, meter.batches' consumer included
            broker_credentials=faust_credentials(s.kafka),
            processing_guarantee="at_least_once", topic_partitions=count,
            table_standby_replicas=0, web_enabled=False, datadir=datadir, topic_replication_factor=1,
            broker_commit_interval=cfg.commit_interval_s, consumer_auto_offset_reset="earliest",
            broker_max_poll_records=cfg.batch_records, consumer_max_fetch_size=cfg.fetch_bytes,
            producer_linger=0.005, producer_acks=-1, broker_client_id=f"{s.kafka.client_id}-worker",
            # a worker killed -9 leaves the group within 10 s, and its partitions move on
            broker_session_timeout=10.0, broker_heartbeat_interval=2.0,
        )
        self.app = app
        batches.enable(app, *self.names.values())

        def topic(name: str) -> faust.TopicT:
            # an event is a whole fetched batch: one waits while one is processed
            return app.topic(name, key_serializer="raw", value_serializer="raw", partitions=count, maxsize=2)

        # values are serialized by meter.aggregates and written by the worker itself (_changes);
        # faust recovers them as they are (raw), and StateTable reads them
        def table(name: str) -> faust.Table:  # bytes: "raw"
            return cast(faust.Table, app.Table(name, partitions=count, key_type=bytes, value_type=bytes))

        self.tables = {name: table(name.replace("_", "-")) for name in TABLE_KINDS}
        self.positions = table("positions")

        @app.timer(POSITIONS_EVERY_S)
        async def write_positions() -> None:
            """Positions of the last batches of partitions that went quiet (the others ride
            with the next batch's table values)."""
            for state in list(self.partitions.values()):
                if state.unsaved and time.monotonic() - state.unsaved_since >= POSITIONS_EVERY_S:
                    async with state.lock:
                        unsaved, state.unsaved = state.unsaved, {}
                        await self._write(self.positions, state.meter.partition, unsaved)

        @app.timer(RELEASE_MEMORY_EVERY_S)
        async def release_memory() -> None:
            memory.release()  # resident memory follows what the tables hold, not the last burst

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

        @app.agent(topic(self.names["meter"]), isolated_partitions=True, name="meter")
        async def meter_agent(stream: faust.StreamT) -> None:
            await self._run("meter", stream)

        @app.agent(topic(self.names["forwarded"]), isolated_partitions=True, name="forwarded")
        async def forwarded_agent(stream: faust.StreamT) -> None:
            await self._run("forwarded", stream)

        return app

    def _state(self, partition: int) -> PartitionState:
        """The partition's state, built from its tables the first time one of its actors gets
        a batch (faust has recovered the tables by then)."""
        state = self.partitions.get(partition)
        if state is None:
            tables = Tables(**{name: StateTable(self.tables[name].data.data, kind)
                               for name, kind in TABLE_KINDS.items()})
            stored = StateTable(self.positions.data.data, "clock")
            meter = MeterPartition(partition, tables, self.view, self.rules, self.partition_of, self.count)
            positions = {stage: PartitionPosition(stored.get(b"%s:%d" % (stage.encode(), partition)))
                         for stage in STAGES}
            state = self.partitions[partition] = PartitionState(meter, tables, positions, self.view.subscribe())
            self._report_bad(tables, partition)
        return state

    async def _run(self, stage: str, stream: faust.StreamT) -> None:
        """One actor: the batches of one partition of the stage's topic, in offset order."""
        await self.ready.wait()
        await self._load_recent()
        state: PartitionState | None = None
        batch_stream = stream.noack()  # type: ignore[attr-defined]  # faust.Stream's, not in StreamT
        try:
            async for event in batch_stream.events():  # one event: a fetched batch of the partition
                message = event.message
                if state is None:
                    state = self._state(message.partition)
                    state.actors += 1
                async with state.lock:
                    done = await self._take(stage, state, message.tp, message.value)
                if done:
                    await batch_stream.ack(event)  # faust may commit past the whole batch
                else:  # records past a gap: not processed, so not committed either
                    batches.release(self.app, event)
                del event
        finally:
            if state is not None:
                state.actors -= 1
                if state.actors == 0:  # the partition moved away: its state is rebuilt if it returns
                    self.view.unsubscribe(state.changed)
                    self.partitions.pop(state.meter.partition, None)

    async def _take(self, stage: str, state: PartitionState, tp: TP, records: Sequence[ConsumerRecord]) -> bool:
        """Processes what is new in a fetched batch; True when the whole batch is done with
        (processed or a repeat), False when records past a gap were left for later."""
        position = state.positions[stage]
        offsets = [r.offset for r in records]
        step = position.step(offsets, time.monotonic())
        metrics.RECORDS.labels(stage, "replayed").inc(step.repeats)
        if step.gap is not None:
            expected, found = step.gap
            log.warning("records skipped by the consumer" if step.action is not Action.ACCEPT
                        else "no records exist in a gap of offsets; going on past it",
                        stage=stage, topic=tp.topic, partition=tp.partition, expected=expected, got=found)
            metrics.GAPS.labels(stage, "accepted" if step.action is Action.ACCEPT else "sought").inc()
        todo = records[step.repeats:step.end]
        if todo:
            try:
                handle = self._meter_batch if stage == "meter" else self._forwarded_batch
                await handle(state, tp, todo)
                position.processed(offsets, step)
                if todo[-1].timestamp > 0:
                    metrics.EVENT_TIME.labels(tp.topic, str(tp.partition)).set(todo[-1].timestamp / 1000)
                if not state.unsaved:
                    state.unsaved_since = time.monotonic()
                assert position.expected is not None  # set by processed()
                state.unsaved[b"%s:%d" % (stage.encode(), tp.partition)] = position.expected
            except (asyncio.CancelledError, Stopped):
                raise  # a rebalance or a stop: nothing of the batch is acknowledged
            except Exception:
                log.exception("batch failed; exiting so that it is processed again", stage=stage)
                os._exit(EXIT_FAILED)
        if step.action is Action.SEEK:
            # seek_wait runs on faust's consumer thread; Consumer.seek would touch aiokafka's
            # fetcher from this one (seen: a KeyError in fetched_records killed the consumer)
            assert step.seek_to is not None  # a SEEK step names its offset
            await self.app.consumer.seek_wait({tp: step.seek_to})  # type: ignore[union-attr]
        return step.end == len(records)

    # -- the two stages ----------------------------------------------------------------------
    async def _meter_batch(self, state: PartitionState, tp: TP, records: Sequence[ConsumerRecord]) -> None:
        started = time.perf_counter()
        dead: list[RejectedLine] = []
        newest = [0]

        def decoded() -> Iterator[tuple[int, LogRecord]]:  # one record alive at a time
            for r in records:
                try:
                    record = decode(LogRecord, r.value)
                except WireError as exc:
                    dead.append(self._dead(tp.topic, tp.partition, r.offset, "invalid_record", str(exc), r.value))
                    continue
                newest[0] = record.ts
                yield r.offset, record

        now = _now_ms()
        drained = self._drained(tp, records[-1].offset)
        result = state.meter.process(decoded(), now, drained, self._changed(state))
        outgoing = self._forwards(state, tp.partition, result, drained)
        await self._apply("meter", state, tp, result, outgoing, dead)
        if newest[0]:
            metrics.LATENCY.observe(max(now - newest[0], 0) / 1000)
        metrics.BATCH_SECONDS.labels("meter").observe(time.perf_counter() - started)

    async def _forwarded_batch(self, state: PartitionState, tp: TP, records: Sequence[ConsumerRecord]) -> None:
        started = time.perf_counter()
        received: list[tuple[int, ResolvedBatch]] = []
        dead: list[RejectedLine] = []
        for r in records:
            try:
                received.append((r.offset, unpack(r.value)))
            except WireError as exc:
                dead.append(self._dead(tp.topic, tp.partition, r.offset, "invalid_record", str(exc), r.value))
        own_idle = await self._own_idle(state, tp.partition)
        # "drained" publishes the changed windows at once: only when this partition's own
        # records are read too (forwarded batches come often, and would publish them each time)
        drained = own_idle and self._drained(tp, records[-1].offset)
        result = state.meter.process_forwarded(received, _now_ms(), drained, self._changed(state), own_idle=own_idle)
        await self._apply("forwarded", state, tp, result, [], dead)
        metrics.BATCH_SECONDS.labels("forwarded").observe(time.perf_counter() - started)

    def _forwards(self, state: PartitionState, partition: int, result: BatchResult, drained: bool) -> list[Message]:
        """The meter.resolved messages of a batch: its forwarded records, packed per
        destination, and this partition's progress (and whether it has read everything) to the
        destinations it forwarded to in the last minute of event time, whenever that moved by
        a second or more, so that they need not wait for it."""
        out: list[Message] = []
        key, name = b"%d" % partition, self.names["forwarded"]
        bound = self.settings.worker.max_message_bytes
        progress = result.progress
        for dest, items in result.forward.items():
            for payload in pack(partition, progress, items, bound, idle=drained):
                out.append(Message(name, key, payload, partition=dest))
            state.forwarded_to[dest] = Sent(items[-1][3].ts, progress or 0, drained)
        if progress is not None:
            for dest, sent in list(state.forwarded_to.items()):
                if dest in result.forward:
                    continue
                if progress - sent.record_ts > self.rules.idle_ms and sent.idle == drained:
                    del state.forwarded_to[dest]  # nothing for a minute: the route goes idle there
                elif progress - sent.progress >= 1000 or sent.idle != drained:
                    out += [Message(name, key, payload, partition=dest)
                            for payload in pack(partition, progress, [], bound, idle=drained)]
                    sent.progress, sent.idle = progress, drained
        return out

    async def _apply(self, stage: str, state: PartitionState, tp: TP, result: BatchResult,
                     outgoing: list[Message], dead: list[RejectedLine]) -> None:
        """Publishes a batch's messages, then writes its table values (each acknowledged)."""
        for r in result.rejected:
            dead.append(self._dead(self.names["meter"], r.route, r.offset, r.reason, r.detail, encode(r.record)))
        outgoing += [Message(self.usage_topic, usage_key(w.customer_id, w.service_type, w.network, w.window_start),
                             w.value()) for w in result.usage]
        events = [(e, Message(self.breaches_topic, key_of(e), encode(e)))
                  for e in result.events if e.event_id not in self.recent]
        metrics.EVENTS_SUPPRESSED.inc(len(result.events) - len(events))
        outgoing += [message for _, message in events]
        outgoing += [Message(self.rejected_topic, key_of(line), encode(line)) for line in dead]
        refused = await self.producer.deliver(outgoing, self._unpublishable)
        gone = {id(r.message) for r in refused}
        learnt = time.monotonic()
        for event, message in events:
            if id(message) not in gone:
                self.recent[event.event_id] = learnt
                metrics.LIMIT_EVENTS.labels(event.kind.value).inc()
        for line in dead:
            metrics.REJECTED.labels(line.reason).inc()
        metrics.USAGE_PUBLISHED.inc(len(result.usage))
        changes = self._changes(self.positions, tp.partition, state.unsaved)  # earlier batches': durable
        state.unsaved = {}
        for name, writes in result.writes.items():
            changes += self._changes(self.tables[name], tp.partition, writes)
        await self.producer.deliver(changes, self._unpublishable)
        for table in vars(state.tables).values():
            table.clear_cache()
        self._report_bad(state.tables, tp.partition)
        metrics.RECORDS.labels(stage, "applied").inc(result.applied)
        metrics.RECORDS.labels(stage, "repeat").inc(result.repeats)
        metrics.RECORDS.labels(stage, "rejected").inc(len(dead))
        metrics.RECORDS.labels(stage, "forwarded").inc(sum(len(v) for v in result.forward.values()))
        for reason, n in result.unauthenticated.items():
            metrics.UNAUTHENTICATED.labels(reason.value).inc(n)
        metrics.INVALID_KEYS_UNTRACKED.inc(result.untracked_invalid_keys)
        metrics.RATE_REGIONS_UNTRACKED.inc(result.untracked_regions)
        self._lag(tp)
        for name, table in self.tables.items():
            metrics.TABLE_KEYS.labels(name).set(len(table.data))
        self._prune_recent()

    # -- publishing and writing --------------------------------------------------------------
    def _changes(self, table: faust.Table, partition: int, writes: Mapping[bytes, StateValue | None]) -> list[Message]:
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

    async def _write(self, table: faust.Table, partition: int, writes: Mapping[bytes, StateValue | None]) -> None:
        """Writes table values through their changelog, acknowledged before returning."""
        await self.producer.deliver(self._changes(table, partition, writes), self._unpublishable)

    def _unpublishable(self, refused: Refused) -> Message:
        """The dead letter of a message Kafka refused for good (and /healthz says so)."""
        m = refused.message
        metrics.UNPUBLISHABLE.labels(m.topic).inc()
        line = self._dead(m.topic, m.partition, None, "unpublishable", f"Kafka refused it: {refused.error}",
                          m.value or b"")
        return Message(self.rejected_topic, key_of(line), encode(line))

    def _dead(self, topic: str, partition: int | None, offset: int | None, reason: str, detail: str,
              raw: bytes | None) -> RejectedLine:
        position = None if offset is None else SourcePosition(stream=f"{topic}:{partition}"[:256], offset=offset)
        return RejectedLine.of(raw or b"", source=f"worker:{topic}", position=position, reason=reason, detail=detail,
                               keep=self.settings.produce.dead_letter_raw_bytes)

    def _report_bad(self, tables: Tables, partition: int) -> None:
        """Changelog values that did not load are reported and dead-lettered (best effort)."""
        for name, table in vars(tables).items():
            while table.bad:
                key, raw = table.bad.pop()
                metrics.BAD_STATE.labels(name).inc()
                log.error("a table value does not load; taken as absent", table=name, partition=partition,
                          key=key[:64].decode(errors="replace"))

    def _changed(self, state: PartitionState) -> set[int]:
        changed = set(state.changed)
        state.changed.clear()
        return changed

    async def _own_idle(self, state: PartitionState, partition: int) -> bool:
        """Whether this partition's haproxy.logs has been read to its end (then its own records
        do not hold time back for the records other partitions forward to it)."""
        tp = TP(self.names["meter"], partition)
        consumer = self.app.consumer  # type: ignore[union-attr]
        try:
            high = consumer.highwater(tp)
            position = state.positions["meter"].expected
            if position is None:
                position = await consumer.position(tp)
        except Exception:  # noqa: BLE001 - not known yet
            return False
        return high is not None and position is not None and position >= high

    def _drained(self, tp: TP, last_offset: int) -> bool:
        try:
            high = self.app.consumer.highwater(tp)  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001 - not known yet
            return True
        return high is None or last_offset + 1 >= high

    def _lag(self, tp: TP) -> None:
        try:
            high = self.app.consumer.highwater(tp)  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001 - not known yet
            return
        state = self.partitions.get(tp.partition)
        stage = "meter" if tp.topic == self.names["meter"] else "forwarded"
        expected = state.positions[stage].expected if state is not None else None
        if high is not None and expected is not None:
            metrics.LAG.labels(tp.topic, str(tp.partition)).set(max(high - expected, 0))

    # -- limit events published before --------------------------------------------------------
    async def _load_recent(self) -> None:
        """Reads back the limit events published recently, so that a batch repeated after a
        crash (its events published, its table values not yet written) does not publish them
        again. Done whenever partitions are (re)assigned to this worker."""
        asked = time.monotonic()
        async with self.recent_lock:
            if self.recent_loaded_at > asked:
                return
            since = _now_ms() - int(self.settings.worker.recent_events_s * 1000)
            learnt = time.monotonic()
            for event_id in await read_event_ids(self.settings, since):
                self.recent[event_id] = learnt
            self.recent_loaded_at = time.monotonic()

    def _prune_recent(self) -> None:
        if len(self.recent) > 100_000:  # keep what a replay could repeat: the last recent_events_s
            oldest = time.monotonic() - self.settings.worker.recent_events_s
            self.recent = {i: t for i, t in self.recent.items() if t >= oldest}


async def read_event_ids(settings: Settings, since_ms: int) -> set[str]:
    """The event ids on meter.breaches written since ``since_ms`` (broker time); values that
    are not limit events are skipped."""
    out: set[str] = set()
    for _, value in await read_to_end(settings, settings.topic(topics.METER_BREACHES), since_ms=since_ms):
        if value is None:
            continue  # a tombstone: no event
        try:
            out.add(decode(LimitEvent, value).event_id)
        except WireError:
            metrics.REJECTED.labels("invalid_limit_event").inc()
    return out


def check_partitions(counts: dict[str, int]) -> str | None:
    """Why the topics do not fit the one-pass design, or None: haproxy.logs and meter.resolved
    must have the same partitions (a customer's records and state share one)."""
    if len(set(counts.values())) != 1:
        listed = ", ".join(f"{name}: {n}" for name, n in counts.items())
        return f"haproxy.logs and meter.resolved must have the same number of partitions ({listed})"
    return None


def run(settings: Settings) -> int:
    """Runs the worker until SIGTERM/SIGINT (faust commits what it acknowledged, exit 0).
    Kafka refusing its TLS or SASL ends it at once (exit 2: meterstream.kafka_access)."""
    asyncio.run(check_or_exit(settings.kafka, "worker"))
    created = asyncio.run(ensure_topics(settings))
    if created:
        log.info("topics created", topics=created)
    counts = {name: len(asyncio.run(partitions_of(settings, settings.topic(name)))) for name in STAGES.values()}
    problem = check_partitions(counts)
    if problem is not None:
        log.error("worker cannot start", problem=problem)
        return EXIT_CONFIG
    worker = Worker(settings)
    app = worker.build(next(iter(counts.values())))
    log.info("worker starting", app_id=app.conf.id, partitions=worker.count)
    faust_worker = faust.Worker(app, loglevel=os.environ.get("MS_FAUST_LOGLEVEL", "WARNING"), quiet=True,
                                redirect_stdouts=False, override_logging=False)
    faust_worker.execute_from_commandline()
    return 0

