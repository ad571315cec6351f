"""Batch delivery for faust-streaming (0.15, aiokafka driver): one faust event per fetched
batch of a partition, for the topics the worker names (docs/metering.md "One faust event per
batch").

faust pays 60-100 us per event (fetcher, conductor, channel queue, stream iteration, acks);
paid per record, it caps a worker near 10,000 records/s. For the topics named in
``enable(app, ...)`` the consumer hands faust ONE message per fetched batch per partition
(what aiokafka returned for that partition in one ``fetched_records`` call); every other topic
(table changelogs during recovery, standby) keeps faust's per-record path. faust's app,
agents, tables, group membership, rebalancing and recovery are unchanged.

Plug-in: importing this module registers the URL scheme ``kafkabatch://`` in faust's transport
registry (``broker_url``); that transport's consumer is ``BatchConsumer``.

A batch message (``BatchMessage``): ``offset`` is the offset of its LAST record (what faust's
read-offset, drop and ack bookkeeping see), ``first_offset`` that of its first, ``value`` the
list of aiokafka ``ConsumerRecord`` (offset, key, value, timestamp), ``key`` None,
``generation_id`` the consumer generation when fetched (faust drops stale ones).

Offsets, so that faust's commit is exact (where fetching restarts; the worker's own positions
stay the truth, meter.offsets):
1. acking a batch credits its whole range ``[first_offset, offset]`` (``BatchConsumer.ack``;
   faust's compiled stream iterator acks inline and appends only ``offset``: those are mapped
   back to their range through a registry of delivered batches), and ignores a batch of an
   older consumer generation;
2. ``_add_gap`` is trimmed to the real hole before a batch, so a delivered but unacked batch is
   never committed through faust's gap mechanism;
3. ``_new_offset`` is computed from ranges for batch topics (O(batches), not O(records));
4. a batch fetched before a seek of its partition is dropped (seek counters sampled on the
   consumer thread), since aiokafka fetches again from the sought position.

Pitfalls, each handled by the worker: an event neither acked nor garbage collected blocks
faust's ``wait_empty`` at every rebalance and stop (``release`` one deliberately left unacked);
a channel's ``maxsize`` and ``take`` sizes count events, not records (a small queue per batch
topic); values must stay ``raw``. The layer reaches into faust's and aiokafka's private
internals: both versions are pinned in pyproject.toml, and tests/test_batches.py checks the
offset bookkeeping without a broker (the kill and rebalance tests of tests/test_worker.py with
one).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Mapping, MutableMapping
from typing import Any

import faust
from faust.transport import drivers
from faust.transport.drivers import aiokafka as _ak
from faust.types import TP
from faust.types.tuples import ConsumerMessage, ack_lock
from mode.utils.futures import notify

__all__ = ["BatchMessage", "BatchConsumer", "Transport", "enable", "batch_topics", "release", "broker_url"]

SCHEME = "kafkabatch"


def broker_url(bootstrap: str) -> str:
    """faust's broker setting for the batch transport."""
    return ",".join(f"{SCHEME}://{server}" for server in bootstrap.split(","))


def enable(app: faust.App, *topic_names: str) -> None:
    """Deliver the named topics as one event per fetched batch per partition."""
    names = getattr(app, "_meterstream_batch_topics", None)
    if names is None:
        names = set()
        app._meterstream_batch_topics = names  # type: ignore[attr-defined]
    names.update(topic_names)


def batch_topics(app: Any) -> set[str]:
    return getattr(app, "_meterstream_batch_topics", set())


def release(app: Any, event: Any) -> None:
    """Give up an event WITHOUT acking it (its offsets are not committed by it).

    faust tracks every event that reached stream iteration in ``consumer._unacked_messages``
    (a WeakSet) and ``wait_empty`` -- run at every rebalance (app/base.py:1829) and at stop
    (app/base.py:1738) -- loops until that set is empty.  An event that is neither acked nor
    garbage collected (e.g. still referenced by the agent's loop variable) blocks rebalances
    and shutdown forever.  Call this for events deliberately left unacked.
    """
    app.consumer._unacked_messages.discard(event.message)


class BatchMessage(ConsumerMessage):
    """One faust message standing for a contiguous fetched batch of one partition."""

    # ConsumerMessage has no __slots__ of its own (so instances have a __dict__ anyway);
    # declaring these keeps attribute access fast.
    __slots__ = ("first_offset",)

    first_offset: int

    @property
    def records(self) -> list[Any]:
        return self.value  # type: ignore[return-value]


