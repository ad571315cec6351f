"""The vault (sinks/vault*.py): status rules, versions, the map file, decryption, vault.updates
and the live HAProxy update through the Runtime API."""

from __future__ import annotations

import asyncio
import base64
import os
import stat
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import orjson
import pytest

from meterstream.crypto import DecryptError
from meterstream.dev import sample
from meterstream.dev.haproxy import EchoBackend, HAProxy
from meterstream.dev.processes import Process, meterstream_exe, wait_for
from meterstream.kafka import read_to_end
from meterstream.schemas.enums import LimitKind, Tier, VaultStatus
from meterstream.schemas.vault import ServiceEntry, VaultEntry
from meterstream.settings import Settings
from meterstream.sinks.vault_state import build, map_value, status_of
from meterstream.sinks.vault_store import VaultStore, canonical, content_hash, write_atomically

KEY = base64.b64encode(b"k" * 32).decode()
ACME, GLOBEX, INITECH = 184467441, 907305217, 1299827003
ACME_SEAL_KEY = "SacmeSealDemoKey00000000000000001"


# -- pure rules ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("customer", "open_kinds", "expected"), [
    ("active", set(), VaultStatus.ACTIVE),
    ("suspended", set(), VaultStatus.SUSPENDED),
    ("closed", set(), VaultStatus.SUSPENDED),
    ("active", {LimitKind.SPEND_CAP_REACHED}, VaultStatus.SUSPENDED),
    ("active", {LimitKind.BALANCE_EXHAUSTED}, VaultStatus.SUSPENDED),
    ("active", {LimitKind.RATE_EXCEEDED}, VaultStatus.THROTTLED),
    ("active", {LimitKind.RATE_EXCEEDED, LimitKind.SPEND_CAP_REACHED}, VaultStatus.SUSPENDED),
])
def test_status_rule(customer: str, open_kinds: set, expected: VaultStatus) -> None:
    assert status_of(customer, open_kinds) is expected


def test_map_values() -> None:
    pro = ServiceEntry(tier=Tier.PRO, guaranteed_rps=1000, burst_rps=2000)
    starter = ServiceEntry(tier=Tier.STARTER, guaranteed_rps=100)
    assert map_value(7, pro, VaultStatus.THROTTLED) == "7,pro,1000,1,throttled"
    assert map_value(7, starter, VaultStatus.ACTIVE) == "7,starter,100,0,active"
    assert map_value(7, None, VaultStatus.ACTIVE) == "7,none,0,0,suspended"  # no such service
    disabled = ServiceEntry(tier=Tier.PRO, guaranteed_rps=1000, burst_rps=2000, enabled=False)
    assert map_value(7, disabled, VaultStatus.ACTIVE) == "7,pro,1000,1,suspended"


def test_content_hash_is_canonical() -> None:
    a = VaultEntry(customer_id=1, api_keys=["a" * 64], status=VaultStatus.ACTIVE)
    b = VaultEntry(customer_id=2, services={"seal": ServiceEntry(tier=Tier.STARTER, guaranteed_rps=100)})
    assert canonical([a, b]) == canonical([a, b])
    suspended = b.model_copy(update={"status": VaultStatus.SUSPENDED})
    assert content_hash(canonical([a, b])) != content_hash(canonical([a, suspended]))
    assert orjson.loads(canonical([a]))["customer:1"]["api_keys"] == ["a" * 64]


def test_files_are_written_whole_and_private(tmp_path: Path) -> None:
    os.umask(0o022)
    target = tmp_path / "vault.map"
    versions = [(b"%d " % i) * 20_000 + b"\n" for i in range(50)]
    seen: set[bytes] = set()
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            try:
                seen.add(target.read_bytes())
            except FileNotFoundError:
                pass

    thread = threading.Thread(target=reader)
    thread.start()
    for content in versions:
        write_atomically(target, content)
    done.set()
    thread.join()
    assert seen and seen <= set(versions)  # never a half-written file
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert not list(tmp_path.glob(".*.tmp"))


