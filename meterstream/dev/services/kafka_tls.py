"""The development broker's SASL_SSL listener: a CA of its own, the broker's certificate, a
client certificate (mutual TLS), and a SCRAM-SHA-512 user with a generated password.

Made once with openssl under the broker's state directory (``<MS_DEV_DIR>/kafka/tls``) and
reused: a file is only made when it is missing (``ensure``). Nothing here is a production
secret: the CA signs only loopback names, and the password guards a loopback listener. The
files are readable by their owner only, except the CA certificate.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from meterstream.dev.services.system import ensure_debian, run

SCRAM_USER = "meterstream-dev"
SCRAM_MECHANISM = "SCRAM-SHA-512"
DAYS = 3650  # a development CA: renewed by deleting the directory (`up` restarts the broker on the new files)
KEY_ALGORITHM = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]


def openssl() -> str:
    if shutil.which("openssl") is None:
        ensure_debian("openssl")
    return shutil.which("openssl") or "openssl"


def make_ca(directory: Path, name: str = "meterstream dev CA") -> tuple[Path, Path]:
    """A self-signed CA in ``directory``: (ca.pem, ca.key). The tests make a foreign one too."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "ca.pem", directory / "ca.key"
    run([openssl(), "req", "-x509", *KEY_ALGORITHM, "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", str(DAYS), "-subj", f"/CN={name}",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    key.chmod(0o600)
    return cert, key


def sign(ca: tuple[Path, Path], cert: Path, key: Path, name: str, usage: str, alt_names: str | None) -> None:
    """A key and a certificate for ``name`` signed by ``ca`` (usage: serverAuth or clientAuth)."""
    with tempfile.TemporaryDirectory() as tmp:
        csr, ext = Path(tmp) / "req.csr", Path(tmp) / "ext.cnf"
        run([openssl(), "req", *KEY_ALGORITHM, "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}"])
        key.chmod(0o600)
        lines = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
                 f"extendedKeyUsage={usage}"]
        if alt_names:
            lines.append(f"subjectAltName={alt_names}")
        ext.write_text("\n".join(lines) + "\n")
        run([openssl(), "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
             "-set_serial", str(secrets.randbits(63)), "-days", str(DAYS), "-sha256",
             "-extfile", str(ext), "-out", str(cert)])


@dataclass
class KafkaTls:
    """The files of the development broker's SASL_SSL listener."""

    root: Path

    ca = property(lambda self: self.root / "ca.pem")
    ca_key = property(lambda self: self.root / "ca.key")
    broker_cert = property(lambda self: self.root / "broker.pem")
    broker_key = property(lambda self: self.root / "broker.key")
    keystore = property(lambda self: self.root / "broker.p12")  # PKCS12: the broker's key and chain
    keystore_password = property(lambda self: self.root / "keystore.password")
    client_cert = property(lambda self: self.root / "client.pem")
    client_key = property(lambda self: self.root / "client.key")
    password_file = property(lambda self: self.root / "scram.password")

    def ensure(self) -> list[str]:
        """Makes what is missing; returns what was made, a line each."""
        done = []
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        if not (self.ca.exists() and self.ca_key.exists()):
            make_ca(self.root)
            for stale in (self.broker_cert, self.keystore, self.client_cert):
                stale.unlink(missing_ok=True)  # signed by a CA that is gone
            done.append(f"kafka: made a development CA ({self.ca})")
        ca = (self.ca, self.ca_key)
        if not self.broker_cert.exists():
            sign(ca, self.broker_cert, self.broker_key, "localhost", "serverAuth", "IP:127.0.0.1,DNS:localhost")
            self.keystore.unlink(missing_ok=True)
            done.append("kafka: made the broker's certificate (127.0.0.1, localhost)")
        if not self.keystore.exists():
            _secret_file(self.keystore_password)
            run([openssl(), "pkcs12", "-export", "-in", str(self.broker_cert), "-inkey", str(self.broker_key),
                 "-certfile", str(self.ca), "-name", "broker", "-out", str(self.keystore),
                 "-passout", f"file:{self.keystore_password}"])
            self.keystore.chmod(0o600)
        if not self.client_cert.exists():
            sign(ca, self.client_cert, self.client_key, SCRAM_USER, "clientAuth", None)
            done.append("kafka: made a client certificate (mutual TLS)")
        if _secret_file(self.password_file):
            done.append(f"kafka: made the password of SCRAM user {SCRAM_USER} ({self.password_file})")
        return done

    def fingerprint(self) -> str:
        """Changes when any file the broker loads changes (then its configuration is outdated)."""
        digest = hashlib.sha256()
        for path in (self.keystore, self.keystore_password, self.ca):
            digest.update(path.read_bytes() if path.exists() else b"-")
        return digest.hexdigest()[:16]

    def listener_properties(self, name: str) -> dict[str, str]:
        """server.properties entries of the SASL_SSL listener called ``name``."""
        prefix = f"listener.name.{name.lower()}"
        return {
            f"{prefix}.sasl.enabled.mechanisms": SCRAM_MECHANISM,
            f"{prefix}.{SCRAM_MECHANISM.lower()}.sasl.jaas.config":
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            f"{prefix}.ssl.keystore.type": "PKCS12",
            f"{prefix}.ssl.keystore.location": str(self.keystore),
            f"{prefix}.ssl.keystore.password": self.keystore_password.read_text().strip(),
            f"{prefix}.ssl.key.password": self.keystore_password.read_text().strip(),
            f"{prefix}.ssl.truststore.type": "PEM",
            f"{prefix}.ssl.truststore.location": str(self.ca),
            # a client certificate is verified when presented (mutual TLS), not demanded
            f"{prefix}.ssl.client.auth": "requested",
            f"{prefix}.ssl.enabled.protocols": "TLSv1.3,TLSv1.2",
        }

    def client_settings(self, bootstrap: str, *, mutual: bool = False) -> dict[str, str]:
        """The ``kafka`` settings of a client of that listener (a KafkaSettings' fields)."""
        settings = {"bootstrap": bootstrap, "security_protocol": "SASL_SSL", "ssl_cafile": str(self.ca),
                    "sasl_mechanism": SCRAM_MECHANISM, "sasl_username": SCRAM_USER,
                    "sasl_password_file": str(self.password_file)}
        if mutual:
            settings.update(ssl_certfile=str(self.client_cert), ssl_keyfile=str(self.client_key))
        return settings


def _secret_file(path: Path) -> bool:
    """A random password in ``path`` (mode 0600) unless it holds one already; True when made."""
    if path.exists() and path.read_text().strip():
        return False
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(24) + "\n")
    return True
