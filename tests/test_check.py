"""`meterstream check [--no-connect] [--for PROCESS]` (meterstream/check.py), the real command
against the real Kafka, Postgres and HAProxy: exit 0 when all is well, a line per problem and
exit 1 otherwise, exit 2 for a configuration that does not load or may not run."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from meterstream import settings as settings_mod
from meterstream.dev.haproxy import EchoBackend, HAProxy
from meterstream.dev.processes import free_port, meterstream_exe
from meterstream.kafka import ensure_topics
from meterstream.settings import DEV_VAULT_KEY_B64, Settings
from tests.conftest import Services, unique

pytestmark = pytest.mark.services

VAULT_KEY = base64.b64encode(os.urandom(32)).decode()


def check(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """As a deployment runs it: not in development mode, no MS_* but those given."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MS_")}
    return subprocess.run([meterstream_exe(), "check", "--timeout", "5", *args], capture_output=True, text=True,
                          timeout=120, env={**clean, **env})


def problems(out: subprocess.CompletedProcess[str]) -> list[str]:
    return [line.removeprefix("problem: ") for line in out.stderr.splitlines() if line.startswith("problem: ")]


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[HAProxy]:
    backend = EchoBackend()
    (tmp_path / "h").mkdir()
    proxy = HAProxy(tmp_path / "h", backend.port).start()
    yield proxy
    proxy.stop()
    backend.stop()


def environment(settings: Settings, dsn: str, tmp_path: Path, sockets: list[str] | None = None) -> dict[str, str]:
    return {"MS_KAFKA__BOOTSTRAP": settings.kafka.bootstrap, "MS_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
            "MS_POSTGRES__DSN": dsn, "MS_VAULT__DIRECTORY": str(tmp_path / "vault"), "MS_VAULT__KEY_B64": VAULT_KEY,
            "MS_VAULT__MAP_MODE": "0640", "MS_VAULT__MAP_GROUP": str(os.getgid()),
            "MS_VAULT__RUNTIME_SOCKETS": orjson.dumps(sockets or []).decode(),
            # production mode, against the local plaintext Postgres (its TLS: tests/test_postgres_tls.py)
            "MS_POSTGRES__SSLMODE": "disable"}


def test_a_good_configuration_passes(ms_topics: Settings, pg_dsn: str, tmp_path: Path, haproxy: HAProxy) -> None:
    out = check(environment(ms_topics, pg_dsn, tmp_path, [str(haproxy.socket)]))
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    ok = out.stdout
    assert "ok: configuration: loads, for tail, syslog, sync-config, worker, sink-postgres, vault" in ok
    assert f"ok: kafka {ms_topics.kafka.bootstrap}: 9 topics, partitions and compaction as expected" in ok
    assert "ok: postgres: every migration applied" in ok
    assert f"ok: vault.map_path: {tmp_path / 'vault' / 'vault.map'} writable (mode 0640, group {os.getgid()})" in ok
    assert f"ok: vault.runtime_sockets: {haproxy.socket} answers" in ok
    assert not (tmp_path / "vault").exists()  # nothing created, nothing left behind


def test_built_in_keys_are_refused_outside_development(ms_topics: Settings, pg_dsn: str, tmp_path: Path) -> None:
    env = {**environment(ms_topics, pg_dsn, tmp_path), "MS_VAULT__KEY_B64": DEV_VAULT_KEY_B64}
    for args in ((), ("--no-connect",)):
        out = check(env, *args)
        assert out.returncode == 2, out.stderr
        assert any(p.startswith("vault.key_b64 holds a built-in development key") for p in problems(out))
        assert DEV_VAULT_KEY_B64 not in out.stdout + out.stderr
    assert check({**env, "MS_DEV": "1"}, "--no-connect").returncode == 0
    # a key the processes checked need, and that is not set: refused too
    out = check({k: v for k, v in env.items() if k != "MS_VAULT__KEY_B64"}, "--no-connect")
    assert out.returncode == 2 and problems(out) == ["vault.key_b64 is not set: this process needs it "
                                                     "(MS_VAULT__KEY_B64; docs/security.md)"]
    # a tailer needs no vault key
    assert check({k: v for k, v in env.items() if k != "MS_VAULT__KEY_B64"}, "--no-connect", "--for", "tail"
                 ).returncode == 0


def test_a_configuration_that_does_not_load(tmp_path: Path) -> None:
    out = check({"MS_VAULT__MAP_MODE": "0644", "MS_HTTP__PORT": "99999"})
    assert out.returncode == 2
    assert sorted(problems(out)) == ["configuration: http.port: Input should be less than or equal to 65535",
                                     "configuration: vault.map_mode: 0o644: the owner reads and writes (0600), the "
                                     "group may read or write (0640, 0660), others get nothing, and nothing is "
                                     "executable"]


async def test_a_missing_topic(ms_topics: Settings, services: Services, pg_dsn: str, tmp_path: Path) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=services.kafka_bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([ms_topics.topic("meter.usage")])
    finally:
        await admin.close()
    out = check(environment(ms_topics, pg_dsn, tmp_path), "--for", "worker")
    assert out.returncode == 1
    assert problems(out) == [f"kafka {ms_topics.kafka.bootstrap}: topic {ms_topics.topic('meter.usage')} does not "
                             "exist (meterstream topics create)"]


