"""Ordered, acknowledged delivery of rounds of messages to Kafka, on librdkafka
(confluent-kafka): ingest's producer (``tail``, ``syslog``), which sends one round at a time.

It keeps meterstream.producer's protocol (the same ``Message``, ``Refused``, ``Stopped``,
``send_round``/``deliver``/``stop``, the same refused counter) at about 1.35 µs of CPU a message
where aiokafka's costs 1.8-2.2. Its attempts are serialized on one producer (a failure report
must be told to its round), so concurrent rounds take turns: the worker, which sends one
round per partition batch concurrently, keeps meterstream.producer (on this producer it fell
behind at 5,000 requests/s end to end; docs/producer.md).

A round is a list of messages; ``send_round`` returns only once Kafka has acknowledged every
one (idempotent producer, acks=all), or refused it for good. Order is what downstream
exactness relies on (the high-water marks of meter/highwater.py drop a line that arrives
behind a later one of its stream): within a partition messages are written in round order,
a round is sent only after the previous one was acknowledged, and a round that fails (broker
away, timeout, any error that is not a refusal) is resent whole, after backoff, on a fresh
producer. A resent round can repeat messages already written, never reorder them behind
later ones. docs/producer.md has the protocol; in short:

- one librdkafka producer per LibrdkafkaRoundProducer, the delivery callback set once in its
  configuration with ``delivery.report.only.error`` (a callback per message costs about as
  much CPU as aiokafka did): a round is acknowledged when the producer holds nothing more
  (``flush`` returned 0) and no failure was reported for it. Attempts are serialized (a lock):
  rounds sent concurrently take turns, so the reports of one are never taken for another's;
- ``enable.gapless.guarantee``: a batch that fails for good (a refusal) stops the producer
  (a fatal error) instead of letting librdkafka renumber and send the batches behind it, so
  nothing of a partition is ever written after a message of it that was not;
- keyed messages take the partition of Java's and aiokafka's default partitioner
  (``partitioner=murmur2_random``); ``Message.partition`` is honoured when set;
- the event loop never waits on librdkafka: ``flush`` runs in a thread in slices of
  ``SLICE_S``, so ``stopping`` ends a round (``Stopped``) within about that;
- a round not acknowledged within ``send_timeout_s`` is purged and failed by us, before
  librdkafka's own ``message.timeout.ms`` (longer) could time messages out one by one.

A message the broker refuses for good (``REFUSED_CODES``: too large for the topic, an invalid
timestamp or record, a topic policy, ...), or one larger than ``batch_bytes`` (refused by
``produce()`` itself), is never retried: it is returned to the caller (``Refused``), logged
(without content) and counted, and the rest of the round goes on; the caller dead-letters it.
librdkafka fails a whole batch with the culprit's error, so the messages that failed with a
refusal are resent one at a time, in order, through a second producer (the probe: not gapless,
alone a message leaves no gap), to tell the culprit(s) from the others; the main producer is
replaced by a spare kept connecting once a batch was refused. Errors an operator can fix
(authorization, an unknown topic, the broker away) are retried, loudly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka import Message as KafkaMessage
from prometheus_client import Counter, Histogram

from meterstream import logs
from meterstream.kafka_clients import RdkafkaConfig, rdkafka_config
from meterstream.producer import REFUSED_TOTAL, Message, Refused, Stopped
from meterstream.service import FailureClock
from meterstream.settings import Settings

log = logs.get(__name__)

# What the broker (or produce() itself) refuses for a message or its batch: sending the same
# message again cannot succeed. Everything else (the broker away, timeouts, authorization, an
# unknown topic or partition, librdkafka's own _FATAL/_PURGE_*/_GAPLESS_GUARANTEE codes) is a
# failure of the round, retried. docs/producer.md has the table and why.
REFUSED_CODES: dict[int, str] = {
    KafkaError.MSG_SIZE_TOO_LARGE: "larger than the topic's max.message.bytes (or the client's message.max.bytes)",
    KafkaError.INVALID_MSG_SIZE: "an invalid message size",
    KafkaError.RECORD_LIST_TOO_LARGE: "its batch is larger than the broker takes",
    KafkaError.TOPIC_EXCEPTION: "the topic name is invalid for producing",
    KafkaError.INVALID_TIMESTAMP: "its timestamp is out of the topic's range",
    KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT: "the topic's message format cannot hold it",
    KafkaError.POLICY_VIOLATION: "a topic policy refuses it",
    KafkaError.INVALID_RECORD: "the broker found the record invalid (e.g. no key on a compacted topic)",
}
SLICE_S = 0.05  # the longest a flush runs before the round looks at stopping and its deadline
UNASSIGNED = -1  # librdkafka's RD_KAFKA_PARTITION_UA: the configured partitioner chooses


def refused_for_good(code: int) -> bool:
    """True when a message that failed with ``code`` must not be sent again (REFUSED_CODES)."""
    return code in REFUSED_CODES


async def _in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a thread. If the awaiting task is cancelled, the thread is waited for
    before the cancellation goes on: nobody may close a producer a flush is still inside."""
    future = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():
            try:
                await asyncio.wait({future})
            except asyncio.CancelledError:
                continue
        raise


