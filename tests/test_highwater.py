"""High-water marks (meter/highwater.py): repeats are recognised per route and per source
stream, and a value's marks stay bounded whatever the input."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from meterstream.meter.aggregates import CustomerLimits, InvalidKeyState, UsageMinute, dumps
from meterstream.meter.highwater import MAX_STREAMS, HighWater, stream_key


def test_worker_repeats_and_tailer_repeats() -> None:
    hw = HighWater()
    a = stream_key(0, "host:1:2:f")
    assert hw.apply(0, 10, a, 1000, 1) and hw.apply(0, 11, a, 1200, 2)
    assert not hw.apply(0, 11, a, 1200, 2)  # the worker processes offset 11 again
    assert not hw.apply(0, 12, a, 1000, 1)  # the tailer resent line 1000: a new upstream offset
    assert hw.apply(0, 13, a, 1400, 3)
    assert hw.apply(1, 5, stream_key(1, "host:1:2:f"), 1100, 3)  # another route has its own order


def test_worker_repeats_stay_exact_past_the_stream_cap() -> None:
    """Many source streams reach one value: the marks of the streams silent longest are
    forgotten, but a worker that processes everything again still changes nothing."""
    hw = HighWater()
    records = [(0, i, stream_key(0, f"syslog:h:udp:{i}"), 0, 1_000 + i) for i in range(MAX_STREAMS * 3)]
    assert all(hw.apply(*r) for r in records)
    assert len(hw.streams) == MAX_STREAMS and hw.forgotten == MAX_STREAMS * 2
    assert not any(hw.apply(*r) for r in records)
    again = HighWater.load(orjson.loads(orjson.dumps(hw.dump())))
    assert again == HighWater(hw.routes, hw.streams) and not any(again.apply(*r) for r in records)


positions = st.tuples(st.integers(0, 3), st.integers(0, 2**63 - 1), st.text(min_size=1, max_size=256),
                      st.integers(0, 2**63 - 1), st.integers(946_684_800_000, 4_102_444_799_999))


@settings(max_examples=50, deadline=None)
@given(st.lists(positions, min_size=1, max_size=400))
def test_a_value_stays_small_whatever_the_records(records: list) -> None:
    """Adversarial positions (long, distinct stream names, huge offsets) on every kind of
    aggregate: the serialized value stays far below the worker's message bound."""
    values: list[UsageMinute | CustomerLimits | InvalidKeyState] = [
        UsageMinute(0), CustomerLimits(0), InvalidKeyState(0)]
    for value in values:
        for route, upstream, stream, offset, ts in records:
            value.seen.apply(route, upstream, stream_key(route, stream), offset, ts)
        assert len(dumps(value)) < 64 * 1024
