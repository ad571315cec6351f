"""Ingest's librdkafka round producer's pure parts (meterstream/producer_rdkafka.py), without
a broker: which librdkafka errors are refusals, the
librdkafka configuration made from the settings (and that no secret shows in its repr or in
what librdkafka logs), and how failure reports are placed in a round."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import SecretStr
from structlog.testing import capture_logs

from meterstream import settings as settings_mod
from meterstream.dev.services.kafka_tls import make_ca
from meterstream.kafka_clients import KafkaSecurityError, rdkafka_config
from meterstream.producer import Message
from meterstream.producer_rdkafka import REFUSED_CODES, LibrdkafkaLog, producer_config, refused_for_good
from meterstream.producer_rdkafka import LibrdkafkaRoundProducer as RoundProducer
from meterstream.settings import KafkaSettings

PASSWORD = "hunter2-Secret"
SASL: dict[str, Any] = {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "svc"}


@pytest.mark.parametrize("code", [KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE,
                                  KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.TOPIC_EXCEPTION,
                                  KafkaError.INVALID_TIMESTAMP, KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT,
                                  KafkaError.POLICY_VIOLATION, KafkaError.INVALID_RECORD])
def test_refusals_are_never_retried(code: int) -> None:
    assert refused_for_good(code) and REFUSED_CODES[code]


@pytest.mark.parametrize("code", [
    KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN,
    KafkaError._FATAL, KafkaError._GAPLESS_GUARANTEE, KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT,
    KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION, KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED, KafkaError._AUTHENTICATION,
    KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError.NOT_ENOUGH_REPLICAS, KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE, KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, KafkaError.INVALID_PRODUCER_EPOCH,
    KafkaError.UNKNOWN_PRODUCER_ID, KafkaError.REQUEST_TIMED_OUT, KafkaError._QUEUE_FULL, KafkaError.INVALID_MSG,
])
def test_failures_an_operator_or_time_can_fix_are_retried(code: int) -> None:
    assert not refused_for_good(code)


def test_plaintext_config() -> None:
    assert rdkafka_config(KafkaSettings()) == {"bootstrap.servers": "127.0.0.1:19092",
                                               "security.protocol": "plaintext"}


def test_sasl_ssl_config_keeps_hostname_verification_and_hides_the_password(tmp_path: Path) -> None:
    ca = make_ca(tmp_path, "a test CA")[0]
    kafka = KafkaSettings(**SASL, sasl_password=SecretStr(PASSWORD), ssl_cafile=str(ca), bootstrap="kafka.example:9094")
    config = rdkafka_config(kafka)
    assert config == {"bootstrap.servers": "kafka.example:9094", "security.protocol": "sasl_ssl",
                      "ssl.ca.location": str(ca), "ssl.endpoint.identification.algorithm": "https",
                      "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "svc", "sasl.password": PASSWORD}
    assert PASSWORD not in repr(config) and PASSWORD not in str(config) and PASSWORD not in f"{config}"
    assert "sasl.password" in repr(config)


def test_ssl_config_with_a_client_certificate_and_the_system_trust_store(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "c.key"
    kafka = KafkaSettings(security_protocol="SSL", ssl_certfile=str(cert), ssl_keyfile=str(key))
    with pytest.raises(KafkaSecurityError, match="kafka.ssl_certfile"):  # the same check as aiokafka's clients
        rdkafka_config(kafka)
    config = rdkafka_config(KafkaSettings(security_protocol="SSL"))
    assert config["ssl.ca.location"] == "probe" and config["ssl.endpoint.identification.algorithm"] == "https"
    assert "sasl.password" not in config


def test_password_file_is_read_at_each_producer(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    kafka = KafkaSettings(**SASL, sasl_password_file=str(secret))
    assert rdkafka_config(kafka)["sasl.password"] == PASSWORD
    secret.write_text("rotated\n")
    assert rdkafka_config(kafka)["sasl.password"] == "rotated"


def test_producer_config_keeps_the_guarantees() -> None:
    settings = settings_mod.load(None, produce={"batch_bytes": 500_000, "linger_ms": 7, "send_timeout_s": 12})
    config = producer_config(settings, "ingest", rdkafka_config(settings.kafka))
    assert config["enable.idempotence"] is True and config["acks"] == "all"
    assert config["enable.gapless.guarantee"] is True and config["partitioner"] == "murmur2_random"
    assert config["delivery.report.only.error"] is True
    assert config["client.id"] == "meterstream-ingest"
    assert (config["batch.size"], config["message.max.bytes"], config["linger.ms"]) == (500_000, 500_000, 7)
    assert config["request.timeout.ms"] == 12_000 and config["message.timeout.ms"] > 12_000


def test_librdkafka_log_lines_are_scrubbed() -> None:
    scrubber = LibrdkafkaLog([PASSWORD, ""])
    with capture_logs() as logs:
        scrubber.log(40, "%s [%s] %s", "SASL", "rdkafka#producer-1", f"auth failed for svc:{PASSWORD}")
        scrubber.log(20, "plain line")
    assert [entry["log_level"] for entry in logs] == ["error", "info"]
    assert PASSWORD not in str(logs) and "svc:***" in logs[0]["line"]


async def test_a_sasl_producer_logs_no_secret(tmp_path: Path) -> None:
    """A producer with a SASL password, pointed at a port nobody listens on: what it logs
    (librdkafka's lines, its errors, the failed round) never holds the password."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = settings_mod.load(None, kafka={**SASL, "sasl_password": PASSWORD, "bootstrap": f"127.0.0.1:{port}"},
                                 produce={"send_timeout_s": 0.5, "retry_backoff_max_s": 0.2})
    registry = CollectorRegistry()
    producer = RoundProducer(settings, "units", Histogram("units_latency", "l", registry=registry),
                             Counter("units_failures", "f", registry=registry))
    with capture_logs() as logs:
        round_ = asyncio.ensure_future(producer.send_round([Message("t", b"k", b"v")]))
        await asyncio.sleep(1.5)
        await producer.stop()
        with pytest.raises(Exception):  # noqa: B017 - Stopped
            await round_
    assert any(entry["event"] == "kafka round failed; resending on a new producer" for entry in logs)
    assert PASSWORD not in str(logs)


