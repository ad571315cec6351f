"""The syslog receiver's limits (docs/ingest.md), each against the real `meterstream syslog`
process and the real broker: the queue bounded in bytes, the connection limit, the idle
timeout, the bounded UDP senders, over-long lines, RFC 6587 framing per frame, the allow-list,
and one stream per listener."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from meterstream.dev.processes import Process, async_wait_for, wait_for
from meterstream.dev.topics import consume
from meterstream.kafka_clients import client_kwargs
from meterstream.settings import Settings
from tests.helpers import json_line
from tests.test_parser import HTTPLOG
from tests.test_syslog import receiver

pytestmark = pytest.mark.services


def metric(proc: Process, name: str, labels: str = "") -> float:
    return proc.metric(f"meterstream_ingest_{name}", labels, default=0.0)


def rfc5424(line: str) -> bytes:
    return f"<134>1 2026-11-25T16:50:01.123Z edge1 haproxy 99 - - {line}".encode()


def octets(message: bytes) -> bytes:
    return str(len(message)).encode() + b" " + message


def assert_positions(records: list, streams: int) -> None:
    """One stream per listener; positions unique, and growing along each key's partition."""
    assert len({v["src"]["stream"] for _, v in records}) == streams
    positions = [(v["src"]["stream"], v["src"]["offset"]) for _, v in records]
    assert len(set(positions)) == len(positions)
    last: dict[tuple[bytes, str], int] = {}
    for key, v in records:  # consume() keeps each partition's order, and a key has one partition
        mark = (key, v["src"]["stream"])
        assert v["src"]["offset"] > last.get(mark, -1)
        last[mark] = v["src"]["offset"]


def closed_by_peer(conn: socket.socket, timeout: float) -> bool:
    conn.settimeout(timeout)
    try:
        return conn.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


async def set_max_message_bytes(settings: Settings, topic: str, value: int) -> None:
    admin = AIOKafkaAdminClient(**client_kwargs(settings.kafka))
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, settings.topic(topic),
                                                  {"max.message.bytes": str(value)})])
    finally:
        await admin.close()


async def test_queue_bounded_in_bytes_tcp_waits_udp_drops(ms_topics: Settings, tmp_path: Path) -> None:
    """Kafka refuses every batch and every dead letter (max.message.bytes 64 on both topics:
    the receiver retries rather than lose a line) so nothing leaves the queue: lines of
    20 KiB fill its 256 KiB long before its 50,000 lines, the TCP sender is no longer read,
    UDP datagrams are dropped and counted; once Kafka takes them, every TCP line arrives."""
    for topic in ("haproxy.logs", "haproxy.logs.rejected"):
        await set_max_message_bytes(ms_topics, topic, 64)
    proc, udp, tcp = receiver(ms_topics, tmp_path, {
        "MS_TAIL__MAX_LINE_BYTES": "65536", "MS_TAIL__ROUND_BYTES": "65536",
        "MS_SYSLOG__QUEUE_BYTES": str(256 * 1024), "MS_PRODUCE__RETRY_BACKOFF_MAX_S": "0.5"})
    lines, pad = 2400, "p" * 20_000  # 48 MiB: more than the kernel's socket buffers can hold
    sent = {"bytes": 0, "done": False}

    def send() -> None:
        with socket.create_connection(("127.0.0.1", tcp)) as conn:
            for i in range(lines):
                data = (json_line(i, "big")[:-1] + f',"pad":"{pad}"}}\n').encode()
                conn.sendall(data)
                sent["bytes"] += len(data)
        sent["done"] = True

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        await async_wait_for(lambda: metric(proc, "syslog_queue_bytes") > 200 * 1024, 30, "the queue filling")
        await asyncio.sleep(2)
        read = metric(proc, "lines_read_total", 'input="syslog_tcp"')
        await asyncio.sleep(2)
        assert metric(proc, "lines_read_total", 'input="syslog_tcp"') == read  # not reading any more
        assert read < 40 and not sent["done"]  # (256 KiB queue + 64 KiB round) / 20 KiB, plus one waiting
        assert metric(proc, "syslog_queue_bytes") <= 256 * 1024 and metric(proc, "syslog_queue_lines") <= 13
        health = orjson.loads(proc.get("/healthz")[1])
        assert health["healthy"] and health["queued_bytes"] <= 256 * 1024 and health["connections"] == 1
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(50):
                s.sendto(json_line(i, "udp").encode(), ("127.0.0.1", udp))
        await async_wait_for(lambda: metric(proc, "syslog_dropped_total", 'reason="queue_full"') == 50, 10, "drops")

        for topic in ("haproxy.logs", "haproxy.logs.rejected"):
            await set_max_message_bytes(ms_topics, topic, 1_048_588)
        records = await consume(ms_topics.kafka, ms_topics.topic("haproxy.logs"),
                                until=lambda out: len({v["request_id"] for _, v in out}) >= lines, quiet_s=1)
        sender.join(30)
        assert sent["done"] and proc.running()
        assert metric(proc, "lines_read_total", 'input="syslog_udp"') == 50
    finally:
        assert proc.terminate() == 0
    assert {v["request_id"] for _, v in records} == {f"big-{i:09d}" for i in range(lines)}
    assert_positions(records, streams=1)


