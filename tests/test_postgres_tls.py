"""Postgres over TLS, against real servers: a cluster of this test's own with ssl=on and
hostssl-only logins (its certificate signed by a CA made here, for names but not for its
address), and the shared development cluster, which offers no TLS. sslmode and sslrootcert
do what libpq's do, and a refusal is said at once instead of retried."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meterstream import pg
from meterstream import settings as settings_mod
from meterstream.dev import sample
from meterstream.dev.processes import Process, free_port
from meterstream.dev.services.kafka_tls import make_ca, sign
from meterstream.dev.services.postgres import bindir
from meterstream.dev.services.system import run
from meterstream.kafka import read_to_end
from meterstream.schemas import topics
from meterstream.schemas.migrate import migrate
from meterstream.settings import Settings
from tests.conftest import Services

pytestmark = pytest.mark.services
SERVER_NAME = "db.meterstream.internal"  # the certificate's names: this and localhost, not 127.0.0.1


class TlsCluster:
    """A throw-away Postgres with ssl=on that takes logins over TLS only (hostssl)."""

    def __init__(self) -> None:
        if bindir() is None:
            pytest.skip("no PostgreSQL server binaries (meterstream dev up installs them)")
        self.root = Path(tempfile.mkdtemp(prefix="ms-pg-tls-"))  # under /tmp: the postgres user must enter it
        self.root.chmod(0o755)
        self.data, self.port = self.root / "data", free_port()
        self.user = "postgres" if os.geteuid() == 0 else None
        self.ca, self.ca_key = make_ca(self.root / "ca", "postgres test CA")
        self.cert, self.key = self.root / "server.pem", self.root / "server.key"
        sign((self.ca, self.ca_key), self.cert, self.key, SERVER_NAME, "serverAuth", f"DNS:{SERVER_NAME},DNS:localhost")
        self.data.mkdir()
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            for path in (self.data, self.cert, self.key):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        run([str(bindir() / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-locale",
             "--encoding=UTF8"], user=self.user)
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.data}'\n"
                       f"ssl = on\nssl_cert_file = '{self.cert}'\nssl_key_file = '{self.key}'\n"
                       "fsync = off\nshared_buffers = '16MB'\nmax_connections = 20\n")
        (self.data / "pg_hba.conf").write_text("local all all trust\nhostssl all all 127.0.0.1/32 trust\n")
        run([str(bindir() / "pg_ctl"), "-D", str(self.data), "-l", str(self.data / "server.log"), "-w", "-t", "60",
             "start"], user=self.user)

    def dsn(self, database: str = "postgres", host: str = "127.0.0.1") -> str:
        return f"postgresql://postgres@{host}:{self.port}/{database}"

    def stop(self) -> None:
        run([str(bindir() / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"], user=self.user,
            check=False)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_cluster() -> Iterator[TlsCluster]:
    cluster = TlsCluster()
    try:
        yield cluster
    finally:
        cluster.stop()


def with_tls(dsn: str, sslmode: str | None, sslrootcert: str = "") -> Settings:
    return settings_mod.load(None, postgres={"dsn": dsn, "sslmode": sslmode, "sslrootcert": sslrootcert,
                                             "connect_timeout_s": 5})


async def refused(settings: Settings) -> str:
    started = time.monotonic()
    with pytest.raises(pg.PostgresAccessError) as error:
        await pg.connect(settings, give_up_after_s=30)  # a refusal is not retried for 30 s
    assert time.monotonic() - started < 5
    return str(error.value)


async def encrypted(settings: Settings) -> bool:
    conn = await pg.connect(settings, give_up_after_s=10)
    try:
        return await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    finally:
        await conn.close()


async def test_sslmodes_against_a_tls_server(tls_cluster: TlsCluster, tmp_path: Path) -> None:
    ca = str(tls_cluster.ca)
    assert await encrypted(with_tls(tls_cluster.dsn(), "verify-ca", ca))
    assert await encrypted(with_tls(tls_cluster.dsn(), "require"))  # encrypted, the server unverified
    assert await encrypted(with_tls(tls_cluster.dsn(), "prefer"))
    # the certificate names db.meterstream.internal and localhost, not 127.0.0.1: verify-full says no
    said = await refused(with_tls(tls_cluster.dsn(), "verify-full", ca))
    assert "does not name the host" in said and "mismatch" in said
    # and another CA's certificate is not trusted, whatever the name
    foreign, _ = make_ca(tmp_path, "foreign CA")
    assert "not trusted" in await refused(with_tls(tls_cluster.dsn(), "verify-ca", str(foreign)))
    assert "not trusted" in await refused(with_tls(tls_cluster.dsn(), "require", str(foreign)))  # as libpq
    # the server takes TLS logins only: without TLS, its refusal is said (not retried)
    assert "login refused" in await refused(with_tls(tls_cluster.dsn(), "disable"))


async def test_verify_full_by_the_name_of_the_certificate(tls_cluster: TlsCluster) -> None:
    """The same server, reached by a name its certificate holds: verify-full takes it."""
    assert await encrypted(with_tls(tls_cluster.dsn(host="localhost"), "verify-full", str(tls_cluster.ca)))


async def test_a_server_without_tls_is_refused_unless_development(services: Services,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    dsn = services.dsn("postgres")  # the development cluster: no TLS
    assert "does not offer TLS, and postgres.sslmode is require" in await refused(with_tls(dsn, "require"))
    monkeypatch.delenv("MS_DEV")
    assert "does not offer TLS, and postgres.sslmode is verify-full" in await refused(with_tls(dsn, None))
    monkeypatch.setenv("MS_DEV", "1")
    assert await encrypted(with_tls(dsn, None)) is False  # prefer: plaintext, as the server offers


async def test_sync_config_reads_postgres_over_verified_tls(tls_cluster: TlsCluster, ms_topics: Settings,
                                                            tmp_path: Path) -> None:
    """A stage as a process: sync-config publishes a TLS-only Postgres's configuration with
    sslmode=verify-ca and the CA; against the development cluster with verify-full it exits 2
    at once, saying why."""
    import asyncpg

    admin = await asyncpg.connect(tls_cluster.dsn(), ssl="require")
    try:
        await admin.execute("CREATE DATABASE meterstream_tls")
    finally:
        await admin.close()
    settings = with_tls(tls_cluster.dsn("meterstream_tls"), "verify-ca", str(tls_cluster.ca))
    conn = await pg.connect(settings)
    try:
        await migrate(conn)
        await sample.load(conn, ms_topics)
    finally:
        await conn.close()
    env = {"MS_KAFKA__BOOTSTRAP": ms_topics.kafka.bootstrap, "MS_KAFKA__TOPIC_PREFIX": ms_topics.kafka.topic_prefix,
           "MS_POSTGRES__DSN": tls_cluster.dsn("meterstream_tls"), "MS_POSTGRES__SSLMODE": "verify-ca",
           "MS_POSTGRES__SSLROOTCERT": str(tls_cluster.ca)}
    proc = Process(["sync-config"], env, tmp_path / "sync.log").start()
    try:
        deadline = time.monotonic() + 60
        while len(await read_to_end(ms_topics, ms_topics.topic(topics.METER_APIKEYS))) < 4:
            assert proc.running() and time.monotonic() < deadline, (tmp_path / "sync.log").read_text()[-2000:]
            await asyncio.sleep(0.5)
        assert proc.terminate() == 0
    finally:
        if proc.running():
            proc.kill9()
    plain = Process(["sync-config"], {**env, "MS_POSTGRES__DSN": ms_topics_dsn(ms_topics),
                                      "MS_POSTGRES__SSLMODE": "verify-full"}, tmp_path / "refused.log").start()
    assert plain.proc is not None and plain.proc.wait(20) == 2
    said = (tmp_path / "refused.log").read_text()
    assert "postgres refuses this process; exiting" in said and "does not offer TLS" in said


def ms_topics_dsn(_: Settings) -> str:
    """The development cluster (no TLS)."""
    from meterstream.settings import DEV_POSTGRES_PORT

    return f"postgresql://postgres@127.0.0.1:{DEV_POSTGRES_PORT}/postgres"