async def test_wrong_partitions_and_compaction(services: Services, pg_dsn: str, tmp_path: Path) -> None:
    settings = settings_mod.load(None, kafka={"bootstrap": services.kafka_bootstrap, "topic_prefix": unique("c") + "."})
    admin = AIOKafkaAdminClient(bootstrap_servers=services.kafka_bootstrap)
    await admin.start()
    resolved, customers = settings.topic("meter.resolved"), settings.topic("meter.customers")
    changelog = f"{settings.kafka.topic_prefix}{settings.worker.app_id}-usage-changelog"
    created = [resolved, customers, changelog]
    try:
        await admin.create_topics([NewTopic(resolved, 3, 1), NewTopic(customers, 2, 1),  # not compacted
                                   NewTopic(changelog, 4, 1, topic_configs={"cleanup.policy": "compact"})])
        created += await ensure_topics(settings, partitions=2)
        out = check(environment(settings, pg_dsn, tmp_path), "--for", "worker")
        assert out.returncode == 1
        where = f"kafka {services.kafka_bootstrap}"
        logs = settings.topic("haproxy.logs")
        assert sorted(problems(out)) == sorted([
            f"{where}: {logs} has 2 partitions and {resolved} 3: the worker needs the same number (docs/metering.md)",
            f"{where}: the worker's table {changelog} has 4 partitions and {logs} 2: the worker cannot start on them",
            f"{where}: topic {customers} has cleanup.policy=delete, it must be compacted (compact)",
        ])
    finally:
        await admin.delete_topics(created)
        await admin.close()


async def test_unapplied_migrations(ms_topics: Settings, pg_dsn: str, empty_pg_dsn: str, tmp_path: Path) -> None:
    out = check(environment(ms_topics, empty_pg_dsn, tmp_path), "--for", "sink-postgres")
    assert out.returncode == 1
    (line,) = problems(out)
    assert line.startswith("postgres: migrations not applied: 0001_core, 0002_timescale, ")
    assert line.endswith(" (meterstream migrate)")
    conn = await asyncpg.connect(pg_dsn)
    try:
        latest = await conn.fetchrow("DELETE FROM schema_migrations WHERE version = (SELECT max(version) FROM "
                                     "schema_migrations) RETURNING version, name")
        await conn.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, 'future', $1)",
                           "0" * 64)
    finally:
        await conn.close()
    out = check(environment(ms_topics, pg_dsn, tmp_path), "--for", "sync-config")
    assert out.returncode == 1
    assert problems(out) == [
        f"postgres: migrations not applied: {latest['version']:04d}_{latest['name']} (meterstream migrate)",
        "postgres: the database has migrations this version does not know: 9999_future"]


def test_an_unwritable_map_path(ms_topics: Settings, pg_dsn: str, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    env = {**environment(ms_topics, pg_dsn, tmp_path), "MS_VAULT__MAP_PATH": str(tmp_path / "a-file" / "vault.map")}
    out = check(env, "--for", "vault")
    assert out.returncode == 1
    assert problems(out) == [f"vault.map_path: cannot write the map {tmp_path / 'a-file' / 'vault.map'}: "
                             f"{tmp_path / 'a-file'} is not a directory"]
    out = check({**env, "MS_VAULT__MAP_GROUP": "no-such-group-here"}, "--for", "vault")
    assert out.returncode == 2 and problems(out) == ["vault.map_group: no group named no-such-group-here on this host"]


def test_a_dead_runtime_api_socket(ms_topics: Settings, pg_dsn: str, tmp_path: Path, haproxy: HAProxy) -> None:
    stale = tmp_path / "stale.sock"  # a socket file nobody listens on any more
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))
    port = free_port()
    env = environment(ms_topics, pg_dsn, tmp_path, [str(haproxy.socket), str(stale), f"127.0.0.1:{port}"])
    out = check(env, "--for", "vault")
    assert out.returncode == 1
    found = problems(out)
    assert [p.split(": ", 2)[1] for p in found] == [f"{stale} does not answer", f"127.0.0.1:{port} does not answer"]
    assert all("ConnectionRefusedError" in p for p in found)
    assert f"ok: vault.runtime_sockets: {haproxy.socket} answers" in out.stdout


def test_scoped_and_offline_checks(ms_topics: Settings, tmp_path: Path) -> None:
    dead = f"postgresql://app:secret-pw@127.0.0.1:{free_port()}/x"
    env = environment(ms_topics, dead, tmp_path)
    out = check(env, "--for", "tail")  # a tailer needs Kafka only
    assert out.returncode == 0, out.stderr
    out = check(env, "--for", "sink-postgres")
    assert out.returncode == 1
    assert [p.split(":")[0] for p in problems(out)] == ["postgres"] and "cannot connect" in out.stderr
    assert "secret-pw" not in out.stdout + out.stderr
    env["MS_KAFKA__BOOTSTRAP"] = f"127.0.0.1:{free_port()}"
    out = check(env, "--for", "tail")
    assert out.returncode == 1 and "cannot connect" in problems(out)[0]
    assert check(env, "--no-connect").returncode == 0  # the configuration alone is fine