async def test_connection_limit(ms_topics: Settings, tmp_path: Path) -> None:
    proc, _, tcp = receiver(ms_topics, tmp_path, {"MS_SYSLOG__MAX_CONNECTIONS": "2"})
    try:
        first, second = (socket.create_connection(("127.0.0.1", tcp)) for _ in range(2))
        first.sendall(f"{json_line(1)}\n".encode())
        second.sendall(f"{json_line(2)}\n".encode())
        wait_for(lambda: metric(proc, "syslog_connections") == 2, 10, "two connections")
        third = socket.create_connection(("127.0.0.1", tcp))
        assert closed_by_peer(third, 5)
        assert metric(proc, "syslog_connections_refused_total", 'reason="too_many_connections"') == 1
        first.sendall(f"{json_line(3)}\n".encode())
        second.sendall(f"{json_line(4)}\n".encode())
        first.close()
        wait_for(lambda: metric(proc, "syslog_connections") == 1, 10, "one connection")
        with socket.create_connection(("127.0.0.1", tcp)) as fourth:
            fourth.sendall(f"{json_line(5)}\n".encode())
            second.close()
            records = await consume(ms_topics.kafka, ms_topics.topic("haproxy.logs"), expect=5, quiet_s=1)
        third.close()
        assert proc.running()
        assert metric(proc, "syslog_connections_refused_total", 'reason="too_many_connections"') == 1
    finally:
        assert proc.terminate() == 0
    assert sorted(v["request_id"] for _, v in records) == [f"t-{i:09d}" for i in range(1, 6)]
    assert_positions(records, streams=1)  # three connections, one stream


async def test_idle_timeout(ms_topics: Settings, tmp_path: Path) -> None:
    proc, _, tcp = receiver(ms_topics, tmp_path, {"MS_SYSLOG__IDLE_TIMEOUT_S": "2"})
    try:
        with socket.create_connection(("127.0.0.1", tcp)) as idle, \
                socket.create_connection(("127.0.0.1", tcp)) as busy:
            idle.sendall(f"{json_line(1)}\n".encode())
            started = time.monotonic()
            for i in range(2, 20):  # 4.5 s of a line every 0.25 s: never idle for 2 s
                busy.sendall(f"{json_line(i)}\n".encode())
                await asyncio.sleep(0.25)
            assert closed_by_peer(idle, 0.1)
            assert not closed_by_peer(busy, 0.1)
            assert time.monotonic() - started > 4
            assert metric(proc, "syslog_connections_closed_total", 'reason="idle_timeout"') == 1
            assert metric(proc, "syslog_connections") == 1
            records = await consume(ms_topics.kafka, ms_topics.topic("haproxy.logs"), expect=19, quiet_s=1)
        assert proc.running()
    finally:
        assert proc.terminate() == 0
    assert sorted(v["request_id"] for _, v in records) == [f"t-{i:09d}" for i in range(1, 20)]


async def test_udp_senders_bounded_and_forgotten(ms_topics: Settings, tmp_path: Path) -> None:
    """200 source ports: the senders tracked stay within syslog.udp_max_senders, idle ones are
    forgotten, and all 200 lines are one stream (not one per port)."""
    proc, udp, _ = receiver(ms_topics, tmp_path, {"MS_SYSLOG__UDP_MAX_SENDERS": "20",
                                                  "MS_SYSLOG__UDP_SENDER_IDLE_S": "1"})
    try:
        ports = set()
        for i in range(200):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # a new source port each
                s.sendto(json_line(i).encode(), ("127.0.0.1", udp))
                ports.add(s.getsockname()[1])
            if i % 20 == 0:
                assert metric(proc, "syslog_udp_senders") <= 20
        wait_for(lambda: metric(proc, "lines_read_total", 'input="syslog_udp"') == 200, 10, "200 datagrams")
        assert metric(proc, "syslog_udp_senders") <= 20
        # past the limit (or, on a slow machine, idle for a second already): all but 20 forgotten
        # at least (of the senders: the kernel may give a closed socket's port to a later one)
        forgotten = sum(metric(proc, "syslog_udp_senders_forgotten_total", f'reason="{r}"') for r in ("limit", "idle"))
        assert len(ports) > 150 and forgotten >= len(ports) - 20
        wait_for(lambda: metric(proc, "syslog_udp_senders") == 0, 10, "idle senders forgotten")
        assert metric(proc, "syslog_udp_senders_forgotten_total", 'reason="idle"') >= 1
        records = await consume(ms_topics.kafka, ms_topics.topic("haproxy.logs"), expect=200, quiet_s=1)
        assert proc.running()
    finally:
        assert proc.terminate() == 0
    assert sorted(v["request_id"] for _, v in records) == [f"t-{i:09d}" for i in range(200)]
    assert_positions(records, streams=1)
    assert sorted(v["src"]["offset"] for _, v in records) == list(range(200))
    stream = records[0][1]["src"]["stream"]
    assert stream.startswith("syslog:") and stream.split(":")[2] == "udp"