class RoundFailed(Exception):
    """One attempt at a round failed in a way that is not a refusal: resend after backoff."""


@dataclass(slots=True)
class _Session:
    """What librdkafka's callbacks (served by flush/poll, in a worker thread) report of one
    producer: appended to there, read by the round once flush has returned."""

    failures: list[tuple[KafkaError, KafkaMessage]] = field(default_factory=list)
    fatal: KafkaError | None = None


class LibrdkafkaLog:
    """librdkafka's ``logger``: its log lines go to our structlog logger, with the SASL
    password (should a line ever hold it) blanked out."""

    def __init__(self, secrets: Sequence[str]) -> None:
        self._secrets = [s for s in secrets if s]

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text[:500]

    def log(self, level: int, msg: str, *args: Any) -> None:
        try:
            text = msg % args if args else msg
        except (TypeError, ValueError):
            text = " ".join([msg, *map(str, args)])
        text = self.scrub(text)
        if "CONFWARN" in text and "enable.gapless.guarantee is experimental" in text:
            level = logging.DEBUG  # chosen on purpose (docs/producer.md): not worth a warning each time
        if level >= logging.ERROR:
            log.error("librdkafka", line=text)
        elif level >= logging.WARNING:
            log.warning("librdkafka", line=text)
        elif level >= logging.INFO:
            log.info("librdkafka", line=text)
        else:
            log.debug("librdkafka", line=text)


def producer_config(settings: Settings, component: str, kafka: RdkafkaConfig) -> RdkafkaConfig:
    """librdkafka's producer configuration over the connection settings (rdkafka_config)."""
    p = settings.produce
    timeout_ms = int(p.send_timeout_s * 1000)
    kafka.update({
        "client.id": f"{settings.kafka.client_id}-{component}",
        "enable.idempotence": True,
        "acks": "all",
        "enable.gapless.guarantee": True,
        "partitioner": "murmur2_random",  # Java's and aiokafka's default partitioner for keyed messages
        "linger.ms": p.linger_ms,
        "batch.size": p.batch_bytes,
        "message.max.bytes": max(p.batch_bytes, 1000),  # larger: refused by produce() itself
        "request.timeout.ms": timeout_ms,
        # longer than the round's own bound: the round purges first, librdkafka never times
        # messages out one by one (which would leave gaps it then fills with later messages)
        "message.timeout.ms": timeout_ms + 5000,
        "delivery.report.only.error": True,
        "compression.type": "none",
    })
    return kafka