def test_failures_are_placed_at_their_first_possible_position() -> None:
    class Report:
        def __init__(self, m: Message) -> None:
            self.m = m

        def topic(self) -> str:
            return self.m.topic

        def key(self) -> bytes:
            return self.m.key

        def value(self) -> bytes | None:
            return self.m.value

    batch = [Message("t", b"k", b"a"), Message("t", b"k", b"b"), Message("t", b"k", b"a"), Message("t", b"k", None)]
    err = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)
    located = RoundProducer._locate(batch, [(err, Report(batch[3])), (err, Report(batch[2])),  # type: ignore[list-item]
                                            (err, Report(batch[2]))])  # type: ignore[list-item]
    assert [i for i, _ in located] == [0, 2, 3]  # equal messages: the earliest first
    assert RoundProducer._locate(batch, [(err, Report(Message("t", b"x", b"y")))]) == [(0, err)]  # type: ignore[list-item]


async def test_a_refused_batch_is_searched_one_message_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake broker that refuses any batch holding a message over 100 bytes (the whole batch,
    as librdkafka reports it): the culprits come back as Refused, each other message is written
    once, in order, and the suspects go through the probe producer one at a time."""
    settings = settings_mod.load(None)
    registry = CollectorRegistry()
    producer = RoundProducer(settings, "units", Histogram("fake_latency", "l", registry=registry),
                             Counter("fake_failures", "f", registry=registry))
    written: list[bytes] = []
    attempts: list[tuple[str, int]] = []
    refusal = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)

    async def attempt(batch: list[Message], kind: str = "main") -> tuple[list, list]:
        attempts.append((kind, len(batch)))
        if any(len(m.value or b"") > 100 for m in batch):
            return [(i, refusal) for i in range(len(batch))], []  # the whole batch fails
        written.extend(m.value or b"" for m in batch)
        return [], []

    monkeypatch.setattr(producer, "_attempt", attempt)
    messages = [Message("t", b"k", b"%d" % i if i not in (3, 7) else b"x" * 200) for i in range(10)]
    refused = await producer.send_round(messages)
    assert [id(r.message) for r in refused] == [id(messages[3]), id(messages[7])]
    assert all("MSG_SIZE_TOO_LARGE" in r.error for r in refused)
    assert written == [b"%d" % i for i in range(10) if i not in (3, 7)]
    assert attempts[0] == ("main", 10) and all(n == 1 for kind, n in attempts[1:] if kind == "probe")
    assert sum(1 for kind, _ in attempts if kind == "probe") == 10  # every suspect alone, once
