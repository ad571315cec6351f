"""The kafka and postgres security settings, and what every client is made with: pure
checks, no services (tests/test_kafka_tls.py has the real broker, tests/test_postgres_tls.py
the real Postgres)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import faust
import pytest

from meterstream import kafka_clients, pg
from meterstream import settings as settings_mod
from meterstream.kafka_clients import KafkaSecurityError, client_kwargs, faust_credentials
from meterstream.settings import KafkaSettings, PostgresSettings

PASSWORD = "hunter2-Secret"
SASL: dict[str, Any] = {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "svc"}


def test_plaintext_is_the_default_and_adds_nothing() -> None:
    assert client_kwargs(KafkaSettings()) == {"bootstrap_servers": "127.0.0.1:19092",
                                              "security_protocol": "PLAINTEXT"}
    assert faust_credentials(KafkaSettings()) is None


def test_environment_configures_sasl_ssl(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MS_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("MS_KAFKA__SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("MS_KAFKA__SASL_USERNAME", "svc")
    monkeypatch.setenv("MS_KAFKA__SASL_PASSWORD", PASSWORD)
    kafka = settings_mod.load(None).kafka
    kwargs = client_kwargs(kafka)
    assert kwargs["security_protocol"] == "SASL_SSL" and kwargs["sasl_mechanism"] == "SCRAM-SHA-256"
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("svc", PASSWORD)
    context = kwargs["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname  # the system's trust store
    credentials = faust_credentials(kafka)
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_SSL" and credentials.mechanism.value == "SCRAM-SHA-256"
    assert PASSWORD not in repr(kafka) and PASSWORD not in repr(credentials)


def test_password_file_is_read_at_each_client(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    kafka = KafkaSettings(**SASL, sasl_password_file=str(secret))
    assert client_kwargs(kafka)["sasl_plain_password"] == PASSWORD
    secret.write_text("rotated\n")
    assert client_kwargs(kafka)["sasl_plain_password"] == "rotated"
    secret.unlink()
    with pytest.raises(KafkaSecurityError, match="sasl_password_file") as refused:
        client_kwargs(kafka)
    assert "rotated" not in str(refused.value)


def test_ssl_protocol_and_unusable_files(tmp_path: Path) -> None:
    kafka = KafkaSettings(security_protocol="SSL")
    kwargs = client_kwargs(kafka)
    assert "sasl_mechanism" not in kwargs and isinstance(kwargs["ssl_context"], ssl.SSLContext)
    assert isinstance(faust_credentials(kafka), faust.SSLCredentials)
    missing = KafkaSettings(security_protocol="SSL", ssl_cafile=str(tmp_path / "absent.pem"))
    with pytest.raises(KafkaSecurityError, match="kafka.ssl_cafile .*absent.pem"):
        kafka_clients.ssl_context(missing)
    junk = tmp_path / "key.pem"
    junk.write_text(f"-----BEGIN PRIVATE KEY-----\n{PASSWORD}\n-----END PRIVATE KEY-----\n")
    with pytest.raises(KafkaSecurityError, match="kafka.ssl_certfile") as refused:
        kafka_clients.ssl_context(KafkaSettings(security_protocol="SSL", ssl_certfile=str(junk), ssl_keyfile=str(junk)))
    assert PASSWORD not in str(refused.value)


@pytest.mark.parametrize(("fields", "says"), [
    ({"security_protocol": "SASL_SSL", "sasl_username": "svc", "sasl_password": PASSWORD}, "sasl_mechanism"),
    ({**SASL, "sasl_password": PASSWORD, "sasl_username": ""}, "sasl_username"),
    (SASL, "sasl_password or kafka.sasl_password_file"),
    ({**SASL, "sasl_password": PASSWORD, "sasl_password_file": "/x"}, "not both"),
    ({"sasl_username": "svc", "sasl_password": PASSWORD}, "security_protocol is PLAINTEXT"),
    ({"ssl_cafile": "/ca.pem"}, "use SSL or SASL_SSL"),
    ({"security_protocol": "SSL", "ssl_certfile": "/c.pem"}, "go together"),
    ({"security_protocol": "SASL_SSL ", "sasl_password": PASSWORD}, "security_protocol"),
    ({**SASL, "sasl_mechanism": "GSSAPI", "sasl_password": PASSWORD}, "sasl_mechanism"),
])
def test_incoherent_kafka_security_is_refused_without_echoing_the_password(fields: dict, says: str) -> None:
    with pytest.raises(ValueError, match=says) as refused:
        settings_mod.load(None, kafka=fields)
    assert PASSWORD not in str(refused.value)


def test_sslmode_defaults_to_verify_full_outside_development(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MS_DEV", raising=False)
    assert pg.sslmode(PostgresSettings()) == "verify-full"
    context = pg.ssl_argument(PostgresSettings())
    assert isinstance(context, ssl.SSLContext) and context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    monkeypatch.setenv("MS_DEV", "1")
    assert pg.sslmode(PostgresSettings()) == "prefer" and pg.ssl_argument(PostgresSettings()) == "prefer"
    assert pg.sslmode(PostgresSettings(sslmode="verify-full")) == "verify-full"  # a setting wins in development too


@pytest.mark.parametrize(("mode", "rootcert", "hostname", "verify"), [
    ("require", False, False, ssl.CERT_NONE),
    ("require", True, False, ssl.CERT_REQUIRED),  # as libpq: a root certificate given is checked
    ("verify-ca", True, False, ssl.CERT_REQUIRED),
    ("verify-full", True, True, ssl.CERT_REQUIRED),
])
def test_sslmodes_as_libpq(mode: str, rootcert: bool, hostname: bool, verify: ssl.VerifyMode, tmp_path: Path) -> None:
    ca = None
    if rootcert:
        from meterstream.dev.services.kafka_tls import make_ca

        ca, _ = make_ca(tmp_path)
    context = pg.ssl_argument(PostgresSettings.model_validate({"sslmode": mode, "sslrootcert": str(ca) if ca else ""}))
    assert isinstance(context, ssl.SSLContext)
    assert (context.check_hostname, context.verify_mode) == (hostname, verify)
    for advisory in ("disable", "allow", "prefer"):
        assert pg.ssl_argument(PostgresSettings(sslmode=advisory)) == advisory


def test_dsn_tls_parameters_are_refused_without_echoing_it() -> None:
    with pytest.raises(ValueError, match="postgres.sslmode") as refused:
        settings_mod.load(None, postgres={"dsn": f"postgresql://u:{PASSWORD}@h/db?sslmode=disable"})
    assert PASSWORD not in str(refused.value)
    with pytest.raises(pg.PostgresAccessError, match="sslrootcert"):
        pg.ssl_argument(PostgresSettings(sslmode="verify-full", sslrootcert="/absent/root.crt"))
