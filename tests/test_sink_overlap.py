"""`meterstream sink-postgres` writes a batch while it takes the next (write-behind): batches
still commit in order and exactly once when Postgres drops the sink's connection in the middle
of its writes and when partitions move between two sinks (real Kafka, Postgres, processes)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from meterstream.dev.processes import Process
from meterstream.kafka import end_offsets
from meterstream.kafka_clients import client_kwargs
from meterstream.schemas.topics import key_of
from meterstream.schemas.wire import encode
from meterstream.settings import Settings
from tests.test_sink_poison import caught_up, dead_letters
from tests.test_sink_postgres import consumed, record, sink

pytestmark = pytest.mark.services

TABLE = 'table="haproxy_raw_logs"'


async def _drop_sink_connections(dsn: str, spare: int, times: int, every: int) -> int:
    """Terminates the sinks' Postgres connections each time ``every`` more messages are
    consumed (so in the middle of their writes: the sinks write all the time); returns how
    many connections it ended. ``spare``: the test's own connection."""
    pg = await asyncpg.connect(dsn)  # its own: the test's is in use meanwhile
    try:
        ended, mark = 0, await consumed(pg) + every
        while times:
            if await consumed(pg) >= mark:
                ended += await pg.fetchval(
                    "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND backend_type = 'client backend' AND pid <> $1) AS t", spare)
                times, mark = times - 1, mark + every
            await asyncio.sleep(0.01)
        return ended
    finally:
        await pg.close()


async def send(settings: Settings, messages: list[tuple[str, bytes | None, bytes | None]]) -> list[tuple[int, int]]:
    """(topic, key, value), sent together (a backlog the sinks write in full batches); returns
    their (partition, offset)."""
    producer = AIOKafkaProducer(**client_kwargs(settings.kafka), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        sent = [await producer.send(settings.topic(topic), value, key=key) for topic, key, value in messages]
        return [(meta.partition, meta.offset) for meta in await asyncio.gather(*sent)]
    finally:
        await producer.stop()


async def _assigned(proc: Process) -> None:
    deadline = asyncio.get_running_loop().time() + 60
    while b"partitions assigned" not in proc.log.read_bytes():
        assert asyncio.get_running_loop().time() < deadline, "no partitions assigned"
        await asyncio.sleep(0.05)


def _counts(proc: Process) -> tuple[float, float]:
    return (proc.metric("meterstream_sink_rows_total", TABLE, default=0),
            proc.metric("meterstream_sink_duplicates_total", TABLE, default=0))


async def test_batches_commit_in_order_exactly_once_through_postgres_failures_and_a_rebalance(
    ms_topics: Settings, pg_dsn: str, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    topic = "haproxy.logs"

    def messages(ids: range, junk: int) -> list[tuple[str, bytes | None, bytes | None]]:
        out: list[tuple[str, bytes | None, bytes | None]] = []
        for i in ids:
            r = record(i)
            out.append((topic, key_of(r), encode(r)))
            if i % 10 == 0:  # a repeated record: a duplicate, never a second row
                out.append((topic, key_of(r), encode(r)))
            if i % (len(ids) // junk) == 0:  # junk: a dead letter, once
                out.append((topic, b"junk", b"not json %d" % i))
        return out

    first, second, third = messages(range(0, 6_000), 5), messages(range(6_000, 12_000), 5), \
        messages(range(12_000, 15_000), 3)
    junk = [m for m in first + second + third if m[1] == b"junk"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    positions = await send(ms_topics, first)  # a backlog: the sink writes batch after batch
    a = sink(ms_topics, pg_dsn, tmp_path / "a").start()  # batches of 700 messages: many, overlapped
    b = sink(ms_topics, pg_dsn, tmp_path / "b")
    try:
        # Postgres failures in the middle of writes
        dropped = asyncio.ensure_future(_drop_sink_connections(pg_dsn, pg.get_server_pid(), 3, 1_000))
        while await consumed(pg) < 1_500:
            await asyncio.sleep(0.01)
        b.start()  # partitions move: a drops what it had not handed to its writer, b reads it again
        await _assigned(b)
        positions += await send(ms_topics, second)  # both write it
        await caught_up(pg, len(first) + len(second), a)
        assert await dropped >= 3
        assert b.running()
        b_failures = b.metric("meterstream_sink_postgres_failures_total", default=0)
        counted = [_counts(a), _counts(b)]
        assert b.terminate() == 0  # its pending batch is written; a takes all partitions again
        dropped = asyncio.ensure_future(_drop_sink_connections(pg_dsn, pg.get_server_pid(), 2, 1_000))
        positions += await send(ms_topics, third)
        await caught_up(pg, len(first) + len(second) + len(third), a)
        assert await dropped >= 2
        counted.append(_counts(a))
        # connections ended in the middle of a write (at least one of the five; the others were
        # idle between two writes, and reconnected unseen)
        assert a.metric("meterstream_sink_postgres_failures_total") + b_failures >= 1
    finally:
        if b.proc is not None and b.running():
            b.terminate()
        assert a.terminate() == 0
    ids = {f"r-{i:08d}" for i in range(15_000)}
    assert {r["request_id"] for r in await pg.fetch("SELECT request_id FROM haproxy_raw_logs")} == ids
    assert await pg.fetchval("SELECT count(*) FROM haproxy_raw_logs") == len(ids)
    # each batch applied once: rows and duplicates counted by the sinks add up to what was sent
    # (a batch applied twice would count its rows again as duplicates)
    b_rows, b_dups = counted[1]
    a_rows, a_dups = counted[2]
    assert (a_rows + b_rows, a_dups + b_dups) == (len(ids), 1_500)
    assert 0 < b_rows < len(ids)
    # the offsets: exactly what was produced, per partition
    stored = {(r["partition"], r["next_offset"]) for r in await pg.fetch(
        "SELECT partition, next_offset FROM sink_offsets WHERE topic = $1", ms_topics.topic(topic))}
    ends = await end_offsets(ms_topics, ms_topics.topic(topic))
    assert stored == {(p, o) for p, o in ends.items() if o}
    assert max(o for _, o in positions) < max(o for _, o in stored)
    # each junk message one dead letter, with its position
    letters = [d for d in await dead_letters(ms_topics) if d["source"] == ms_topics.topic(topic)]
    junk_positions = {(p, o) for (p, o), m in zip(positions, first + second + third, strict=True) if m[1] == b"junk"}
    assert len(letters) == len(junk) == len(junk_positions)
    assert {(int(d["position"]["stream"].rsplit(":", 1)[1]), d["position"]["offset"]) for d in letters} == \
        junk_positions