def test_decrypt_refuses_a_wrong_key_or_a_renamed_file(tmp_path: Path) -> None:
    store = VaultStore(tmp_path, KEY)
    sealed = store.sealer.seal(b'{"x":1}', b"meterstream-vault:3")
    path = store.path_of(3)
    path.write_bytes(sealed)
    assert store.decrypt(path) == b'{"x":1}'
    with pytest.raises(DecryptError, match="wrong vault key"):
        VaultStore(tmp_path, base64.b64encode(b"w" * 32).decode()).decrypt(path)
    renamed = store.path_of(4)
    path.rename(renamed)
    with pytest.raises(DecryptError, match="renamed"):
        store.decrypt(renamed)


# -- against Postgres -------------------------------------------------------------------------
async def add_event(pg: asyncpg.Connection, customer: int, kind: LimitKind, window: str, at_s: int,
                    service: int | None = None, region: int | None = None) -> None:
    await pg.execute(
        """INSERT INTO limit_events (event_id, customer_id, service_type, kind, observed, limit_value,
                                     window_label, at, region_id)
           VALUES ($1, $2, $3, $4, 1, 1, $5, $6, $7)""",
        f"{customer}:{service or '-'}:{kind.value}:{window}", customer, service, kind.value, window,
        datetime.fromtimestamp(at_s, UTC), region)


@pytest.mark.services
async def test_state_versions_and_decrypt(pg: asyncpg.Connection, settings_for, pg_dsn: str,
                                          tmp_path: Path) -> None:  # noqa: ANN001
    settings = settings_for(pg_dsn)
    await sample.load(pg, settings)
    state = await build(pg)
    by_id = {e.customer_id: e for e in state.entries}
    assert set(by_id) == {ACME, GLOBEX, INITECH}
    acme = by_id[ACME]
    assert len(acme.api_keys) == 2  # the revoked key is not there
    assert acme.services["seal"].tier is Tier.PRO and acme.services["seal"].burst_rps == 2000
    assert [(s.id, s.package_ids) for s in acme.seal_keys] == [("0xacme01", ["0xpkg0a", "0xpkg0b"])]
    assert by_id[INITECH].services["seal"].guaranteed_rps == 5000
    assert all(e.status is VaultStatus.ACTIVE for e in state.entries)
    assert len(state.map_lines) == 4

    store = VaultStore(tmp_path / "v", KEY)
    assert await store.write_version(pg, state.entries) == 1
    assert await store.write_version(pg, (await build(pg)).entries) is None  # same content: no version

    await add_event(pg, ACME, LimitKind.SPEND_CAP_REACHED, "rolling_30d:1", 1000)
    await add_event(pg, GLOBEX, LimitKind.RATE_EXCEEDED, "r1:900", 900, service=3, region=1)
    state = await build(pg)
    statuses = {e.customer_id: e.status for e in state.entries}
    assert statuses == {ACME: VaultStatus.SUSPENDED, GLOBEX: VaultStatus.THROTTLED, INITECH: VaultStatus.ACTIVE}
    assert await store.write_version(pg, state.entries) == 2
    row = await pg.fetchrow("SELECT * FROM vault_versions WHERE version = 2")
    content = store.decrypt(Path(row["path"]))
    assert content_hash(content) == row["content_hash"].strip() and row["customer_count"] == 3
    assert orjson.loads(content)[f"customer:{ACME}"]["status"] == "suspended"
    assert stat.S_IMODE(Path(row["path"]).stat().st_mode) == 0o600

    # a later clearance reopens; a crossing and its clearance at the same instant: cleared
    await add_event(pg, ACME, LimitKind.SPEND_CLEARED, "rolling_30d:1", 1000)
    await add_event(pg, GLOBEX, LimitKind.RATE_CLEARED, "r1:960", 960, service=3, region=1)
    assert all(e.status is VaultStatus.ACTIVE for e in (await build(pg)).entries)
    await add_event(pg, ACME, LimitKind.SPEND_CAP_REACHED, "rolling_30d:2", 1000)
    assert {e.customer_id: e.status for e in (await build(pg)).entries}[ACME] is VaultStatus.SUSPENDED

    # the operator's command
    env = {**os.environ, "MS_VAULT__KEY_B64": KEY}
    out = subprocess.run([meterstream_exe(), "vault", "decrypt", row["path"]], env=env, capture_output=True,
                         text=True, check=True)
    assert orjson.loads(out.stdout) == orjson.loads(content)
    wrong = subprocess.run([meterstream_exe(), "vault", "decrypt", row["path"]], capture_output=True, text=True,
                           env={**os.environ, "MS_VAULT__KEY_B64": base64.b64encode(b"z" * 32).decode()})
    assert wrong.returncode == 1 and "wrong vault key" in wrong.stderr and KEY not in wrong.stderr