async def test_over_long_lines_on_tcp(ms_topics: Settings, tmp_path: Path) -> None:
    """Over-long lines and frames (max 4096 bytes) become line_too_long dead letters; the
    connection goes on, and so does the process. Includes a long run of digits, which the old
    receiver read as an octet count (LimitOverrunError)."""
    proc, _, tcp = receiver(ms_topics, tmp_path)
    try:
        with socket.create_connection(("127.0.0.1", tcp)) as conn:
            conn.sendall(f"{json_line(1)}\n".encode() + b"y" * 1_000_000 + b"\n" + f"{json_line(2)}\n".encode())
            conn.sendall(octets(b"<134>" + b"z" * 100_000) + octets(rfc5424(json_line(3))))
            conn.sendall(b"7" * 200_000 + b"\n" + f"{json_line(4)}\n".encode())
            records = await consume(ms_topics.kafka, ms_topics.topic("haproxy.logs"), expect=4, quiet_s=1)
            conn.sendall(f"{json_line(5)}\n".encode())  # the same connection, still read
            more = await consume(ms_topics.kafka, ms_topics.topic("haproxy.logs"), expect=5, quiet_s=1)
        dead = await consume(ms_topics.kafka, ms_topics.topic("haproxy.logs.rejected"), expect=3, quiet_s=1)
        assert proc.running() and metric(proc, "rejected_total", 'reason="line_too_long"') == 3
    finally:
        assert proc.terminate() == 0
    assert sorted(v["request_id"] for _, v in records) == [f"t-{i:09d}" for i in range(1, 5)]
    assert sorted(v["request_id"] for _, v in more) == [f"t-{i:09d}" for i in range(1, 6)]
    assert sorted((v["reason"], v["raw_bytes"], v["raw_truncated"]) for _, v in dead) == [
        ("line_too_long", 100_005, True), ("line_too_long", 200_000, True), ("line_too_long", 1_000_000, True)]
    assert all(v["source"].startswith("syslog:tcp:127.0.0.1:") for _, v in dead)
    assert_positions(more, streams=1)


async def test_httplog_line_starting_with_a_digit_is_newline_framed(ms_topics: Settings, tmp_path: Path) -> None:
    """A raw httplog line starts with the client address (digits): it is a line, not an octet
    count, and the lines around it on the connection are kept."""
    proc, _, tcp = receiver(ms_topics, tmp_path)
    try:
        with socket.create_connection(("127.0.0.1", tcp)) as conn:
            conn.sendall(f"{json_line(1)}\n{HTTPLOG}\n{json_line(2)}\n{HTTPLOG}\r\n{json_line(3)}\n".encode())
        records = await consume(ms_topics.kafka, ms_topics.topic("haproxy.logs"), expect=5, quiet_s=1)
        dead = await consume(ms_topics.kafka, ms_topics.topic("haproxy.logs.rejected"), quiet_s=1)
        assert proc.running()
    finally:
        assert proc.terminate() == 0
    ids = sorted(v["request_id"] for _, v in records)
    assert ids[2:] == [f"t-{i:09d}" for i in range(1, 4)] and all(i.startswith("ms-") for i in ids[:2])
    assert [v["client_ip"] for _, v in records if v["request_id"].startswith("ms-")] == ["10.0.0.7"] * 2
    assert dead == []


async def test_octet_counted_frames_still_work(ms_topics: Settings, tmp_path: Path) -> None:
    """Octet-counted frames, split anywhere across sends, mixed per frame with newline-framed
    lines on one connection, and an LF trailer after a frame."""
    proc, _, tcp = receiver(ms_topics, tmp_path)
    try:
        data = (octets(rfc5424(json_line(1))) + octets(rfc5424(json_line(2))) + b"\n"
                + f"{json_line(3)}\n".encode() + octets(rfc5424(json_line(4))))
        with socket.create_connection(("127.0.0.1", tcp)) as conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(0, len(data), 7):
                conn.sendall(data[i:i + 7])
        records = await consume(ms_topics.kafka, ms_topics.topic("haproxy.logs"), expect=4, quiet_s=1)
        dead = await consume(ms_topics.kafka, ms_topics.topic("haproxy.logs.rejected"), quiet_s=1)
        assert proc.running()
    finally:
        assert proc.terminate() == 0
    assert sorted(v["request_id"] for _, v in records) == [f"t-{i:09d}" for i in range(1, 5)]
    assert dead == []


