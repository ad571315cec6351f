"""The syslog receiver's parts without I/O: RFC 6587 framing, the byte-bounded queue, the
allow-list and the bounded table of UDP senders. The receiver itself is tested as a process
against the real broker in tests/test_syslog.py."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterstream.ingest.syslog_framing import Frame, FrameReader
from meterstream.ingest.syslog_peers import AllowList, Senders
from meterstream.ingest.syslog_queue import ByteQueue
from tests.test_parser import HTTPLOG

MAX, KEEP = 4096, 256


def read_all(chunks: list[bytes], max_len: int = MAX, keep: int = KEEP) -> list[Frame]:
    reader = FrameReader(max_len, keep)
    out: list[Frame] = []
    for chunk in chunks:
        reader.feed(chunk)
        out.extend(reader.frames())
        assert reader.buffered() <= max_len + len(chunk) + 16
    reader.feed_eof()
    out.extend(reader.frames())
    return out


def octets(message: bytes) -> bytes:
    return str(len(message)).encode() + b" " + message


def split_everywhere(data: bytes) -> list[list[bytes]]:
    return [[data]] + [[data[:i], data[i:]] for i in range(1, len(data))]


RFC5424 = b"<134>1 2026-11-25T16:50:01.123Z edge1 haproxy 99 - - hello world"


def test_an_httplog_line_starting_with_digits_is_newline_framed() -> None:
    data = HTTPLOG.encode() + b"\n" + HTTPLOG.encode() + b"\r\n"
    for chunks in split_everywhere(data):
        frames = read_all(chunks)
        assert [f.data for f in frames] == [HTTPLOG.encode()] * 2
        assert not any(f.octet_counted or f.too_long for f in frames)


def test_octet_counting_needs_msg_len_sp_and_pri() -> None:
    data = octets(RFC5424) + octets(RFC5424) + b"\n" + b"12 not octets\n" + b"0 <1>x\n" + octets(RFC5424)
    for chunks in split_everywhere(data):
        frames = read_all(chunks)
        assert [(f.data, f.octet_counted) for f in frames] == [
            (RFC5424, True), (RFC5424, True), (b"12 not octets", False), (b"0 <1>x", False), (RFC5424, True)]


def test_a_run_of_digits_is_a_line_not_a_header() -> None:
    digits = b"1" * 100_000
    frames = read_all([digits[i:i + 1000] for i in range(0, len(digits), 1000)] + [b"\n" + HTTPLOG.encode() + b"\n"])
    assert [(f.too_long, f.size) for f in frames] == [(True, 100_000), (False, len(HTTPLOG))]
    assert frames[0].data == b"1" * KEEP and frames[1].data == HTTPLOG.encode()
    assert [f.data for f in read_all([b"1234567890 <13>x\n"])] == [b"1234567890 <13>x"]  # 10 digits: a line


def test_over_long_lines_and_frames_are_cut_and_the_stream_goes_on() -> None:
    long_line = b"x" * 50_000
    long_frame = b"<13>" + b"y" * 50_000
    data = long_line + b"\nok1\n" + octets(long_frame) + octets(b"<13>ok2") + b"ok3"
    for chunks in ([data], [data[i:i + 999] for i in range(0, len(data), 999)]):
        frames = read_all(chunks)
        assert [(f.data[:4], f.size, f.too_long) for f in frames] == [
            (b"xxxx", 50_000, True), (b"ok1", 3, False), (b"<13>", len(long_frame), True),
            (b"<13>", 7, False), (b"ok3", 3, False)]
        assert len(frames[0].data) == KEEP and len(frames[2].data) == KEEP


def test_a_line_of_exactly_the_maximum_passes() -> None:
    frames = read_all([b"a" * MAX + b"\r\n" + b"b" * (MAX + 1) + b"\n"])
    assert [(len(f.data), f.too_long) for f in frames] == [(MAX, False), (KEEP, True)]


def test_the_end_of_the_stream_delivers_what_came() -> None:
    assert [f.data for f in read_all([b"partial"])] == [b"partial"]
    assert [f.data for f in read_all([b"20 <13>cut"])] == [b"<13>cut"]
    assert [f.data for f in read_all([b"42"])] == [b"42"]
    assert [(f.size, f.too_long) for f in read_all([b"z" * 10_000])] == [(10_000, True)]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=3000), max_size=20), st.integers(1, 5000))
def test_any_bytes_in_any_chunks_never_raise_and_stay_bounded(parts: list[bytes], cut: int) -> None:
    data = b"".join(parts)
    frames = read_all([data[i:i + cut] for i in range(0, len(data), cut)], max_len=1024, keep=256)
    assert all(len(f.data) <= 1024 for f in frames)
    assert sum(f.size for f in frames) <= len(data)


async def test_queue_bounded_in_bytes_waits_in_order_and_refuses_offers() -> None:
    queue: ByteQueue[str] = ByteQueue(max_bytes=100, max_items=1000)
    await queue.put("a", 60)
    assert not queue.offer("b", 50) and queue.offer("c", 40) and queue.bytes == 100
    order: list[str] = []

    async def put(name: str, size: int) -> None:
        await queue.put(name, size)
        order.append(name)

    waiting = [asyncio.create_task(put("d", 90)), asyncio.create_task(put("e", 5))]
    await asyncio.sleep(0.01)
    assert order == [] and not queue.offer("f", 1)  # nobody jumps the waiting putters
    assert await queue.get_batch(10, 1000, 0.1) == ["a", "c"]
    await asyncio.gather(*waiting)
    assert order == ["d", "e"] and queue.bytes == 95
    assert await queue.get_batch(10, 50, 0.1) == ["d"]  # a round bounded in bytes, at least one item
    assert await queue.get_batch(10, 50, 0.1) == ["e"]
    assert await queue.get_batch(10, 50, 0.05) == []
    await queue.put("huge", 10_000)  # an empty queue takes any item
    assert len(queue) == 1


def test_allow_list_ipv4_ipv6_and_mapped() -> None:
    allow = AllowList(["127.0.0.0/8", "::1/128", "10.1.0.0/16", "2001:db8::/32"])
    assert allow.allows("127.0.0.1") and allow.allows("10.1.2.3") and allow.allows("::1")
    assert allow.allows("2001:db8::7") and allow.allows("::ffff:10.1.2.3")
    assert not allow.allows("10.2.0.1") and not allow.allows("::ffff:10.2.0.1") and not allow.allows("2001:db9::1")
    assert not allow.allows("not an address") and not AllowList([]).allows("127.0.0.1")
    with pytest.raises(ValueError):
        AllowList(["10.0.0.1/8"])


def test_senders_bounded_and_expired() -> None:
    senders = Senders(AllowList(["127.0.0.0/8"]), max_entries=10, idle_s=5)
    for port in range(1000):
        sender, new = senders.seen(("127.0.0.1", port), now=float(port) / 1000)
        assert sender.allowed and new
    assert len(senders) == 10
    assert senders.seen(("127.0.0.1", 999), now=2.0) == (senders.seen(("127.0.0.1", 999), now=2.0)[0], False)
    assert senders.expire(now=6.5) == 9 and len(senders) == 1
    assert not senders.seen(("192.0.2.1", 1), now=7.0)[0].allowed