@pytest.mark.services
async def test_vault_process_drives_haproxy_live(ms_topics: Settings, pg: asyncpg.Connection, pg_dsn: str,
                                                 tmp_path: Path) -> None:
    await sample.load(pg, ms_topics)
    backend = EchoBackend()
    (tmp_path / "vault").mkdir()
    proxy = HAProxy(tmp_path, backend.port, vault_map=tmp_path / "vault" / "vault.map").start()
    env = {"MS_KAFKA__BOOTSTRAP": ms_topics.kafka.bootstrap, "MS_KAFKA__TOPIC_PREFIX": ms_topics.kafka.topic_prefix,
           "MS_POSTGRES__DSN": pg_dsn, "MS_VAULT__DIRECTORY": str(tmp_path / "vault"), "MS_VAULT__KEY_B64": KEY,
           "MS_VAULT__INTERVAL_S": "60"}
    vault = Process(["vault", "--runtime-socket", str(proxy.socket)], env, tmp_path / "vault.log")
    try:
        assert proxy.request(key=ACME_SEAL_KEY)[0] == 401  # an empty map: unknown key
        vault.start()
        wait_for(lambda: proxy.request(key=ACME_SEAL_KEY)[0] == 200, 20, "the vault's map in HAProxy")
        assert stat.S_IMODE(proxy.vault_map.stat().st_mode) == 0o600

        async def answer_within(expected: int, seconds: float) -> float:
            started = time.monotonic()
            while time.monotonic() - started < seconds:
                if proxy.request(key=ACME_SEAL_KEY)[0] == expected:
                    return time.monotonic() - started
                await asyncio.sleep(0.05)
            raise AssertionError(f"HAProxy did not answer {expected} within {seconds}s")

        await add_event(pg, ACME, LimitKind.SPEND_CAP_REACHED, "rolling_30d:1", 1000)
        await answer_within(403, 5)
        globex = "GglobexGqlDemoKey0000000000000001"
        assert proxy.request(key=globex)[0] == 200  # another customer is not affected
        await add_event(pg, ACME, LimitKind.SPEND_CLEARED, "rolling_30d:1", 2000)
        await answer_within(200, 5)
        await add_event(pg, ACME, LimitKind.RATE_EXCEEDED, "r1:3000", 3000, service=1, region=1)
        await answer_within(429, 5)
        # no reload happened: the same HAProxy process, the map changed through the socket
        assert proxy.proc is not None and proxy.proc.poll() is None
        assert vault.metric("meterstream_vault_runtime_updates_total", 'outcome="ok"') >= 4
        versions = await pg.fetchval("SELECT count(*) FROM vault_versions")
        assert versions >= 4
        updates = {k: orjson.loads(v) for k, v in await read_to_end(ms_topics, ms_topics.topic("vault.updates"))
                   if v is not None}
        assert updates[str(ACME).encode()]["status"] == "throttled"
        assert vault.terminate() == 0
        assert KEY not in (tmp_path / "vault.log").read_text()
    finally:
        if vault.running():
            vault.kill9()
        proxy.stop()
        backend.stop()