async def test_allow_list(ms_topics: Settings, tmp_path: Path) -> None:
    """Only 127.0.0.1 may send: datagrams and connections from 127.0.0.2 are dropped unread
    and counted. On IPv6, ::1 is allowed by ::1/128."""
    proc, udp, tcp = receiver(ms_topics, tmp_path, {"MS_SYSLOG__ALLOWED_NETWORKS": '["127.0.0.1/32", "::1/128"]'})
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.2", 0))
            for i in range(5):
                s.sendto(json_line(100 + i).encode(), ("127.0.0.1", udp))
        outsider = socket.create_connection(("127.0.0.1", tcp), source_address=("127.0.0.2", 0))
        try:
            outsider.sendall(f"{json_line(200)}\n".encode())
        except OSError:
            pass
        assert closed_by_peer(outsider, 5)
        outsider.close()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(json_line(1).encode(), ("127.0.0.1", udp))
        with socket.create_connection(("127.0.0.1", tcp)) as conn:
            conn.sendall(f"{json_line(2)}\n".encode())
        wait_for(lambda: metric(proc, "syslog_dropped_total", 'reason="not_allowed"') == 5, 10, "udp drops")
        assert metric(proc, "syslog_connections_refused_total", 'reason="not_allowed"') == 1
        assert metric(proc, "lines_read_total", 'input="syslog_udp"') == 1
        records = await consume(ms_topics.kafka, ms_topics.topic("haproxy.logs"), expect=2, quiet_s=1)
        assert proc.running()
    finally:
        assert proc.terminate() == 0
    assert sorted(v["request_id"] for _, v in records) == ["t-000000001", "t-000000002"]
    assert await consume(ms_topics.kafka, ms_topics.topic("haproxy.logs.rejected"), quiet_s=1) == []

    proc6, udp6, tcp6 = receiver(ms_topics, tmp_path, {"MS_SYSLOG__ALLOWED_NETWORKS": '["::1/128"]'}, host="::1")
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.sendto(json_line(3).encode(), ("::1", udp6))
        with socket.create_connection(("::1", tcp6)) as conn:
            conn.sendall(f"{json_line(4)}\n".encode())
        records = await consume(ms_topics.kafka, ms_topics.topic("haproxy.logs"), expect=4, quiet_s=1)
    finally:
        assert proc6.terminate() == 0
    assert sorted(v["request_id"] for _, v in records) == [f"t-{i:09d}" for i in range(1, 5)]


def own_address(family: socket.AddressFamily, probe: str) -> str | None:
    """This machine's address on its default route (connecting a UDP socket sends nothing)."""
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect((probe, 9))
        except OSError:
            return None
        return s.getsockname()[0]


async def test_allow_list_default_is_loopback_only(ms_topics: Settings, tmp_path: Path) -> None:
    """Listening on every address (dual stack) with the default allow-list: loopback senders,
    IPv4 ones included (seen as ::ffff:127.0.0.1), are accepted; the machine's own network
    addresses are not; and the receiver warns at start that it listens beyond loopback."""
    outside = [a for a in (own_address(socket.AF_INET, "198.51.100.1"), own_address(socket.AF_INET6, "2001:db8::1"))
               if a and not a.startswith(("127.", "::1"))]
    proc, udp, tcp = receiver(ms_topics, tmp_path, host="::")
    try:
        for address in outside:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.sendto(json_line(100).encode(), (address, udp))
            outsider = socket.create_connection((address, tcp))
            assert closed_by_peer(outsider, 5)
            outsider.close()
        for i, address in enumerate(("127.0.0.1", "::1"), 1):
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.sendto(json_line(i).encode(), (address, udp))
            with socket.create_connection((address, tcp)) as conn:
                conn.sendall(f"{json_line(10 + i)}\n".encode())
        wait_for(lambda: metric(proc, "syslog_dropped_total", 'reason="not_allowed"') == len(outside), 10, "drops")
        assert metric(proc, "syslog_connections_refused_total", 'reason="not_allowed"') == len(outside)
        records = await consume(ms_topics.kafka, ms_topics.topic("haproxy.logs"), expect=4, quiet_s=1)
        assert "syslog.allowed_networks accepts loopback senders only" in (tmp_path / "syslog.log").read_text()
    finally:
        assert proc.terminate() == 0
    assert sorted(v["request_id"] for _, v in records) == ["t-000000001", "t-000000002", "t-000000011",
                                                           "t-000000012"]
    assert {v["src"]["stream"].split(":")[2] for _, v in records} == {"udp", "tcp"}
