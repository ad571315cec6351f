"""`meterstream syslog`: a syslog receiver (UDP; TCP with octet-counting or newline framing,
decided per frame as RFC 6587 §3.4 defines them: ingest/syslog_framing.py) feeding the same
parser and ordered producer as the tailer.

Limits (docs/ingest.md "Syslog"), since any sender may be hostile:
- senders outside ``syslog.allowed_networks`` are dropped (UDP) or refused (TCP) unread;
- the queue is bounded in bytes and in lines (ingest/syslog_queue.py): TCP connections stop
  being read while it is full; UDP has no back-pressure, so a datagram arriving at a full queue
  is dropped; a round taken from it is bounded by ``tail.round_lines`` and ``tail.round_bytes``;
- at most ``syslog.max_connections`` TCP connections, each closed after
  ``syslog.idle_timeout_s`` without data; a line longer than ``tail.max_line_bytes`` is a
  ``line_too_long`` dead letter and the connection goes on;
- the UDP senders tracked are bounded in number and forgotten when idle (ingest/syslog_peers.py).
Every drop and refusal is counted (meterstream_ingest_syslog_*_total{reason}).

Positions: each listener is one stream per receiver start,
``syslog:<host>:<udp|tcp>:<start ms>-<random>``, whose offset counts the lines of that listener
across all its peers, in the order they are sent to Kafka (assigned as a round is taken from the
queue). So positions are unique and grow along the stream whatever the peers do, and a sender
rotating source ports or connections cannot create new streams (downstream state keys on
them). The peer is in each dead letter's ``source``. There is no replay of a syslog stream, so
these positions are unique but, unlike a file's, not reproducible.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import time
from dataclasses import dataclass

from meterstream import logs
from meterstream.ingest import metrics
from meterstream.ingest.pipeline import Encoder
from meterstream.ingest.syslog_framing import FrameReader
from meterstream.ingest.syslog_peers import AllowList, Senders, Throttle, show
from meterstream.ingest.syslog_queue import ByteQueue
from meterstream.producer import Message, RoundProducer, Stopped
from meterstream.settings import Settings

log = logs.get(__name__)
ROUND_WAIT_S = 0.05
ENCODE_SLICE = 500  # lines encoded between turns of the event loop (a few ms)
READ_CHUNK = 64 * 1024
REFUSAL_LOG_INTERVAL_S = 10.0


@dataclass(slots=True)
class Received:
    data: bytes
    source: str
    transport: str  # "udp" or "tcp": the stream it belongs to
    too_long: int = 0  # the whole size of a line cut to its first bytes


@dataclass(slots=True, eq=False)
class _Connection:
    transport: asyncio.WriteTransport
    task: asyncio.Task[None] | None
    last_active: float
    waiting: bool = False  # for room in the queue: the receiver, not the peer, is idle
    closing: bool = False


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    return host or "0.0.0.0", int(port)


def _dual_stack(host: str, port: int, kind: socket.SocketKind) -> socket.socket | None:
    """For ``[::]``: one socket taking IPv4 (as ::ffff:a.b.c.d) and IPv6 alike, for UDP and
    TCP the same (asyncio's TCP server would make it IPv6 only)."""
    if host != "::":
        return None
    sock = socket.socket(socket.AF_INET6, kind)
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class SyslogReceiver:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        s = settings.syslog
        self.host = (settings.tail.host or socket.gethostname())[:200]  # a stream name is 256 at most
        self.queue: ByteQueue[Received] = ByteQueue(s.queue_bytes, s.queue_lines)
        self.allow = AllowList(s.allowed_networks)
        self.senders = Senders(self.allow, s.udp_max_senders, s.udp_sender_idle_s)
        self.encoder = Encoder(settings)
        self.producer = RoundProducer(settings, "ingest", metrics.PRODUCE_LATENCY, metrics.PRODUCE_FAILURES)
        self.stop_requested = asyncio.Event()
        self.udp_port: int | None = None
        self.tcp_port: int | None = None
        self._streams: dict[str, str] = {}
        self._offsets = {"udp": 0, "tcp": 0}
        self._connections: set[_Connection] = set()
        self._refusals = Throttle(REFUSAL_LOG_INTERVAL_S)
        self._servers: list[asyncio.AbstractServer] = []
        self._transports: list[asyncio.BaseTransport] = []
        self._sweeper: asyncio.Task[None] | None = None
        metrics.SYSLOG_QUEUE_BYTES.set_function(lambda: self.queue.bytes)
        metrics.SYSLOG_QUEUE_LINES.set_function(lambda: len(self.queue))
        metrics.SYSLOG_CONNECTIONS.set_function(lambda: len(self._connections))
        metrics.SYSLOG_UDP_SENDERS.set_function(lambda: len(self.senders))

    def health(self) -> tuple[bool, dict[str, object]]:
        failure = self.producer.failure
        return failure.healthy(), {"kafka_failing_s": round(failure.seconds(), 1), "queued": len(self.queue),
                                   "queued_bytes": self.queue.bytes, "connections": len(self._connections),
                                   "udp_senders": len(self.senders), "udp_port": self.udp_port,
                                   "tcp_port": self.tcp_port}

    # -- listeners ----------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings.syslog
        started = f"{time.time_ns() // 1_000_000}-{os.urandom(4).hex()}"
        self._streams = {t: f"syslog:{self.host}:{t}:{started}" for t in ("udp", "tcp")}
        loop = asyncio.get_running_loop()
        if s.udp:
            host, port = _address(s.udp)
            sock = _dual_stack(host, port, socket.SOCK_DGRAM)
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Udp(self), **({"sock": sock} if sock else {"local_addr": (host, port)}))
            self._transports.append(transport)
            self.udp_port = transport.get_extra_info("sockname")[1]
        if s.tcp:
            host, port = _address(s.tcp)
            sock = _dual_stack(host, port, socket.SOCK_STREAM)
            server = await asyncio.start_server(self._tcp, **({"sock": sock} if sock else {"host": host, "port": port}),
                                                limit=READ_CHUNK)
            self._servers.append(server)
            self.tcp_port = server.sockets[0].getsockname()[1]
        self._sweeper = asyncio.create_task(self._sweep())
        log.info("syslog receiver listening", udp=self.udp_port, tcp=self.tcp_port,
                 allowed_networks=s.allowed_networks, streams=list(self._streams.values()))
        beyond = [a for a in (s.udp, s.tcp) if a and not _loopback(_address(a)[0])]
        if beyond and not [n for n in self.allow.v4 + self.allow.v6 if not n.is_loopback]:
            log.warning("syslog listens beyond loopback but syslog.allowed_networks accepts loopback senders "
                        "only: list the senders' networks", listeners=beyond)

    def log_refusal(self, transport: str, peer: tuple[str, int], reason: str) -> None:
        if self._refusals.ready():
            log.warning("syslog sender refused", transport=transport, peer=show(peer), reason=reason,
                        unlogged_refusals_before=self._refusals.take_suppressed())

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        name = writer.get_extra_info("peername")
        peer = (str(name[0]), int(name[1])) if name else ("unknown", 0)
        reason = ("not_allowed" if not self.allow.allows(peer[0]) else
                  "too_many_connections" if len(self._connections) >= self.settings.syslog.max_connections
                  else None)
        if reason is not None:
            metrics.SYSLOG_REFUSED.labels(reason).inc()
            self.log_refusal("tcp", peer, reason)
            writer.transport.abort()
            return
        conn = _Connection(writer.transport, asyncio.current_task(), time.monotonic())
        self._connections.add(conn)
        frames = FrameReader(self.settings.tail.max_line_bytes, self.encoder.keep)
        source = f"syslog:tcp:{show(peer)}"
        try:
            while True:
                chunk = await reader.read(READ_CHUNK)
                conn.last_active = time.monotonic()
                if chunk:
                    frames.feed(chunk)
                else:
                    frames.feed_eof()
                for frame in frames.frames():
                    metrics.LINES_READ.labels("syslog_tcp").inc()
                    metrics.BYTES_READ.labels("syslog_tcp").inc(frame.size)
                    conn.waiting = True
                    try:  # back-pressure: this connection is not read while the queue is full
                        await self.queue.put(Received(frame.data, source, "tcp", frame.size if frame.too_long else 0),
                                             len(frame.data))
                    finally:
                        conn.waiting = False
                        conn.last_active = time.monotonic()
                if not chunk or self.stop_requested.is_set():
                    break
        except (ConnectionError, OSError) as exc:
            log.warning("syslog tcp connection ended badly", peer=show(peer), error=type(exc).__name__)
        except asyncio.CancelledError:  # the receiver stops; nothing awaits this task (asyncio would
            pass  # log a cancelled connection task as an error)
        except Exception:  # noqa: BLE001 - one connection's failure must not reach the others
            log.exception("syslog tcp connection failed", peer=show(peer))
        finally:
            self._connections.discard(conn)
            writer.close()

    async def _sweep(self) -> None:
        """Closes idle connections and forgets idle UDP senders."""
        s = self.settings.syslog
        interval = max(0.05, min(1.0, s.idle_timeout_s / 4, s.udp_sender_idle_s / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            try:
                for conn in list(self._connections):
                    if not conn.waiting and not conn.closing and now - conn.last_active >= s.idle_timeout_s:
                        conn.closing = True
                        metrics.SYSLOG_CLOSED.labels("idle_timeout").inc()
                        conn.transport.close()  # the handler reads the end of the stream and finishes
                self.senders.expire(now)
            except Exception:  # noqa: BLE001 - keep sweeping
                log.exception("syslog sweep failed")

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
                messages: list[Message] = []
                for i in range(0, len(batch), ENCODE_SLICE):
                    messages += [self.encoder.line_at(r.data, stream, offset, r.source, r.too_long)
                                 for r, stream, offset in batch[i:i + ENCODE_SLICE]]
                    # the listeners go on receiving meanwhile: UDP has no back-pressure, a full
                    # socket buffer drops datagrams before anything can count them
                    await asyncio.sleep(0)
                await self.producer.deliver(messages, self.encoder.unpublishable)
                metrics.RECORDS_PRODUCED.inc(sum(m.topic == self.encoder.logs_topic for m in messages))
        except Stopped:
            log.warning("stopping with lines not acknowledged by Kafka", queued=len(self.queue))
        finally:
            if self._sweeper is not None:
                self._sweeper.cancel()
            await self.producer.stop()
            self._close_listeners()
            handlers = [conn.task for conn in self._connections if conn.task is not None]
            for conn in list(self._connections):
                conn.transport.abort()
            for task in handlers:  # one may wait for room in the queue, which nobody empties now
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)

    async def _next_round(self) -> list[tuple[Received, str, int]]:
        """A round from the queue, each line given the next position (stream, offset) of its
        listener's stream: positions are assigned in the order the lines go to Kafka."""
        tail = self.settings.tail
        batch = await self.queue.get_batch(tail.round_lines, tail.round_bytes, ROUND_WAIT_S)
        out = []
        for item in batch:
            offset = self._offsets[item.transport]
            self._offsets[item.transport] = offset + 1
            out.append((item, self._streams[item.transport], offset))
        return out

    def _close_listeners(self) -> None:
        for transport in self._transports:
            transport.close()
        for server in self._servers:
            server.close()

    def request_stop(self) -> None:
        """Stop listening, deliver what was received, then return."""
        self.stop_requested.set()
        self._close_listeners()
        asyncio.get_running_loop().call_later(self.settings.produce.stop_timeout_s, self.producer.stopping.set)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, receiver: SyslogReceiver) -> None:
        self.receiver = receiver
        self.limit = receiver.settings.tail.max_line_bytes
        self.keep = receiver.encoder.keep

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        r = self.receiver
        peer = (addr[0], addr[1])
        sender, new = r.senders.seen(peer)
        if not sender.allowed:
            metrics.SYSLOG_DROPPED.labels("not_allowed").inc()
            if new:
                r.log_refusal("udp", peer, "not_allowed")
            return
        metrics.LINES_READ.labels("syslog_udp").inc()
        metrics.BYTES_READ.labels("syslog_udp").inc(len(data))
        data = data.rstrip(b"\r\n\0")
        too_long = len(data) if len(data) > self.limit else 0
        if too_long:
            data = data[: self.keep]
        if not r.queue.offer(Received(data, f"syslog:udp:{show(peer)}", "udp", too_long), len(data)):
            metrics.SYSLOG_DROPPED.labels("queue_full").inc()
