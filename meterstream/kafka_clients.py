"""The connection settings of every Kafka client, from the one ``kafka`` settings section.

Every aiokafka producer, consumer and admin client is made with ``**client_kwargs(kafka)``
and the faust worker gets ``faust_credentials(kafka)`` as its ``broker_credentials``: no
client is configured by hand, so TLS and SASL reach all of them (docs/security.md).
Files (the CA, the client certificate and key, the password file) are read when a client is
made, so a reconnecting client picks up a rotated file.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from meterstream.settings import KafkaSettings


class KafkaSecurityError(Exception):
    """A TLS or SASL file that cannot be used (its path is named, never its content)."""


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext | None:
    """The TLS context of SSL and SASL_SSL (None otherwise): the broker's certificate is
    verified against ``ssl_cafile`` (the system's trust store when empty) and its name
    against the bootstrap address; ``ssl_certfile``/``ssl_keyfile`` are presented when set."""
    if kafka.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=kafka.ssl_cafile or None)
    except (OSError, ssl.SSLError) as exc:
        raise KafkaSecurityError(f"kafka.ssl_cafile {kafka.ssl_cafile}: {_reason(exc)}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if kafka.ssl_certfile:
        try:
            context.load_cert_chain(kafka.ssl_certfile, kafka.ssl_keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise KafkaSecurityError(f"kafka.ssl_certfile {kafka.ssl_certfile} / kafka.ssl_keyfile "
                                     f"{kafka.ssl_keyfile}: {_reason(exc)}") from None
    return context


def sasl_password(kafka: KafkaSettings) -> str:
    if kafka.sasl_password is not None:
        return kafka.sasl_password.get_secret_value()
    try:
        password = Path(kafka.sasl_password_file).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise KafkaSecurityError(f"kafka.sasl_password_file {kafka.sasl_password_file}: {_reason(exc)}") from None
    if not password:
        raise KafkaSecurityError(f"kafka.sasl_password_file {kafka.sasl_password_file} is empty")
    return password


def security_kwargs(kafka: KafkaSettings) -> dict[str, Any]:
    """aiokafka's keyword arguments for TLS and SASL (without the bootstrap address)."""
    kwargs: dict[str, Any] = {"security_protocol": kafka.security_protocol}
    context = ssl_context(kafka)
    if context is not None:
        kwargs["ssl_context"] = context
    if kafka.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        kwargs.update(sasl_mechanism=kafka.sasl_mechanism, sasl_plain_username=kafka.sasl_username,
                      sasl_plain_password=sasl_password(kafka))
    return kwargs


def client_kwargs(kafka: KafkaSettings) -> dict[str, Any]:
    """The keyword arguments every aiokafka client (AIOKafkaProducer, AIOKafkaConsumer,
    AIOKafkaAdminClient) takes first: the bootstrap servers, TLS and SASL."""
    return {"bootstrap_servers": kafka.bootstrap, **security_kwargs(kafka)}


def faust_credentials(kafka: KafkaSettings) -> Any:
    """faust's ``broker_credentials``: None (PLAINTEXT), an SSL context (SSL), or SASL
    credentials, with the SSL context for SASL_SSL. faust hands them to every client it
    makes (its consumer, meter.batches' one included, producers, topic creation)."""
    import faust

    context = ssl_context(kafka)
    if kafka.security_protocol == "PLAINTEXT":
        return None
    if kafka.security_protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(username=kafka.sasl_username, password=sasl_password(kafka),
                                 ssl_context=context, mechanism=kafka.sasl_mechanism)


def _reason(exc: BaseException) -> str:
    """What went wrong with a file, without its content."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__ + (f" ({exc.reason})" if isinstance(exc, ssl.SSLError) and exc.reason else "")
