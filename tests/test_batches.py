"""The batch layer's offset bookkeeping (meter/batches.py), without a broker: what faust
commits after batches are delivered, acked (through Consumer.ack or faust's inline ack),
left unacked, or separated by holes."""

import asyncio

import faust
import pytest
from faust.types import TP

from meterstream.meter import batches

T = "fbx-unit"
tp = TP(T, 0)


@pytest.fixture
def consumer():
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    app = faust.App("fbx-unit", broker=batches.broker_url("127.0.0.1:1"), store="memory://")
    app.topic(T, value_serializer="raw")
    batches.enable(app, T)
    app.topics._acking_topics.add(T)  # type: ignore[attr-defined]  # faust's Conductor, not ConductorT
    c = app.consumer
    assert isinstance(c, batches.BatchConsumer)
    yield c
    loop.close()


class R:  # minimal aiokafka ConsumerRecord
    def __init__(self, o):
        self.topic, self.partition, self.offset = T, 0, o
        self.timestamp, self.timestamp_type, self.key, self.value = 0, 0, None, b""


def deliver(c, first, last, offsets=None):
    """What getmany + _drain_messages do for one batch."""
    recs = [R(o) for o in (offsets or range(first, last + 1))]
    m = c._to_batch_message(tp, recs)
    c._batch_first[tp][m.offset] = m.first_offset
    if tp not in c._first_delivered or m.first_offset < c._first_delivered[tp]:
        c._first_delivered[tp] = m.first_offset
    c._gap_cap[tp] = m.first_offset
    r = c._read_offset[tp]
    if r is None or m.offset >= r:
        if m.offset - (r or 0) > 1 and r:
            asyncio.get_event_loop().run_until_complete(c._add_gap(tp, r + 1, m.offset))
        c._read_offset[tp] = m.offset
    c._gap_cap.pop(tp)
    return m


def commit(c):
    off = c._new_offset(tp)
    if off is not None and c._should_commit(tp, off):
        c._committed_offset[tp] = off
        return off
    return None


def test_fresh_group_in_order(consumer):
    a, b = deliver(consumer, 0, 99), deliver(consumer, 100, 199)
    consumer.ack(a)
    assert commit(consumer) == 100
    consumer.ack(b)
    assert commit(consumer) == 200


def test_out_of_order_fresh_group_does_not_skip(consumer):
    a, b = deliver(consumer, 0, 99), deliver(consumer, 100, 199)
    consumer.ack(b)  # a not acked (e.g. released)
    assert commit(consumer) is None
    consumer.ack(a)
    assert commit(consumer) == 200


def test_resume_after_commit_and_unacked_middle(consumer):
    consumer._committed_offset[tp] = consumer._read_offset[tp] = 500  # perform_seek
    a, _b, c_ = deliver(consumer, 500, 599), deliver(consumer, 600, 699), deliver(consumer, 700, 799)
    consumer.ack(a)
    consumer.ack(c_)  # b delivered but never acked: the gap mechanism must not cover it
    assert commit(consumer) == 600
    assert commit(consumer) is None
    assert consumer._committed_offset[tp] == 600


def test_transaction_marker_holes(consumer):
    consumer._committed_offset[tp] = consumer._read_offset[tp] = 101  # 100 was a marker
    a = deliver(consumer, 102, 201)          # 101 is a marker too: hole [101]
    b = deliver(consumer, 203, 302)          # hole [202]
    consumer.ack(a)
    consumer.ack(b)
    assert commit(consumer) == 303


def test_inline_cython_ack_uses_registry(consumer):
    a, b = deliver(consumer, 0, 99), deliver(consumer, 100, 199)
    for m in (a, b):  # what faust/_cython/streams.pyx StreamIterator.after does
        m.acked = True
        consumer._acked_index[tp].add(m.offset)
        consumer._acked[tp].append(m.offset)
    assert commit(consumer) == 200


def test_redelivery_after_seek_back(consumer):
    consumer._committed_offset[tp] = consumer._read_offset[tp] = 100
    a = deliver(consumer, 100, 199)
    stale = deliver(consumer, 200, 299)       # delivered, released (not acked)
    consumer.ack(a)
    consumer._read_offset[tp] = 200           # seek_wait({tp: 200})
    again = deliver(consumer, 200, 299)
    assert stale.offset == again.offset
    consumer.ack(again)
    assert commit(consumer) == 300


def test_seek_to_zero_with_committed(consumer):
    consumer._committed_offset[tp] = 150
    consumer._read_offset.pop(tp, None)       # seek_wait({tp: 0}) deletes the read offset
    a = deliver(consumer, 0, 199)
    consumer.ack(a)
    assert commit(consumer) == 200