class LibrdkafkaRoundProducer:
    """``component`` names the client; ``latency`` and ``failures`` are the component's metrics
    (seconds from sending a round to its acknowledgement; rounds resent)."""

    def __init__(self, settings: Settings, component: str, latency: Histogram, failures: Counter) -> None:
        self._settings = settings
        self._component = component
        self._latency = latency
        self._failures = failures
        self._round = asyncio.Lock()  # one attempt at a time on the producer: reports stay apart
        # "main" sends rounds (gapless); "probe" sends one suspect message at a time (not gapless:
        # alone, a refused message leaves no gap, and the producer survives it); "spare", made
        # once a batch was refused, replaces "main" at the next refusal (_replace_main)
        self._clients: dict[str, tuple[Producer, _Session]] = {}
        self._closing: asyncio.Future[None] | None = None  # a producer closed after a cancellation
        self.stopping = asyncio.Event()
        self.failure = FailureClock()
        self.refused_at: float | None = None  # when a message was last refused (monotonic)

    # -- lifecycle -------------------------------------------------------------------------
    def _connect(self, kind: str) -> tuple[Producer, _Session]:
        """A fresh producer (it connects in the background: this does not wait on the broker).
        The TLS and SASL files are read here, so a rotated password is picked up."""
        config = rdkafka_config(self._settings.kafka)
        scrubber = LibrdkafkaLog([config.get("sasl.password", ""), config.get("ssl.key.password", "")])
        session = _Session()

        def delivered(err: KafkaError | None, msg: KafkaMessage) -> None:  # failures only
            if err is not None:
                session.failures.append((err, msg))

        def error(err: KafkaError) -> None:
            if err.fatal():
                session.fatal = err
            log.warning("kafka producer error", component=self._component, code=err.name(),
                        fatal=err.fatal(), error=scrubber.scrub(err.str()))

        config = producer_config(self._settings, self._component, config)
        config.update({"on_delivery": delivered, "error_cb": error, "logger": scrubber})
        if kind == "probe":
            config["enable.gapless.guarantee"] = False
        return Producer(config), session

    async def _close(self, producer: Producer) -> None:
        """Purges what the producer still holds (never sent again by it) and closes it, in a
        thread; one that does not close within stop_timeout_s is abandoned."""

        def close() -> None:
            for step in (lambda: producer.purge(True, True, True), lambda: producer.poll(0)):
                try:
                    step()
                except KafkaException:  # a fatal error is raised once, by whichever call comes first
                    pass
            producer.close()

        try:
            await asyncio.wait_for(asyncio.to_thread(close), self._settings.produce.stop_timeout_s)
        except (TimeoutError, Exception) as exc:  # noqa: BLE001 - abandon a producer that hangs
            log.warning("kafka producer did not stop cleanly; abandoned", error=type(exc).__name__)

    async def _reset(self, kind: str | None = None) -> None:
        """Closes the ``kind`` producer (both when None); the next attempt makes a fresh one."""
        for k in [kind] if kind else list(self._clients):
            client = self._clients.pop(k, None)
            if client is not None:
                await self._close(client[0])

    async def stop(self) -> None:
        self.stopping.set()
        async with self._round:  # a round sees stopping within SLICE_S and lets go
            await self._reset()

    # -- one attempt -----------------------------------------------------------------------
    async def _attempt(self, batch: list[Message],
                       kind: str = "main") -> tuple[list[tuple[int, KafkaError]], list[Refused]]:
        """Produces ``batch`` on the current producer and waits until librdkafka holds none of
        it. Returns the failures reported (index in ``batch``, error; empty: every message not
        refused locally is acknowledged) and the messages produce() refused itself. Raises
        Stopped, or RoundFailed when the attempt timed out or could not be made."""
        async with self._round:
            if self.stopping.is_set():
                raise Stopped()
            if kind not in self._clients:
                try:
                    self._clients[kind] = self._connect(kind)
                except KafkaException as exc:
                    raise RoundFailed(f"producer: {exc.args[0].name() if exc.args else exc}") from None
            client = self._clients[kind]
            producer, session = client
            session.failures.clear()
            try:
                local, unsent = await self._produce_and_flush(producer, session, batch)
            except asyncio.CancelledError:  # the round is given up: so is what the producer holds
                if self._clients.get(kind) is client:
                    del self._clients[kind]
                    self._closing = asyncio.ensure_future(self._close(producer))
                raise
            if session.fatal is not None or (session.failures and kind == "main"):
                # a fatal error cannot be cleared, and a failed batch spent sequence numbers:
                # the next attempt is made on a fresh producer (the probe bumps its epoch and
                # goes on: it only ever has one message outstanding)
                if self._clients.get(kind) is client:
                    del self._clients[kind]
                    if kind == "main" and session.fatal is not None:
                        self._replace_main()
                await self._close(producer)
            failed = self._locate(batch, session.failures)
            if unsent is not None and session.fatal is not None:  # never produced: failed too
                failed = sorted([*failed, (unsent, session.fatal)], key=lambda f: f[0])
            return failed, local

    def _replace_main(self) -> None:
        """After a refused batch stopped the main producer: the spare made at the previous one
        takes over, and a new spare starts connecting. A fresh idempotent producer waits for
        its producer id (0.1-0.5 s) before it sends anything; a topic that refuses messages
        usually refuses again, and this keeps that wait out of every round."""
        try:
            spare = self._clients.pop("spare", None)
            self._clients["main"] = spare if spare is not None else self._connect("main")
            self._clients["spare"] = self._connect("main")
        except KafkaException:
            pass  # the next attempt makes its producer itself, and says why it cannot

    async def _produce_and_flush(self, producer: Producer, session: _Session,
                                 batch: list[Message]) -> tuple[list[Refused], int | None]:
        """Returns the messages produce() refused, and the position of the first message not
        produced because the producer had failed fatally meanwhile (None: all were)."""
        s = self._settings.produce
        unsent: int | None = None
        deadline = time.monotonic() + s.send_timeout_s
        local: list[Refused] = []
        produce = producer.produce
        for i, m in enumerate(batch):
            partition = UNASSIGNED if m.partition is None else m.partition
            while True:
                try:
                    # positional (topic, value, key, partition, callback, on_delivery, timestamp):
                    # keyword arguments cost confluent-kafka about 0.5 µs a call more
                    if m.timestamp_ms is None:
                        produce(m.topic, m.value, m.key, partition)
                    else:
                        produce(m.topic, m.value, m.key, partition, None, None, m.timestamp_ms)
                    break
                except BufferError:  # the queue is full: let librdkafka send some, never drop
                    await self._flush(producer, session)
                    await self._check(deadline)
                except KafkaException as exc:
                    err: KafkaError = exc.args[0]
                    if session.fatal is not None or err.fatal() or err.code() == KafkaError._FATAL:
                        unsent = i  # a batch before it was refused (gapless): the rest waits
                        break
                    if not refused_for_good(err.code()):
                        await self._abandon()
                        raise RoundFailed(f"produce: {err.name()}") from None
                    local.append(Refused(m, f"{err.name()}: {REFUSED_CODES[err.code()]} "
                                            f"(client message.max.bytes {s.batch_bytes})"))
                    break
            if unsent is not None:
                break
            if i & 1023 == 1023:  # produce() copies each value: 1,024 of 64 KiB take ~15 ms
                await asyncio.sleep(0)
        while await self._flush(producer, session):
            if session.fatal is not None:  # gapless: the producer sends nothing more
                await self._drain(producer, session)
                break
            await self._check(deadline)
        return local, unsent

    async def _flush(self, producer: Producer, session: _Session) -> int:
        """One flush slice; returns how many messages the producer still holds. A fatal error
        (the gapless guarantee invoked after a refused batch) is raised by flush itself: it is
        noted on the session (and not also given to error_cb)."""
        try:
            return int(await _in_thread(producer.flush, SLICE_S))
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if not err.fatal():
                await self._abandon()
                raise RoundFailed(f"flush: {err.name()}") from None
            if session.fatal is None:
                session.fatal = err
                log.warning("kafka producer failed fatally; purged and replaced", component=self._component,
                            code=err.name(), error=err.str()[:300])
            return len(producer)

    async def _check(self, deadline: float) -> None:
        """Between flush slices: stop requested, or the round's time is up."""
        if self.stopping.is_set():
            await self._abandon()
            raise Stopped()
        if time.monotonic() > deadline:
            await self._abandon()
            raise RoundFailed(f"round not acknowledged within {self._settings.produce.send_timeout_s}s")

    async def _drain(self, producer: Producer, session: _Session) -> None:
        """After a fatal error: what librdkafka still holds is purged and reported failed."""
        await _in_thread(producer.purge, True, True, True)
        for _ in range(int(self._settings.produce.stop_timeout_s / SLICE_S) + 1):
            if not await self._flush(producer, session):
                return
        await self._abandon()  # its reports are incomplete: the attempt cannot be judged
        raise RoundFailed("a producer that failed fatally did not report all its messages")

    async def _abandon(self) -> None:
        """The current producer is purged and closed: nothing it holds is sent any more."""
        await self._reset()

    @staticmethod
    def _locate(batch: list[Message], failures: list[tuple[KafkaError, KafkaMessage]]) -> list[tuple[int, KafkaError]]:
        """The positions in ``batch`` of the messages reported failed, found by content (the
        reports carry topic, key and value, not our objects). Of equal messages, each report
        takes the first not yet taken, so a failure is never placed later than it was."""
        if not failures:
            return []
        where: dict[tuple[Any, Any, Any], list[int]] = {}
        for i, m in enumerate(batch):
            where.setdefault((m.topic, m.key, m.value), []).append(i)
        located: list[tuple[int, KafkaError]] = []
        for err, msg in failures:
            spots = where.get((msg.topic(), msg.key(), msg.value()))
            if not spots:  # cannot happen; if it did, the whole batch counts as failed from its start
                located.append((0, err))
            elif len(spots) > 1:
                located.append((spots.pop(0), err))
            else:
                located.append((spots[0], err))
        return sorted(located, key=lambda f: f[0])

    # -- rounds ------------------------------------------------------------------------------
    async def _send(self, messages: list[Message]) -> list[Refused]:
        """One pass at a round: returns once each message is acknowledged or refused for good.
        Raises RoundFailed on any other failure (the caller resends the whole round)."""
        pending = list(messages)
        alone: set[int] = set()  # id() of messages that failed with a refusal: sent one at a time
        refused: list[Refused] = []
        while pending:
            first_alone = next((i for i, m in enumerate(pending) if id(m) in alone), None) if alone else None
            if first_alone is None:
                batch = pending
            elif first_alone == 0:
                batch = pending[:1]
            else:
                batch = pending[:first_alone]
            failed, local = await self._attempt(batch, "probe" if len(batch) == 1 and id(batch[0]) in alone
                                                else "main")
            refused += local
            gone = {id(r.message) for r in local}
            if not failed:
                pending = pending[len(batch):]
                continue
            codes = [err.code() for _, err in failed]
            if not any(refused_for_good(c) for c in codes):
                first = failed[0][1]
                raise RoundFailed(f"{first.name()}: {first.str()[:200]} ({len(failed)} of {len(batch)} messages)")
            if len(batch) == 1 and refused_for_good(codes[0]):
                code = codes[0]
                refused.append(Refused(batch[0], f"{KafkaError(code).name()}: {REFUSED_CODES[code]}"))
                pending = pending[1:]
                continue
            # a batch was refused: what precedes its first failure is written; the messages
            # that failed with a refusal are resent alone, in order, to find the culprit(s)
            start = failed[0][0]
            alone |= {id(batch[i]) for i, err in failed if refused_for_good(err.code())}
            log.info("kafka refused a batch; resending its messages one at a time", component=self._component,
                     messages=sum(1 for _, err in failed if refused_for_good(err.code())))
            pending = [m for m in batch[start:] if id(m) not in gone] + pending[len(batch):]
        if len(refused) > 1:
            order = {id(m): i for i, m in enumerate(messages)}
            refused.sort(key=lambda r: order[id(r.message)])
        return refused

    async def send_round(self, messages: list[Message]) -> list[Refused]:
        """Deliver ``messages``; retries with backoff until each is acknowledged or refused for
        good (returned), or stop is requested (Stopped)."""
        if not messages:
            return []
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                refused = await self._send(messages)
            except RoundFailed as exc:
                error = str(exc)
            except Stopped:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure: resend the whole round
                error = f"{type(exc).__name__}: {str(exc)[:200]}"
            else:
                self._latency.observe(time.monotonic() - started)
                self.failure.recovered()
                if refused:
                    self._refused(refused)
                return refused
            attempt += 1
            self._failures.inc()
            self.failure.failed()
            log.warning("kafka round failed; resending on a new producer", component=self._component,
                        attempt=attempt, error=error, messages=len(messages))
            async with self._round:
                await self._reset()
            delay = min(self._settings.produce.retry_backoff_max_s, 0.2 * 2 ** min(attempt, 10))
            try:
                await asyncio.wait_for(self.stopping.wait(), delay)
                raise Stopped() from None
            except TimeoutError:
                pass

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

    def _refused(self, refused: list[Refused]) -> None:
        self.refused_at = time.monotonic()
        for r in refused:
            REFUSED_TOTAL.labels(self._component, r.message.topic).inc()
            log.error("kafka refused a message for good; not retried", topic=r.message.topic,
                      bytes=len(r.message.value or b""), error=r.error)
