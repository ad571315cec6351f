"""The development broker's SASL_SSL files and configuration, without a broker: made once and
reused, and a configuration that differs from the one `up` writes (an older set-up's, or new TLS
files) is what makes `up` restart a broker of its own (meterstream.dev.services.kafka)."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

from meterstream.dev.services.kafka import KafkaBroker
from meterstream.kafka_clients import client_kwargs


def test_tls_files_are_made_once_and_work_as_a_tls_pair(tmp_path: Path) -> None:
    broker = KafkaBroker(tmp_path / "kafka", port=1, controller_port=2, sasl_ssl_port=3)
    made = broker.tls.ensure()
    assert any("CA" in line for line in made) and any("SCRAM user" in line for line in made)
    contents = {p.name: p.read_bytes() for p in broker.tls.root.iterdir()}
    assert broker.tls.ensure() == []  # idempotent: nothing made again, nothing changed
    assert {p.name: p.read_bytes() for p in broker.tls.root.iterdir()} == contents
    for secret in (broker.tls.ca_key, broker.tls.broker_key, broker.tls.client_key, broker.tls.keystore,
                   broker.tls.keystore_password, broker.tls.password_file):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
    # the client's settings load the CA and the client certificate (mutual TLS)
    kwargs = client_kwargs(broker.secure_settings(mutual=True))
    assert kwargs["security_protocol"] == "SASL_SSL" and kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["sasl_plain_password"] == broker.tls.password_file.read_text().strip()
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext) and kwargs["ssl_context"].get_ca_certs()


def test_a_configuration_without_the_listener_or_with_other_files_is_outdated(tmp_path: Path) -> None:
    broker = KafkaBroker(tmp_path / "kafka", port=29192, controller_port=29193, sasl_ssl_port=29194)
    broker.tls.ensure()
    assert broker.outdated()  # nothing written yet
    broker._write_config()
    assert not broker.outdated()
    text = broker.config_path.read_text()
    assert "SASL_SSL://127.0.0.1:29194" in text and stat.S_IMODE(broker.config_path.stat().st_mode) == 0o600
    # an older set-up's file: the same without the SASL_SSL listener
    older = "".join(line + "\n" for line in text.splitlines()
                    if not line.startswith(("#", "listener.name.sasl_ssl")))
    broker.config_path.write_text(older.replace(",SASL_SSL://127.0.0.1:29194", "").replace(",SASL_SSL:SASL_SSL", ""))
    assert broker.outdated()
    broker._write_config()
    assert not broker.outdated()
    broker.tls.keystore.unlink()  # new files: the running broker holds the old ones
    broker.tls.broker_cert.unlink()
    broker.tls.ensure()
    assert broker.outdated()