class _Records(dict):
    """RecordMap + the per-tp seek counters sampled when aiokafka returned it."""

    seeks: Mapping[TP, int] = {}


class BatchConsumerThread(_ak.AIOKafkaConsumerThread):
    """Counts seeks per tp on the consumer thread, so that the main loop can tell whether a
    fetched batch predates a seek (stale) or not."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.seek_counts: dict[TP, int] = defaultdict(int)

    async def _fetch_records(self, consumer: Any, active_partitions: set[TP],
                             timeout: float | None = None,
                             max_records: int | None = None) -> Any:
        records = await super()._fetch_records(consumer, active_partitions, timeout=timeout,
                                               max_records=max_records)
        # no await between aiokafka returning the records and this snapshot: a seek
        # (which runs on this same thread loop) is either before or after both
        out = _Records(records)
        out.seeks = dict(self.seek_counts)
        return out

    async def _seek_wait(self, consumer: Any, partitions: Mapping[TP, int]) -> None:
        for tp in partitions:
            self.seek_counts[tp] += 1
        await super()._seek_wait(consumer, partitions)

    def seek(self, partition: TP, offset: int) -> None:
        self.seek_counts[partition] += 1
        super().seek(partition, offset)


class BatchConsumer(_ak.Consumer):
    """aiokafka Consumer delivering selected topics batch-wise."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # tp -> {last_offset: first_offset} of delivered (not yet credited) batches;
        # used when an ack bypasses Consumer.ack (Cython StreamIterator.after)
        self._batch_first: MutableMapping[TP, dict[int, int]] = defaultdict(dict)
        # tp -> acked [lo, hi) ranges not yet turned into a commit
        self._batch_acked: MutableMapping[TP, list[tuple[int, int]]] = defaultdict(list)
        # tp -> first offset of the batch being handed to _drain_messages (caps _add_gap)
        self._gap_cap: dict[TP, int] = {}
        # tp -> lowest first_offset delivered since assignment: the floor of the commit
        # check when nothing is committed yet (stock faust has no check then)
        self._first_delivered: dict[TP, int] = {}
        self.n_stale_dropped = 0   # batches dropped because fetched before a seek

    def _new_consumer_thread(self) -> BatchConsumerThread:
        return BatchConsumerThread(self, loop=self.loop, beacon=self.beacon)

    @property
    def _batched(self) -> set[str]:
        return batch_topics(self.app)

    # -- delivery -------------------------------------------------------------------------
    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
        """faust's Consumer.getmany (consumer.py:693-774), except that records of batch
        topics are yielded as one BatchMessage per tp."""
        records, active_partitions = await self._wait_next_records(timeout)
        generation_id = self.app.consumer_generation_id
        if records is None or self.should_stop:
            return
        batched_names = self._batched
        batched = {tp: recs for tp, recs in records.items() if tp.topic in batched_names and recs}
        rest: Mapping[TP, list[Any]] = records
        if batched:
            rest = {tp: recs for tp, recs in records.items() if tp.topic not in batched_names}
        if not self.flow_active:
            self.log.dev("getmany called while flow not active. Seek back to committed offsets.")
            try:
                await self.perform_seek()
            except Exception as ex:
                self.log.warning(f"exception performing seek when flow not active {ex}")
            return

        fetched_seeks: Mapping[TP, int] = getattr(records, "seeks", {})
        seek_counts = getattr(self._thread, "seek_counts", {})

        def usable(tp: TP) -> bool:
            return (active_partitions is None or tp in active_partitions
                    or tp in self._buffered_partitions)

        for tp, recs in batched.items():
            if not self.flow_active or self.app.consumer_generation_id != generation_id:
                return
            if seek_counts.get(tp, 0) != fetched_seeks.get(tp, 0):
                # fetched before a seek_wait/seek on this tp: stale, drop (aiokafka
                # re-fetches from the sought position)
                self.log.dev("Dropping batch fetched before seek: %r %r..%r",
                             tp, recs[0].offset, recs[-1].offset)
                self.n_stale_dropped += 1
                continue
            if not usable(tp):
                continue
            self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
            message = self._to_batch_message(tp, recs)
            self._batch_first[tp][message.offset] = message.first_offset
            floor = self._first_delivered.get(tp)
            if floor is None or message.first_offset < floor:
                self._first_delivered[tp] = message.first_offset
            self._gap_cap[tp] = message.first_offset
            try:
                yield tp, message
            finally:
                self._gap_cap.pop(tp, None)

        if rest:
            to_message = self._to_message
            for tp, record in self.scheduler.iterate(rest):
                if not self.flow_active or self.app.consumer_generation_id != generation_id:
                    break
                if usable(tp):
                    self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                    yield tp, to_message(tp, record)

    def _to_batch_message(self, tp: TP, recs: list[Any]) -> BatchMessage:
        first, last = recs[0], recs[-1]
        ts = last.timestamp
        msg = BatchMessage(
            last.topic, last.partition, last.offset,
            ts / 1000.0 if ts is not None else None,  # type: ignore[arg-type]
            last.timestamp_type, None, None, recs, None,  # type: ignore[arg-type]  # value: the records
            0, len(recs), tp, generation_id=self.app.consumer_generation_id,
        )
        msg.first_offset = first.offset
        return msg

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        # _drain_messages (consumer.py:1212-1217) calls this with (read_offset+1, offset)
        # where offset is the batch's LAST offset; only the hole before the batch is a gap.
        cap = self._gap_cap.get(tp)
        if cap is not None:
            offset_to = min(offset_to, cap - 1)
        await super()._add_gap(tp, offset_from, offset_to)

    # -- acks and commits -------------------------------------------------------------------
    def ack(self, message: Any) -> bool:
        if not isinstance(message, BatchMessage):
            return super().ack(message)
        with ack_lock:
            if message.acked:
                return False
            message.acked = True
            self._unacked_messages.discard(message)
            try:
                tp = message.tp
                if not self.app.topics.acks_enabled_for(message.topic):
                    return False
                if message.generation_id != self.app.consumer_generation_id:
                    # fetched before the last rebalance: faust's pure-Python stream
                    # iterator acks such skipped events (streams.py _py_aiter) although
                    # nothing processed them; never credit them
                    return False
                self._batch_first[tp].pop(message.offset, None)
                committed = self._committed_offset[tp]
                lo, hi = message.first_offset, message.offset + 1
                if committed is not None:
                    lo = max(lo, committed)
                if lo >= hi:
                    return False
                self._batch_acked[tp].append((lo, hi))
                self._acked[tp]  # noqa: B018 - makes _filter_tps_with_pending_acks see tp
                self._n_acked += hi - lo
                return True
            finally:
                notify(self._waiting_for_ack)

    def _new_offset(self, tp: TP) -> int | None:
        if tp.topic not in self._batched:
            return super()._new_offset(tp)
        with ack_lock:
            ranges = self._batch_acked.pop(tp, None) or []
            ints = self._acked.get(tp)
            if ints:  # acks that bypassed self.ack (Cython inline ack): only the last offset
                registry = self._batch_first.get(tp, {})
                for o in ints:
                    ranges.append((registry.pop(o, o), o + 1))
                ints.clear()
                self._acked_index[tp].clear()
            if not ranges:
                return None
            committed = self._committed_offset[tp]
            if committed is not None:
                ranges = [(max(lo, committed), hi) for lo, hi in ranges if hi > committed]
                if not ranges:
                    return None
            max_acked = max(hi for _, hi in ranges) - 1
            gap = self._gap.get(tp)
            if gap:
                # like consumer.py:1117-1131: holes starting below the highest acked offset
                holes = [(iv.begin, iv.end) for iv in gap.overlap(0, max_acked)]
                if holes:
                    ranges.extend(holes)
                    gap.chop(0, max(h for _, h in holes))
            ranges.sort()
            merged: list[list[int]] = []
            for lo, hi in ranges:
                if merged and lo <= merged[-1][1]:
                    if hi > merged[-1][1]:
                        merged[-1][1] = hi
                else:
                    merged.append([lo, hi])
            start, end = merged[0]
            # same tolerance as consumer.py:1138-1140 (read_offset == committed makes the
            # first hole start at committed + 1); with nothing committed, the floor is the
            # first offset delivered since assignment
            floor = committed if committed else self._first_delivered.get(tp)
            if floor is not None and start - floor > 1:
                self._batch_acked[tp] = [(lo, hi) for lo, hi in merged]
                return None
            self._batch_acked[tp] = [(lo, hi) for lo, hi in merged[1:]]
            firsts = self._batch_first.get(tp)
            if firsts:
                for last in [k for k in firsts if k < end]:
                    del firsts[last]
            return end

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        for tp in revoked:
            self._batch_first.pop(tp, None)
            self._batch_acked.pop(tp, None)
            self._gap_cap.pop(tp, None)
            self._first_delivered.pop(tp, None)
        await super().on_partitions_revoked(revoked)


class Transport(_ak.Transport):
    Consumer = BatchConsumer


drivers.TRANSPORTS.aliases[SCHEME] = f"{__name__}:Transport"
