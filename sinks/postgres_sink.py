"""`meterstream sink-postgres`: haproxy.logs -> haproxy_raw_logs, meter.usage -> usage_minutes
and usage_records, meter.breaches -> limit_events, exactly once.

Kafka's "storing offsets outside Kafka" pattern: each batch is one Postgres transaction that
copies the rows of each topic (binary COPY into a temporary staging table, then an INSERT ...
ON CONFLICT from it, since COPY cannot skip duplicates; see each handler module) and upserts the
next offset of every partition it covers into ``sink_offsets``. When partitions are assigned the consumer seeks to those
offsets, so after a crash nothing is applied twice and nothing is skipped; the group's
committed offsets are not used. A repeated record (same request_id, e.g. from a tailer
restart) inserts nothing. A batch is written while the next is taken (write-behind: one
being written, one filled, committed in order; the hand-over and the rebalance callbacks take
the same lock). While Postgres is away the batch being written is retried with backoff, the
next fills up and nothing more is consumed; memory is bounded by two batches of
``sink.batch_rows``.

A message that makes no row (no value, not a valid wire value: sinks/decode.py) or whose row
the table refuses (sinks/isolate.py) is dead-lettered to ``haproxy.logs.rejected``: the dead
letters of a batch are acknowledged by Kafka before the transaction that moves its offsets
commits, so each message ends in exactly one place (a crash between the two repeats those
dead letters, never a row; docs/sinks.md).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Iterable

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import IllegalStateError

from meterstream import logs, pg
from meterstream.kafka_clients import client_kwargs
from meterstream.producer import Message, RoundProducer, insist
from meterstream.schemas import topics
from meterstream.schemas.topics import key_of
from meterstream.schemas.wire import encode
from meterstream.service import FailureClock
from meterstream.settings import Settings
from meterstream.sinks import limit_events, metrics, pgvalues, raw_logs, usage
from meterstream.sinks.decode import INVALID_RECORD, REFUSED_BY_POSTGRES, Refused, dead_letter, row_of
from meterstream.sinks.isolate import REFUSED, refused_rows

log = logs.get(__name__)
LAG_INTERVAL_S = 1.0
# messages taken at a time (about 3 ms of the sink's work)
SLICE = 500
# messages a batch goes with when nothing is being written (about 13 ms of the sink's work)
EAGER_ROWS = 2_000
# what a connection's transport may hold before asyncpg waits (more than a batch's COPY data)
COPY_BUFFER_BYTES = 64 * 2**20
# Postgres away, or the connection lost: retried on a new connection. asyncpg raises its
# InternalClientError ("another operation is in progress") for a query started on a connection
# whose server has just ended it (an idle connection terminated: the error arrived, the close
# not yet); the batch is not committed either way, so it is written again (found by a test).
LOST: tuple[type[BaseException], ...] = (*pg.TRANSIENT, asyncpg.InternalClientError)
# topic -> its handler module: MODEL, TABLE, STAGING, COLUMNS, row(value), write(conn, rows)
HANDLERS = {topics.HAPROXY_LOGS: raw_logs, topics.METER_USAGE: usage, topics.METER_BREACHES: limit_events}
# a message taken: its partition, offset, value, and its row or why it is a dead letter
Taken = tuple[TopicPartition, int, bytes | None, tuple | Refused]


class Batch:
    """The messages taken since the last write, in the order taken, with the rows of each
    topic (and where each row's message is in ``taken``), how many are dead letters and the
    next offset of each partition: what one transaction writes."""

    __slots__ = ("taken", "rows", "at", "refused", "next_offsets", "taken_at")

    def __init__(self, taken: Iterable[Taken] = ()) -> None:
        self.taken: list[Taken] = []
        self.rows: dict[str, list[tuple]] = defaultdict(list)
        self.at: dict[str, list[int]] = defaultdict(list)
        self.refused = 0
        self.next_offsets: dict[TopicPartition, int] = {}
        self.taken_at: dict[TopicPartition, int] = {}  # Kafka timestamp (ms) of its last message, set when handed off
        for tp, offset, value, row in taken:  # a batch rebuilt (partitions revoked, rows refused)
            if isinstance(row, Refused):
                self.refused += 1
            else:
                self.at[tp.topic].append(len(self.taken))
                self.rows[tp.topic].append(row)
            self.taken.append((tp, offset, value, row))
            self.next_offsets[tp] = max(self.next_offsets.get(tp, 0), offset + 1)

    def __len__(self) -> int:
        return len(self.taken)


class _Seeker(ConsumerRebalanceListener):
    def __init__(self, sink: PostgresSink) -> None:
        self.sink = sink

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self.sink.lock:  # a batch being written finishes first; the rest is dropped
            self.sink.drop(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        async with self.sink.lock:
            await self.sink.seek_to_stored(assigned)


class PostgresSink:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.handlers = {settings.topic(name): HANDLERS[name] for name in settings.sink.topics}
        self.consumer_name = settings.sink.consumer
        # held while a batch is written, and by the rebalance callbacks: a revocation waits for
        # the batch being written to commit, then drops the revoked partitions' messages from
        # the batch being filled (self.batch); an assignment reads the stored offsets after it
        self.lock = asyncio.Lock()
        self.batch = Batch()  # being filled
        self.writing: asyncio.Future[None] | None = None  # the previous batch, being written
        self.in_flight = 0  # messages of the batch being written
        self.direct = True  # the last batch met no repeated record (see _write)
        self.expected: dict[TopicPartition, int] = {}  # next offset to take, per partition
        self.taken_at: dict[TopicPartition, int] = {}  # Kafka timestamp (ms) of the last message taken
        self.conn: asyncpg.Connection | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.stop_requested = asyncio.Event()
        self.failure = FailureClock()
        self.dead_letters = RoundProducer(settings, "sink-postgres", metrics.DEAD_LETTER_LATENCY,
                                          metrics.DEAD_LETTER_FAILURES)
        self.rejected_topic = settings.topic(topics.HAPROXY_LOGS_REJECTED)

    def health(self) -> tuple[bool, dict[str, object]]:
        failing = max(self.failure.seconds(), self.dead_letters.failure.seconds())
        return self.failure.healthy() and self.dead_letters.failure.healthy(), {
            "failing_s": round(failing, 1), "pending": len(self.batch) + self.in_flight}

    # -- Postgres ----------------------------------------------------------------------------
    async def _connection(self) -> asyncpg.Connection:
        while self.conn is None or self.conn.is_closed():
            try:
                conn = await pg.connect(self.settings, give_up_after_s=0)  # one try: backoff is ours
                # minutes and hours are UTC ones (the CHECKs and the hour roll-up truncate in
                # the session's zone, which a server default of +05:30 would shift)
                await conn.execute("SET TIME ZONE 'UTC'")
                await pgvalues.prepare(conn)  # the rows' timestamps and addresses, as they are
                # a batch's COPY data goes to the connection's transport in one go (asyncpg encodes
                # it without pausing), so that Postgres has it all while the next batch is taken:
                # with the transport's default limit (64 KiB) asyncpg paused every 512 KiB and the
                # rest flowed only between the slices of the next batch's decoding
                transport = getattr(conn, "_transport", None)  # asyncpg's, not public API
                if transport is not None:
                    transport.set_write_buffer_limits(high=COPY_BUFFER_BYTES)
                for handler in self.handlers.values():
                    await conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {handler.STAGING} "
                                       f"(LIKE {handler.TABLE} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
                self.conn = conn
            except pg.TRANSIENT as exc:
                await self._backoff(exc)
        return self.conn

    async def _connect_first(self) -> None:
        async with self.lock:
            await self._connection()

    async def _backoff(self, exc: BaseException) -> None:
        metrics.FAILURES.inc()
        self.failure.failed()
        log.warning("postgres unavailable, retrying", error=f"{type(exc).__name__}: {exc}"[:200])
        if self.conn is not None:
            self.conn.terminate()
            self.conn = None
        await asyncio.sleep(min(5.0, 0.5 + self.failure.seconds() / 4))

    async def seek_to_stored(self, assigned: list[TopicPartition]) -> None:
        if not assigned:
            return
        assert self.consumer is not None
        while True:
            try:
                conn = await self._connection()
                rows = await conn.fetch(
                    "SELECT topic, partition, next_offset FROM sink_offsets WHERE consumer = $1",
                    self.consumer_name)
                break
            except LOST as exc:
                await self._backoff(exc)
        stored = {TopicPartition(r["topic"], r["partition"]): r["next_offset"] for r in rows}
        # explicit positions: aiokafka's seek_to_beginning resets lazily, after records already
        # fetched from the old position were handed out (which repeated a batch)
        beginnings = await self.consumer.beginning_offsets([tp for tp in assigned if tp not in stored])
        for tp in assigned:
            position = stored.get(tp, beginnings.get(tp, 0))
            self.consumer.seek(tp, position)
            self.expected[tp] = position
        log.info("partitions assigned", resume={f"{tp.topic}:{tp.partition}": self.expected[tp] for tp in assigned})

    def drop(self, revoked: list[TopicPartition]) -> None:
        gone = set(revoked)
        self.batch = Batch(p for p in self.batch.taken if p[0] not in gone)
        for tp in gone:
            self.expected.pop(tp, None)

    async def flush(self) -> None:
        """Write the pending batch (after the one being written, if any) and wait until it is in."""
        await self.hand_off()
        await self.written()

    async def hand_off(self) -> None:
        """Start writing the pending batch, in the background (``self.writing``), once the
        batch written before it is in: at most one batch is being written while the next is
        filled, so batches commit in order and memory holds two batches at most. The batch is
        taken under the lock, so a rebalance callback sees it either still pending (and drops
        its revoked partitions' messages) or being written (and waits for its commit)."""
        await self.written()
        await self.lock.acquire()
        batch = self.batch
        if not batch:
            self.lock.release()
            return
        self.batch = Batch()
        batch.taken_at = {tp: self.taken_at[tp] for tp in batch.next_offsets if tp in self.taken_at}
        self.in_flight = len(batch)
        self.writing = asyncio.ensure_future(self._write_then_release(batch))

    async def written(self) -> None:
        """Wait for the batch being written, if any; raises what ended its writing (a batch
        Postgres refuses though no single row of it)."""
        writing, self.writing = self.writing, None
        if writing is not None:
            await writing

    async def _write_then_release(self, batch: Batch) -> None:
        try:
            await self._write(batch)
        finally:
            self.in_flight = 0
            self.lock.release()

    async def _write(self, batch: Batch) -> None:
        """Write a batch and its offsets in one transaction; retry until it is in. Its dead
        letters are acknowledged by Kafka first. The caller holds the lock."""
        sent: set[int] = set()  # dead letters already acknowledged (by index in the batch)
        # a handler's write_new (raw logs: COPY straight into the table, no savepoint) unless a
        # batch met a repeated record, until a batch goes in without one
        direct = self.direct
        while True:
            await self._send_dead_letters(batch, sent)
            started = time.monotonic()
            conn: asyncpg.Connection | None = None
            try:
                conn = await self._connection()
                written = {}
                async with conn.transaction():
                    for topic, rows in batch.rows.items():
                        if rows:
                            handler = self.handlers[topic]
                            write = getattr(handler, "write_new", handler.write) if direct else handler.write
                            written[handler.TABLE] = (await write(conn, rows), len(rows))
                    await conn.executemany(
                        """INSERT INTO sink_offsets (consumer, topic, partition, next_offset)
                           VALUES ($1, $2, $3, $4)
                           ON CONFLICT (consumer, topic, partition) DO UPDATE
                           SET next_offset = GREATEST(sink_offsets.next_offset, EXCLUDED.next_offset),
                               updated_at = now()""",
                        [(self.consumer_name, tp.topic, tp.partition, o) for tp, o in batch.next_offsets.items()])
                break
            except REFUSED as exc:  # a row the table refuses: find it, dead-letter it, write the rest
                if direct and isinstance(exc, asyncpg.UniqueViolationError):
                    direct = False  # a repeated record: the batch again, skipping what is there
                    continue
                if conn is None:
                    raise
                try:
                    batch = await self._isolate(conn, batch, exc)
                except LOST as again:
                    await self._backoff(again)
            except LOST as exc:
                await self._backoff(exc)
        new, taken = written.get(raw_logs.TABLE, (0, 0))  # (usage counts only the windows that changed)
        self.direct = new == taken
        metrics.BATCH_SECONDS.observe(time.monotonic() - started)
        for table, (new, taken) in written.items():
            metrics.ROWS.labels(table).inc(new)
            metrics.DUPLICATES.labels(table).inc(taken - new)
        for tp, at in batch.taken_at.items():  # (not self.taken_at: the next batch's, by now)
            if at > 0:
                metrics.EVENT_TIME.labels(tp.topic, str(tp.partition)).set(at / 1000)
        self.failure.recovered()

    async def _isolate(self, conn: asyncpg.Connection, batch: Batch, error: BaseException) -> Batch:
        """The batch with the rows Postgres refuses made dead letters."""
        metrics.ISOLATIONS.inc()
        found = await refused_rows(conn, [(self.handlers[topic], list(zip(batch.at[topic], rows, strict=True)))
                                          for topic, rows in batch.rows.items() if rows])
        if not found:  # no single row is refused: not a value's fault, so not a dead letter
            log.error("postgres refused a batch, but none of its rows alone",
                      error=f"{type(error).__name__}: {error}"[:300])
            raise error
        taken = list(batch.taken)
        for i, why in found.items():
            tp, offset, value, _ = taken[i]
            taken[i] = (tp, offset, value, Refused(REFUSED_BY_POSTGRES, why))
        log.error("postgres refused rows of a batch: dead-lettered, the rest is written", rows=len(found),
                  error=next(iter(found.values()))[:300])
        isolated = Batch(taken)  # the same messages, in the same order: dead letters sent stay sent
        isolated.taken_at = batch.taken_at
        return isolated

    async def _send_dead_letters(self, batch: Batch, sent: set[int]) -> None:
        """Publishes the batch's dead letters not yet acknowledged, and waits for Kafka's
        acknowledgement."""
        if not batch.refused:
            return
        keep = self.settings.produce.dead_letter_raw_bytes
        letters: list[Message] = []
        indices: list[int] = []
        counts: dict[tuple[str, str], int] = defaultdict(int)
        first: list[dict[str, str]] = []
        for i, (tp, offset, value, row) in enumerate(batch.taken):
            if isinstance(row, Refused) and i not in sent:
                line = dead_letter(tp.topic, tp.partition, offset, value, row, keep)
                letters.append(Message(self.rejected_topic, key_of(line), encode(line)))
                indices.append(i)
                counts[(tp.topic, row.reason)] += 1
                if len(first) < 5:
                    first.append({"position": f"{tp.topic}:{tp.partition}:{offset}", "reason": row.reason,
                                  "detail": row.detail[:200]})
        if not letters:
            return
        await self.dead_letters.deliver(letters, insist)
        sent.update(indices)
        for (topic, reason), n in counts.items():
            metrics.DEAD_LETTERS.labels(topic, reason).inc(n)
        log.warning("messages dead-lettered to haproxy.logs.rejected", count=len(letters), first=first)

    # -- Kafka -------------------------------------------------------------------------------
    def _take(self, tp: TopicPartition, messages: list[ConsumerRecord]) -> None:
        """Adds a partition's fetched messages to the batch: one pass from each value's bytes
        to its row (or the reason it is a dead letter). The hot loop of the sink."""
        # Only records at or past the position this sink set for the partition: aiokafka can
        # hand out records of a newly assigned partition before the assignment callback's seek
        # to the stored offset took effect; those come again from that offset.
        expected = start = self.expected.get(tp)
        if expected is None:
            return
        handler = self.handlers[tp.topic]
        batch = self.batch
        taken, rows, at = batch.taken, batch.rows[tp.topic], batch.at[tp.topic]
        for m in messages:
            offset = m.offset
            if offset < expected:
                continue
            expected = offset + 1
            value = m.value
            row: tuple | Refused
            try:
                row = values = row_of(handler, value)
            except Refused as refused:
                if refused.reason == INVALID_RECORD:
                    metrics.UNDECODABLE.labels(tp.topic).inc()
                row = refused
                batch.refused += 1
            else:
                at.append(len(taken))
                rows.append(values)
            taken.append((tp, offset, value, row))
        if expected != start:
            self.expected[tp] = batch.next_offsets[tp] = expected
            self.taken_at[tp] = messages[-1].timestamp

    async def run(self) -> None:
        s = self.settings
        self.consumer = AIOKafkaConsumer(
            **client_kwargs(s.kafka), group_id=self.consumer_name,
            client_id=f"{s.kafka.client_id}-sink-postgres", enable_auto_commit=False,
            auto_offset_reset="earliest", max_poll_interval_ms=3_600_000, isolation_level="read_committed",
            fetch_max_bytes=s.sink.fetch_max_bytes, max_partition_fetch_bytes=s.sink.partition_fetch_bytes,
        )
        self.consumer.subscribe(list(self.handlers), listener=_Seeker(self))
        # Postgres connected while the consumer joins its group: the assignment's seek to the
        # stored offsets then only reads them (records fetched before it are fetched again)
        connecting = asyncio.ensure_future(self._connect_first())
        try:
            await self.consumer.start()
        except BaseException:
            connecting.cancel()
            raise
        try:
            await connecting  # (Postgres refusing this process ends it here, with its error)
            last_flush, last_lag = time.monotonic(), 0.0  # the lag gauge from the first loop on
            while not self.stop_requested.is_set():
                # taken in slices: while a batch is being written, the writer answers Postgres
                # (each statement of its transaction is a round trip) between two slices, not a
                # whole batch's decoding later; and an idle writer gets a batch of EAGER_ROWS
                room = min(s.sink.batch_rows - len(self.batch), SLICE)
                fetched = await self.consumer.getmany(timeout_ms=100, max_records=room)
                for tp, messages in fetched.items():
                    self._take(tp, messages)
                    if self.writing is not None:
                        await asyncio.sleep(0)
                if self.writing is not None and self.writing.done():
                    await self.written()  # raises what ended it
                due = time.monotonic() - last_flush >= s.sink.flush_interval_s
                # nothing being written: Postgres is idle, so a batch goes as soon as it holds
                # EAGER_ROWS (the first batch, or when the sink is the slower of the two); while
                # one is being written the next fills up to batch_rows
                idle = self.writing is None or self.writing.done()
                if len(self.batch) >= (min(EAGER_ROWS, s.sink.batch_rows) if idle else s.sink.batch_rows) or (
                        self.batch and due):
                    await self.hand_off()  # waits for the batch before it first
                    last_flush = time.monotonic()
                if time.monotonic() - last_lag >= LAG_INTERVAL_S:  # a broker round trip: not per batch
                    await self._update_lag()
                    last_lag = time.monotonic()
            await self.flush()
        finally:
            if self.writing is not None:  # an error ended the loop: the batch being written is
                self.writing.cancel()  # rolled back (its offsets with it), so it is read again
                await asyncio.gather(self.writing, return_exceptions=True)
            await asyncio.wait_for(self.consumer.stop(), s.produce.stop_timeout_s)
            await self.dead_letters.stop()
            if self.conn is not None:
                await self.conn.close()

    async def _update_lag(self) -> None:
        assert self.consumer is not None
        assignment = list(self.consumer.assignment())
        if not assignment:
            return
        ends = await self.consumer.end_offsets(assignment)
        for tp in assignment:
            try:
                position = await self.consumer.position(tp)
            except IllegalStateError:  # revoked while the end offsets were asked for (a rebalance)
                continue
            metrics.LAG.labels(tp.topic, str(tp.partition)).set(max(0, ends[tp] - position))

    def request_stop(self) -> None:
        self.stop_requested.set()
