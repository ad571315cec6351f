"""`meterstream syslog`: a syslog receiver (UDP; TCP with octet-counting or newline framing,
RFC 6587) feeding the same parser and ordered producer as the tailer.

Back-pressure: TCP connections stop being read while the queue is full; UDP has none, so a
datagram arriving at a full queue is dropped and counted (meterstream_ingest_syslog_dropped_total).
A position is (receiver host, transport, peer, connection start) + byte offset on TCP or
datagram number on UDP: there is no replay of a syslog stream, so these positions are unique
but, unlike a file's, not reproducible.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass

from meterstream import logs
from meterstream.ingest import metrics
from meterstream.ingest.pipeline import Encoder
from meterstream.producer import RoundProducer, Stopped
from meterstream.schemas.records import SourcePosition
from meterstream.settings import Settings

log = logs.get(__name__)
ROUND_WAIT_S = 0.05


@dataclass(slots=True)
class Received:
    data: bytes
    position: SourcePosition
    source: str
    too_long: int = 0


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "0.0.0.0", int(port)


class SyslogReceiver:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.host = settings.tail.host or socket.gethostname()
        self.queue: asyncio.Queue[Received] = asyncio.Queue(settings.syslog.queue_lines)
        self.encoder = Encoder(settings)
        self.producer = RoundProducer(settings, "ingest", metrics.PRODUCE_LATENCY, metrics.PRODUCE_FAILURES)
        self.stop_requested = asyncio.Event()
        self.udp_port: int | None = None
        self.tcp_port: int | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self._transports: list[asyncio.BaseTransport] = []

    def health(self) -> tuple[bool, dict[str, object]]:
        failure = self.producer.failure
        return failure.healthy(), {"kafka_failing_s": round(failure.seconds(), 1), "queued": self.queue.qsize(), "udp_port": self.udp_port, "tcp_port": self.tcp_port}

    def _stream(self, transport: str, peer: tuple[str, int]) -> str:
        return f"syslog:{self.host}:{transport}:{peer[0]}:{peer[1]}:{int(time.time() * 1000)}"

    # -- listeners ----------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.settings.syslog.udp:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Udp(self), local_addr=_address(self.settings.syslog.udp))
            self._transports.append(transport)
            self.udp_port = transport.get_extra_info("sockname")[1]
        if self.settings.syslog.tcp:
            host, port = _address(self.settings.syslog.tcp)
            server = await asyncio.start_server(self._tcp, host, port, limit=self.settings.tail.max_line_bytes + 2)
            self._servers.append(server)
            self.tcp_port = server.sockets[0].getsockname()[1]
        log.info("syslog receiver listening", udp=self.udp_port, tcp=self.tcp_port)

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")[:2]
        stream, source, offset = self._stream("tcp", peer), f"syslog:tcp:{peer[0]}:{peer[1]}", 0
        max_len = self.settings.tail.max_line_bytes
        try:
            while not self.stop_requested.is_set():
                first = await reader.read(1)
                if not first:
                    break
                if first.isdigit():  # octet counting: "<length> <message>"
                    digits = first + await reader.readuntil(b" ")
                    length = int(digits[:-1])
                    start = offset + len(digits)
                    if length > max_len:
                        kept = await reader.readexactly(min(length, self.encoder.keep))
                        await _discard(reader, length - len(kept))
                        item = Received(kept, SourcePosition(stream=stream, offset=start), source, length)
                    else:
                        item = Received(await reader.readexactly(length),
                                        SourcePosition(stream=stream, offset=start), source)
                    offset = start + length
                else:  # newline framing
                    try:
                        rest = await reader.readuntil(b"\n")
                        data = (first + rest).rstrip(b"\r\n")
                        item = Received(data, SourcePosition(stream=stream, offset=offset), source)
                        offset += 1 + len(rest)
                    except asyncio.LimitOverrunError as exc:
                        kept = first + await reader.readexactly(min(exc.consumed, self.encoder.keep))
                        skipped = await _skip_line(reader)
                        total = len(kept) + skipped
                        item = Received(kept, SourcePosition(stream=stream, offset=offset), source, total)
                        offset += total + 1
                metrics.LINES_READ.labels("syslog_tcp").inc()
                await self.queue.put(item)  # back-pressure: not reading while the queue is full
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            log.warning("syslog tcp connection ended badly", peer=f"{peer[0]}:{peer[1]}", error=type(exc).__name__)
        finally:
            writer.close()

    # -- delivery ---------------------------------------------------------------------------------
    async def run(self) -> None:
        await self.start()
        try:
            while True:
                batch = await self._next_round()
                if not batch:
                    if self.stop_requested.is_set():
                        break
                    continue
                messages = [self.encoder.line(r.data, r.position, r.source, r.too_long) for r in batch]
                await self.producer.send_round(messages)
                metrics.RECORDS_PRODUCED.inc(sum(m.topic == self.encoder.logs_topic for m in messages))
        except Stopped:
            log.warning("stopping with lines not acknowledged by Kafka", queued=self.queue.qsize())
        finally:
            await self.producer.stop()
            for transport in self._transports:
                transport.close()
            for server in self._servers:
                server.close()

    async def _next_round(self) -> list[Received]:
        batch: list[Received] = []
        try:
            batch.append(await asyncio.wait_for(self.queue.get(), ROUND_WAIT_S))
        except TimeoutError:
            return batch
        while len(batch) < self.settings.tail.round_lines and not self.queue.empty():
            batch.append(self.queue.get_nowait())
        return batch

    def request_stop(self) -> None:
        """Stop listening, deliver what was received, then return."""
        self.stop_requested.set()
        for transport in self._transports:
            transport.close()
        for server in self._servers:
            server.close()
        asyncio.get_running_loop().call_later(self.settings.produce.stop_timeout_s, self.producer.stopping.set)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, receiver: SyslogReceiver) -> None:
        self.receiver = receiver
        self.sequence: dict[tuple[str, int], int] = {}
        self.streams: dict[tuple[str, int], str] = {}

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        peer = addr[:2]
        if peer not in self.streams:
            self.streams[peer] = self.receiver._stream("udp", peer)  # noqa: SLF001
        number = self.sequence.get(peer, 0)
        self.sequence[peer] = number + 1
        metrics.LINES_READ.labels("syslog_udp").inc()
        data = data.rstrip(b"\r\n\0")
        limit = self.receiver.settings.tail.max_line_bytes
        item = Received(data[: self.receiver.encoder.keep] if len(data) > limit else data,
                        SourcePosition(stream=self.streams[peer], offset=number),
                        f"syslog:udp:{peer[0]}:{peer[1]}", len(data) if len(data) > limit else 0)
        try:
            self.receiver.queue.put_nowait(item)
        except asyncio.QueueFull:
            metrics.DROPPED.inc()


async def _discard(reader: asyncio.StreamReader, count: int) -> None:
    while count > 0:
        chunk = await reader.read(min(count, 65536))
        if not chunk:
            raise asyncio.IncompleteReadError(b"", count)
        count -= len(chunk)


async def _skip_line(reader: asyncio.StreamReader) -> int:
    """Skip to the end of an overlong line; returns the bytes skipped (without the newline)."""
    skipped = 0
    while True:
        try:
            rest = await reader.readuntil(b"\n")
            return skipped + len(rest) - 1
        except asyncio.LimitOverrunError as exc:
            skipped += len(await reader.readexactly(exc.consumed))
