"""The start-up check of a process's access to Kafka: one connection, TLS and SASL included,
bounded in time, whose refusal is said clearly.

aiokafka reports a refused password or an untrusted certificate only as "Unable to
bootstrap" and its clients then retry (or wait) for ever; a process would look alive while it
can never work. ``check`` connects to the bootstrap servers as every client will
(meterstream.kafka_clients) and raises ``KafkaAccessRefused``, naming the setting to look at,
when a broker refuses this client for a reason no retry mends. A broker that does not answer
is not a refusal: the process starts, and its clients retry as they do when the broker goes
away later. Messages never hold a password.
"""

from __future__ import annotations

import asyncio
import ssl
import time

from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    IllegalSaslStateError,
    KafkaConnectionError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)

from meterstream import logs
from meterstream.kafka_clients import KafkaSecurityError, security_kwargs
from meterstream.settings import KafkaSettings

log = logs.get(__name__)
EXIT_REFUSED = 2  # a configuration error: the process cannot work as configured


class KafkaAccessRefused(Exception):
    """Kafka refuses this client (TLS or SASL) or its TLS/SASL files are unusable."""


def refusal(exc: BaseException, server: str, kafka: KafkaSettings) -> KafkaAccessRefused | None:
    """What a connection error means when no retry can mend it; None otherwise."""
    cause = exc.__cause__
    if isinstance(exc, KafkaConnectionError) and isinstance(cause, ssl.SSLError):
        # TLS 1.3: the broker judges the client's certificate after the handshake, and closes
        return KafkaAccessRefused(f"kafka: {server} refused this client's TLS certificate (kafka.ssl_certfile): "
                                  f"{cause.reason or type(cause).__name__}")
    if isinstance(exc, KafkaConnectionError) and isinstance(cause, asyncio.IncompleteReadError) \
            and cause.expected is not None and _tls_record(cause.expected):
        return KafkaAccessRefused(f"kafka: {server} answered in TLS, and kafka.security_protocol is "
                                  f"{kafka.security_protocol}: use SSL or SASL_SSL for that listener")
    if isinstance(exc, KafkaSecurityError):
        return KafkaAccessRefused(str(exc))
    if isinstance(exc, ssl.SSLCertVerificationError):
        return KafkaAccessRefused(
            f"kafka: the certificate of {server} is not trusted (kafka.ssl_cafile) or does not name that address: "
            f"{exc.verify_message}")
    if isinstance(exc, ssl.SSLError):
        hint = (" (is it a TLS listener? kafka.security_protocol is " + kafka.security_protocol + ")"
                if exc.reason == "WRONG_VERSION_NUMBER" else "")
        return KafkaAccessRefused(f"kafka: TLS handshake with {server} failed: {exc.reason or type(exc).__name__}"
                                  f"{hint}")
    if isinstance(exc, (SaslAuthenticationFailed, AuthenticationFailedError)):
        return KafkaAccessRefused(
            f"kafka: {server} refused SASL {kafka.sasl_mechanism} authentication of user {kafka.sasl_username!r} "
            f"(kafka.sasl_password / kafka.sasl_password_file): {_broker_words(exc)}")
    if isinstance(exc, (UnsupportedSaslMechanismError, IllegalSaslStateError)):
        return KafkaAccessRefused(f"kafka: {server} does not take SASL {kafka.sasl_mechanism} on this listener: "
                                  f"{_broker_words(exc)}")
    return None


async def check(kafka: KafkaSettings, client_id: str = "meterstream-access-check") -> str | None:
    """Connects to the bootstrap servers, one after the other, until one accepts this client
    (returns None) or ``kafka.access_check_s`` has passed (returns what went wrong last: the
    brokers did not answer). Raises ``KafkaAccessRefused`` at the first refusal."""
    deadline = time.monotonic() + kafka.access_check_s
    kwargs = security_kwargs(kafka)  # raises KafkaSecurityError for an unusable file
    last = "no bootstrap server"
    while True:
        for host, port, _ in collect_hosts(kafka.bootstrap):
            left = deadline - time.monotonic()
            if left <= 0:
                return last
            server = f"{host}:{port}"
            try:
                conn = await asyncio.wait_for(
                    create_conn(host, port, client_id=client_id, request_timeout_ms=int(left * 1000), **kwargs),
                    left)
            except Exception as exc:  # noqa: BLE001 - sorted into refusals and the rest
                refused = refusal(exc, server, kafka)
                if refused is not None:
                    raise refused from None
                last = f"{server}: {type(exc).__name__}"
                continue
            conn.close()
            return None
        await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


async def check_or_exit(kafka: KafkaSettings, component: str) -> None:
    """``check`` for a process starting: a refusal is logged and ends it with exit code 2;
    brokers that do not answer are logged, and the process goes on (its clients retry)."""
    try:
        unanswered = await check(kafka, client_id=f"{kafka.client_id}-{component}-check")
    except (KafkaAccessRefused, KafkaSecurityError) as exc:
        log.error("kafka refuses this process; exiting", component=component, error=str(exc),
                  security_protocol=kafka.security_protocol)
        raise SystemExit(EXIT_REFUSED) from None
    if unanswered is not None:
        log.warning("kafka does not answer yet; going on (the clients retry)", component=component,
                    error=unanswered, waited_s=kafka.access_check_s)


def _tls_record(size: int) -> bool:
    """Whether the 4 bytes aiokafka read as a response's size begin a TLS record (an alert or a
    handshake, version 3.x): a TLS listener's answer to a plaintext request."""
    return (size >> 24) in (0x15, 0x16) and (size >> 16) & 0xFF == 0x03


def _broker_words(exc: BaseException) -> str:
    text = str(exc)
    return text[:300] if text else type(exc).__name__
