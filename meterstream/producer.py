"""Ordered, acknowledged delivery of rounds of messages to Kafka (aiokafka).

A round is a list of messages; ``send_round`` returns only once Kafka has acknowledged every
one (idempotent producer, acks=all), or refused it for good. Order is what downstream
exactness relies on: messages go out partition by partition in round order, a round is sent
only after the previous one was acknowledged, and a round that fails (broker away, timeout)
is resent whole, after backoff, on a fresh producer. A resent round can repeat messages
already written, never reorder them behind later ones. Every aiokafka call that can hang
while the broker is away is bounded (aio-libs/aiokafka#1101).

A message the broker refuses for good (too large for the topic, an invalid timestamp, a
topic policy: ``REFUSED``, or one larger than a batch) is never retried: it is returned to
the caller (``Refused``), logged and counted, and the rest of the round goes on; the caller
dead-letters it. Errors an operator can fix (authorization, the broker away) are retried, loudly.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidTimestampError,
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    PolicyViolationError,
    RecordListTooLargeError,
    RecordTooLargeError,
    UnsupportedForMessageFormatError,
)
from aiokafka.partitioner import DefaultPartitioner
from prometheus_client import Counter, Histogram

from meterstream import logs
from meterstream.kafka_clients import client_kwargs
from meterstream.service import FailureClock
from meterstream.settings import Settings

log = logs.get(__name__)
# what the broker refuses for a message itself: retrying the same message cannot succeed
REFUSED: tuple[type[KafkaError], ...] = (
    MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError, InvalidTopicError,
    InvalidTimestampError, UnsupportedForMessageFormatError, PolicyViolationError)
REFUSED_TOTAL = Counter("meterstream_produce_refused_total",
                        "Messages Kafka refused for good (not retried), by component and topic",
                        ["component", "topic"])


@dataclass(slots=True)
class Message:
    topic: str
    key: bytes
    value: bytes | None  # None: a tombstone
    timestamp_ms: int | None = None
    partition: int | None = None  # None: the key's partition (Kafka's default partitioner)


@dataclass(slots=True)
class Refused:
    """A message Kafka refused for good, and why (no content: it may hold anything)."""

    message: Message
    error: str


def insist(refused: Refused) -> Message:
    """``deliver``'s dead letter for dead letters themselves: the refused one is sent again
    (the stage stalls, loudly, until Kafka takes it)."""
    return refused.message


class Stopped(Exception):
    """Raised by send_round when stop was requested before the round was acknowledged."""


class RoundProducer:
    """``component`` names the client; ``latency`` and ``failures`` are the component's metrics
    (seconds from sending a round to its acknowledgement; rounds resent)."""

    def __init__(self, settings: Settings, component: str, latency: Histogram, failures: Counter) -> None:
        self._settings = settings
        self._component = component
        self._latency = latency
        self._failures = failures
        self._connecting = asyncio.Lock()
        self._producer: AIOKafkaProducer | None = None
        self._partitioner = DefaultPartitioner()
        self._partitions: dict[str, list[int]] = {}
        self._partition_of: dict[tuple[str, bytes], int] = {}
        self.stopping = asyncio.Event()
        self.failure = FailureClock()
        self._reset = False  # a refused batch spent sequence numbers: a fresh producer next round
        self.refused_at: float | None = None  # when a message was last refused (monotonic)

    # -- lifecycle -------------------------------------------------------------------------
    async def _connect(self) -> AIOKafkaProducer:
        s = self._settings
        producer = AIOKafkaProducer(
            **client_kwargs(s.kafka),
            client_id=f"{s.kafka.client_id}-{self._component}",
            acks="all",
            enable_idempotence=True,
            linger_ms=s.produce.linger_ms,
            max_batch_size=s.produce.batch_bytes,
            request_timeout_ms=int(s.produce.send_timeout_s * 1000),
        )
        try:
            await asyncio.wait_for(producer.start(), s.produce.send_timeout_s)
        except BaseException:
            await self._close(producer)
            raise
        return producer

    async def _close(self, producer: AIOKafkaProducer) -> None:
        try:
            await asyncio.wait_for(producer.stop(), self._settings.produce.stop_timeout_s)
        except (TimeoutError, Exception) as exc:  # noqa: BLE001 - abandon a producer that hangs
            log.warning("kafka producer did not stop cleanly; abandoned", error=type(exc).__name__)

    async def stop(self) -> None:
        self.stopping.set()
        if self._producer is not None:
            await self._close(self._producer)
            self._producer = None

    # -- sending -----------------------------------------------------------------------------
    def _partition(self, producer: AIOKafkaProducer, topic: str, key: bytes) -> int:
        cached = self._partition_of.get((topic, key))
        if cached is None:
            partitions = self._partitions[topic]
            cached = self._partitioner(key, partitions, partitions)
            if len(self._partition_of) > 10_000:  # bounded: keys like usage windows rarely repeat
                self._partition_of.clear()
            self._partition_of[(topic, key)] = cached
        return cached

    async def _send_partition(self, producer: AIOKafkaProducer, topic: str, partition: int,
                              messages: list[Message]) -> list[Refused]:
        refused: list[Refused] = []
        i = 0
        while i < len(messages):
            start = i
            batch = producer.create_batch()
            while i < len(messages):
                m = messages[i]
                if batch.append(key=m.key, value=m.value, timestamp=m.timestamp_ms) is None:
                    break
                i += 1
            if batch.record_count() == 0:
                size = len(messages[i].value or b"") + len(messages[i].key or b"")
                refused.append(Refused(messages[i], f"{size} bytes do not fit a batch of "
                                                    f"{self._settings.produce.batch_bytes}"))
                i += 1
                continue
            future = await producer.send_batch(batch, topic, partition=partition)
            try:
                await future  # the next batch of this partition only after this one is written
            except REFUSED as exc:
                self._reset = True  # its sequence numbers are spent: a fresh producer after the round
                chunk = messages[start:i]
                if len(chunk) == 1:
                    refused.append(Refused(chunk[0], type(exc).__name__))
                else:  # which of them? one by one, in order
                    for m in chunk:
                        refused += await self._send_partition(producer, topic, partition, [m])
        return refused

    async def _send_once(self, messages: list[Message]) -> list[Refused]:
        async with self._connecting:  # rounds may be sent concurrently: connect once
            if self._producer is None:
                self._producer = await self._connect()
        producer = self._producer
        for topic in {m.topic for m in messages} - self._partitions.keys():
            found = await asyncio.wait_for(producer.partitions_for(topic), self._settings.produce.send_timeout_s)
            self._partitions[topic] = sorted(found)
        groups: dict[tuple[str, int], list[Message]] = defaultdict(list)
        for m in messages:
            partition = m.partition if m.partition is not None else self._partition(producer, m.topic, m.key)
            groups[(m.topic, partition)].append(m)
        results = await asyncio.gather(*(self._send_partition(producer, t, p, ms) for (t, p), ms in groups.items()))
        return [r for refused in results for r in refused]

    async def send_round(self, messages: list[Message]) -> list[Refused]:
        """Deliver ``messages``; retries with backoff until each is acknowledged or refused for
        good (returned), or stop is requested (Stopped)."""
        if not messages:
            return []
        attempt = 0
        while True:
            started = time.monotonic()
            send = asyncio.ensure_future(self._send_once(messages))
            stop = asyncio.ensure_future(self.stopping.wait())
            try:
                done, _ = await asyncio.wait({send, stop}, timeout=self._settings.produce.send_timeout_s,
                                             return_when=asyncio.FIRST_COMPLETED)
                if send in done:
                    refused = send.result()
                    self._latency.observe(time.monotonic() - started)
                    self.failure.recovered()
                    if refused:
                        await self._refused(refused)
                    return refused
                if stop in done:
                    raise Stopped()
                raise TimeoutError(f"round not acknowledged within {self._settings.produce.send_timeout_s}s")
            except Stopped:
                send.cancel()
                raise
            except Exception as exc:  # noqa: BLE001 - any failure: resend the whole round
                send.cancel()
                attempt += 1
                self._failures.inc()
                self.failure.failed()
                log.warning("kafka round failed; resending on a new producer", attempt=attempt,
                            error=f"{type(exc).__name__}: {str(exc)[:200]}", messages=len(messages))
                if self._producer is not None:
                    old, self._producer = self._producer, None
                    await self._close(old)
                self._partitions.clear()
                self._partition_of.clear()
                delay = min(self._settings.produce.retry_backoff_max_s, 0.2 * 2 ** min(attempt, 10))
                try:
                    await asyncio.wait_for(self.stopping.wait(), delay)
                    raise Stopped() from None
                except TimeoutError:
                    pass
            finally:
                stop.cancel()

    async def deliver(self, messages: list[Message], dead_letter: Callable[[Refused], Message]) -> list[Refused]:
        """``send_round``, where each message Kafka refuses for good is replaced by its dead
        letter (``dead_letter(refused)``). If Kafka refuses the dead letters too, the topics
        are misconfigured rather than a message bad: after a backoff the refused messages are
        sent again, then their dead letters, until Kafka takes one or the other. The stage
        stalls meanwhile, loudly (/healthz, the refused counter, error logs), rather than drop
        anything. Returns the messages that went to the dead letters."""
        refused = await self.send_round(messages)
        attempt = 0
        while refused:
            if not await self.send_round([dead_letter(r) for r in refused]):
                return refused
            attempt += 1
            self.failure.failed()
            log.error("kafka refuses the dead letters too; retrying", attempt=attempt, messages=len(refused))
            try:
                await asyncio.wait_for(self.stopping.wait(), min(self._settings.produce.retry_backoff_max_s,
                                                                 0.2 * 2 ** min(attempt, 10)))
                raise Stopped()
            except TimeoutError:
                pass
            refused = await self.send_round([r.message for r in refused])
        return []

    async def _refused(self, refused: list[Refused]) -> None:
        self.refused_at = time.monotonic()
        for r in refused:
            REFUSED_TOTAL.labels(self._component, r.message.topic).inc()
            log.error("kafka refused a message for good; not retried", topic=r.message.topic,
                      bytes=len(r.message.value or b""), error=r.error)
        if self._reset and self._producer is not None:
            old, self._producer, self._reset = self._producer, None, False
            await self._close(old)
