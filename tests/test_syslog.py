"""`meterstream syslog`: UDP and TCP (newline and octet-counting framing) into haproxy.logs."""

from __future__ import annotations

import socket
from pathlib import Path

import orjson
import pytest

from meterstream.dev.haproxy import EchoBackend, HAProxy
from meterstream.dev.processes import Process, free_port, require, wait_for
from meterstream.dev.topics import consume
from meterstream.settings import Settings
from tests.helpers import json_line
from tests.test_parser import HTTPLOG

pytestmark = pytest.mark.services


def receiver(settings: Settings, tmp_path: Path, env: dict[str, str] | None = None,
             host: str = "127.0.0.1") -> tuple[Process, int, int]:
    udp, tcp = free_port(), free_port()
    where = f"[{host}]" if ":" in host else host
    proc = Process(["syslog", "--udp", f"{where}:{udp}", "--tcp", f"{where}:{tcp}"],
                   {"MS_KAFKA__BOOTSTRAP": settings.kafka.bootstrap,
                    "MS_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
                    "MS_TAIL__MAX_LINE_BYTES": "4096", **(env or {})},
                   tmp_path / "syslog.log").start()
    # /healthz answers before the listeners are bound; it names their ports once they are
    wait_for(lambda: orjson.loads(proc.get("/healthz")[1])["tcp_port"] is not None, 30, "listening")
    return proc, udp, tcp


async def test_udp_and_tcp_framings(ms_topics: Settings, tmp_path: Path) -> None:
    proc, udp, tcp = receiver(ms_topics, tmp_path)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            rfc5424 = f"<134>1 2026-11-25T16:50:01.123Z edge1 haproxy 99 - - {json_line(1)}"
            s.sendto(rfc5424.encode(), ("127.0.0.1", udp))
            s.sendto(f"<134>Nov 25 16:50:01 edge1 haproxy[99]: {HTTPLOG}\n".encode(), ("127.0.0.1", udp))
        with socket.create_connection(("127.0.0.1", tcp)) as s:
            s.sendall(f"{json_line(2)}\nnot a log line\r\n{json_line(3)}\n".encode())
            s.sendall(b"x" * 10_000 + b"\n")
            s.sendall(f"{json_line(4)}\n".encode())
        with socket.create_connection(("127.0.0.1", tcp)) as s:
            for i in (5, 6):
                message = f"<134>1 2026-11-25T16:50:01.123Z edge1 haproxy 99 - - {json_line(i)}".encode()
                s.sendall(str(len(message)).encode() + b" " + message)
        records = await consume(ms_topics.kafka, ms_topics.topic("haproxy.logs"), expect=7)
        dead = await consume(ms_topics.kafka, ms_topics.topic("haproxy.logs.rejected"), expect=2)
    finally:
        assert proc.terminate() == 0
    got = sorted(v["request_id"] for _, v in records)
    derived = [g for g in got if g.startswith("ms-")]  # the httplog line has no HAProxy id
    assert len(derived) == 1 and [g for g in got if g not in derived] == [f"t-{i:09d}" for i in range(1, 7)]
    assert {v["src"]["stream"].split(":")[2] for _, v in records} == {"udp", "tcp"}
    reasons = sorted((v["reason"], v["raw_bytes"]) for _, v in dead)
    assert reasons == [("line_too_long", 10_000), ("unknown_format", len("not a log line\r"))] or \
        reasons == [("line_too_long", 10_000), ("unknown_format", len("not a log line"))]
    assert all(v["source"].startswith("syslog:tcp:127.0.0.1:") for _, v in dead)


async def test_haproxy_sends_rfc5424_over_udp(ms_topics: Settings, tmp_path: Path) -> None:
    require("haproxy")
    proc, udp, _ = receiver(ms_topics, tmp_path)
    backend = EchoBackend()
    proxy = HAProxy(tmp_path, backend.port)
    proxy.env.update({"MS_LOG_TARGET": f"udp@127.0.0.1:{udp}", "MS_LOG_FORMAT": "rfc5424"})
    proxy.start()
    try:
        for _ in range(10):
            assert proxy.request(key="SnotInTheVault")[0] == 401
        records = await consume(ms_topics.kafka, ms_topics.topic("haproxy.logs"), expect=10)
        wait_for(lambda: proc.metric("meterstream_ingest_lines_read_total", 'input="syslog_udp"') == 10, 5, "count")
    finally:
        proxy.stop()
        backend.stop()
        assert proc.terminate() == 0
    assert len(records) == 10 and len({v["request_id"] for _, v in records}) == 10
    assert all(v["status"] == 401 and v["event_type"] == 11 for _, v in records)
