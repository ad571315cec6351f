"""Configuration that does not make a valid state, hostile notifications, and foreign keys on
vault.updates: `meterstream vault` and `meterstream sync-config` (real processes, real Kafka
and Postgres) report and skip them and keep serving every other customer; migration 0006
keeps existing rows and refuses new bad ones."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
from pathlib import Path

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from meterstream.dev import sample
from meterstream.dev.processes import Process, meterstream_exe, wait_for
from meterstream.kafka import read_to_end
from meterstream.kafka_clients import client_kwargs
from meterstream.schemas.apikeys import key_hash
from meterstream.schemas.money import CENTS_MAX
from meterstream.settings import Settings
from tests.test_config_sync import eventually, sync_process, view

pytestmark = pytest.mark.services

KEY = base64.b64encode(b"k" * 32).decode()
ACME, GLOBEX, INITECH = 184467441, 907305217, 1299827003
KEYS = {"SacmeSealDemoKey00000000000000001": ACME, "RacmeGrpcDemoKey00000000000000001": ACME,
        "GglobexGqlDemoKey0000000000000001": GLOBEX, "SinitechSealDemoKey00000000000001": INITECH}


async def older_rows_allowed(pg: asyncpg.Connection) -> None:
    """As on a database that held such rows before migration 0006 (whose CHECKs refuse them)."""
    await pg.execute("ALTER TABLE service_instances DROP CONSTRAINT service_instances_rps_in_range")
    await pg.execute("ALTER TABLE customers DROP CONSTRAINT customers_money_in_range")
    await pg.execute("ALTER TABLE seal_keys DROP CONSTRAINT seal_keys_id_not_empty")


async def set_config(pg: asyncpg.Connection, customer: int, service: int, config: str) -> None:
    await pg.execute("UPDATE service_instances SET config = $3::jsonb WHERE customer_id = $1 AND service_type = $2",
                     customer, service, config)


def map_of(path: Path, settings: Settings) -> dict[str, str]:
    """The vault's map file: sample key -> its value."""
    secret = base64.b64decode(settings.keys.key_secret_b64.get_secret_value())
    names = {key_hash(secret, k): k for k in KEYS}
    if not path.exists():
        return {}
    return {names[h]: v for h, v in (line.split(" ", 1) for line in path.read_text().splitlines())}


async def test_vault_leaves_out_bad_rows_dead_letters_foreign_keys_and_ignores_bad_notifications(
    ms_topics: Settings, pg: asyncpg.Connection, pg_dsn: str, tmp_path: Path
) -> None:
    await sample.load(pg, ms_topics)
    await older_rows_allowed(pg)
    await set_config(pg, ACME, 1, '{"guaranteed_rps": -1}')
    await set_config(pg, INITECH, 1, '{"guaranteed_rps": 1.5, "burst_rps": 8000}')
    await pg.execute("INSERT INTO seal_keys (seal_key_id, customer_id) VALUES ('', $1)", GLOBEX)
    # a crossing number beyond bigint in a window label (LimitEvent.window allows 100 characters)
    await pg.execute("""INSERT INTO limit_events (event_id, customer_id, service_type, kind, observed, limit_value,
                                                  window_label, at, region_id)
                        VALUES ('g', $1, 3, 'rate_exceeded', 1, 1, $2, now(), 1)""", GLOBEX, "r1:" + "9" * 90)
    updates = ms_topics.topic("vault.updates")
    producer = AIOKafkaProducer(**client_kwargs(ms_topics.kafka), acks="all")
    await producer.start()
    try:
        foreign = await producer.send_and_wait(updates, b'{"junk": 1}', key=b"not-a-customer")
        await producer.send_and_wait(updates, b'{"junk": 2}', key=b"0042")  # not canonical: not a customer key
    finally:
        await producer.stop()

    map_path = tmp_path / "vault" / "vault.map"
    env = {"MS_KAFKA__BOOTSTRAP": ms_topics.kafka.bootstrap, "MS_KAFKA__TOPIC_PREFIX": ms_topics.kafka.topic_prefix,
           "MS_POSTGRES__DSN": pg_dsn, "MS_VAULT__DIRECTORY": str(tmp_path / "vault"), "MS_VAULT__KEY_B64": KEY,
           "MS_VAULT__INTERVAL_S": "60"}
    vault = Process(["vault"], env, tmp_path / "vault.log").start()
    try:
        wait_for(lambda: len(map_of(map_path, ms_topics)) == 4, 30, "the vault's map")
        assert map_of(map_path, ms_topics) == {
            "SacmeSealDemoKey00000000000000001": f"{ACME},none,0,0,suspended",  # its instance is left out
            "RacmeGrpcDemoKey00000000000000001": f"{ACME},starter,100,0,active",
            "GglobexGqlDemoKey0000000000000001": f"{GLOBEX},starter,100,0,throttled",
            "SinitechSealDemoKey00000000000001": f"{INITECH},none,0,0,suspended"}
        assert vault.metric("meterstream_vault_invalid_rows", 'table="service_instances"') == 2
        assert vault.metric("meterstream_vault_invalid_rows", 'table="seal_keys"') == 1
        log = (tmp_path / "vault.log").read_text()
        assert f'"key": "{ACME}:1"' in log and '"table": "service_instances"' in log and KEY not in log

        # the foreign keys: dead-lettered with their position, then tombstoned
        letters = [orjson.loads(v) for _, v in await read_to_end(ms_topics, ms_topics.topic("haproxy.logs.rejected"))
                   if v is not None]
        assert sorted(d["raw"] for d in letters) == ['{"junk": 1}', '{"junk": 2}']
        first = next(d for d in letters if d["raw"] == '{"junk": 1}')
        assert (first["source"], first["reason"]) == (updates, "invalid_key")
        assert first["position"] == {"stream": f"{updates}:{foreign.partition}", "offset": foreign.offset}
        held = {k: v for k, v in await read_to_end(ms_topics, updates)}
        assert held[b"not-a-customer"] is None and held[b"0042"] is None
        globex = held[str(GLOBEX).encode()]
        assert globex is not None and orjson.loads(globex)["status"] == "throttled"
        assert vault.metric("meterstream_vault_dead_letters_total") == 2

        # notifications any login may send: counted and ignored
        await pg.execute("""NOTIFY meterstream_config, '{"table":"x"}'""")
        await pg.execute("NOTIFY meterstream_vault, 'junk'")
        wait_for(lambda: vault.metric("meterstream_vault_invalid_notifications_total",
                                      'channel="meterstream_vault"', default=0) == 1, 10, "the bad notifications")
        assert vault.metric("meterstream_vault_invalid_notifications_total", 'channel="meterstream_config"') == 1
        # a fixed row comes back at the next (notified) build
        await set_config(pg, ACME, 1, "{}")
        wait_for(lambda: map_of(map_path, ms_topics)["SacmeSealDemoKey00000000000000001"]
                 == f"{ACME},pro,1000,1,active", 10, "the fixed row in the map")
        assert vault.metric("meterstream_vault_invalid_rows", 'table="service_instances"') == 1
        assert vault.running()
    finally:
        assert vault.terminate() == 0
    # a restart finds the foreign keys tombstoned: nothing to report again
    vault.start()
    try:
        wait_for(lambda: vault.metric("meterstream_vault_builds_total", default=0) >= 1, 30, "a build")
        assert vault.metric("meterstream_vault_dead_letters_total") == 0
        assert len(await read_to_end(ms_topics, ms_topics.topic("haproxy.logs.rejected"))) == 2
    finally:
        assert vault.terminate() == 0


async def test_sync_config_skips_bad_rows_and_ignores_bad_notifications(
    ms_topics: Settings, pg: asyncpg.Connection, pg_dsn: str, tmp_path: Path
) -> None:
    await sample.load(pg, ms_topics)
    await older_rows_allowed(pg)
    proc = sync_process(ms_topics, pg_dsn, tmp_path).start()
    try:
        async def published() -> dict:
            instances = await view(ms_topics, "meter.instances")
            assert len(instances) == 5
            return instances
        before = await eventually(published)
        before_customers = await view(ms_topics, "meter.customers")

        # rows turn bad (notified): skipped and reported, the topics keep the last good state
        await set_config(pg, ACME, 1, '{"guaranteed_rps": -1}')
        await set_config(pg, INITECH, 1, '{"guaranteed_rps": 1.5}')
        await pg.execute("UPDATE customers SET balance_cents = $1 WHERE customer_id = $2", CENTS_MAX + 1, GLOBEX)
        wait_for(lambda: proc.metric("meterstream_sync_invalid_rows", 'table="service_instances"') == 2, 10,
                 "the bad instances reported")
        wait_for(lambda: proc.metric("meterstream_sync_invalid_rows", 'table="customers"') == 1, 10,
                 "the bad customer reported")
        await asyncio.sleep(3.5)  # two reconciliations (every 1.5 s): still nothing tombstoned
        assert await view(ms_topics, "meter.instances") == before
        assert await view(ms_topics, "meter.customers") == before_customers

        # notifications any login may send: counted and ignored
        for payload in ('{"table":"x"}', "not json", '{"table":"customers","customer_id":0}',
                        '{"table":"api_keys"}', '{"table":"customers","customer_id":1,"extra":1}'):
            await pg.execute("SELECT pg_notify('meterstream_config', $1)", payload)
        wait_for(lambda: proc.metric("meterstream_sync_invalid_notifications_total") == 5, 10, "bad notifications")
        # a flood of well-formed ones (more than are kept pending): one full comparison instead
        await pg.execute("""SELECT pg_notify('meterstream_config', json_build_object('table', 'customers',
                                             'customer_id', g)::text) FROM generate_series(1, 25000) g""")
        wait_for(lambda: proc.metric("meterstream_sync_notifications_total") >= 25005, 30, "the flood")

        # good changes still flow
        await pg.execute("UPDATE customers SET spend_cap_cents = 50000 WHERE customer_id = $1", ACME)
        await set_config(pg, INITECH, 1, '{"guaranteed_rps": 7000}')

        async def flowed() -> None:
            assert (await view(ms_topics, "meter.customers"))[str(ACME).encode()]["spend_cap_micros"] == 500_000_000
            assert (await view(ms_topics, "meter.instances"))[f"{INITECH}:1".encode()]["guaranteed_rps"] == 7000
        await eventually(flowed, timeout=10)
        assert proc.metric("meterstream_sync_invalid_rows", 'table="service_instances"') == 1
        assert proc.running()
        log = (tmp_path / "sync.log").read_text()
        assert '"table": "customers"' in log and f'"key": "{GLOBEX}"' in log
    finally:
        assert proc.terminate() == 0

    # a start with the bad rows there: the full comparison skips them too
    proc.start()
    try:
        wait_for(lambda: proc.metric("meterstream_sync_invalid_rows", 'table="customers"', default=-1) == 1, 20,
                 "the start-up comparison")
        assert proc.metric("meterstream_sync_invalid_rows", 'table="service_instances"') == 1
        await asyncio.sleep(2)
        assert (await view(ms_topics, "meter.instances"))[f"{ACME}:1".encode()] == before[f"{ACME}:1".encode()]
        assert proc.running()
    finally:
        assert proc.terminate() == 0


async def test_migration_0006_keeps_existing_rows_and_refuses_new_bad_ones(
    empty_pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from meterstream.schemas import migrate as migrate_mod

    conn = await asyncpg.connect(empty_pg_dsn)
    try:
        every = migrate_mod.available()
        monkeypatch.setattr(migrate_mod, "available", lambda: [m for m in every if m.version <= 5])
        await migrate_mod.migrate(conn)
        monkeypatch.undo()
        customer = await conn.fetchval("INSERT INTO customers (name, balance_cents) VALUES ('c', $1) "
                                       "RETURNING customer_id", CENTS_MAX + 1)
        other = await conn.fetchval("INSERT INTO customers (name) VALUES ('d') RETURNING customer_id")
        await conn.execute("INSERT INTO service_instances (customer_id, service_type, tier, config) VALUES "
                           """($1, 1, 'enterprise', '{"guaranteed_rps": -1}'), ($1, 2, 'pro', '{"burst_rps": 1.5}')""",
                           customer)
        await conn.execute("INSERT INTO seal_keys (seal_key_id, customer_id) VALUES ('', $1)", customer)

        # the real command applies 0006
        run = subprocess.run([meterstream_exe(), "migrate"], env={**os.environ, "MS_POSTGRES__DSN": empty_pg_dsn},
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert await conn.fetchval("SELECT max(version) FROM schema_migrations") == every[-1].version
        # existing rows are kept as they were, the constraints stay NOT VALID
        assert await conn.fetchval("SELECT config->>'guaranteed_rps' FROM service_instances "
                                   "WHERE service_type = 1") == "-1"
        assert await conn.fetchval("SELECT balance_cents FROM customers WHERE customer_id = $1",
                                   customer) == CENTS_MAX + 1
        rows = await conn.fetch("SELECT conname, convalidated FROM pg_constraint WHERE conname IN "
                                "('service_instances_rps_in_range', 'customers_money_in_range', "
                                "'seal_keys_id_not_empty')")
        valid = {r["conname"]: r["convalidated"] for r in rows}
        assert valid == {"service_instances_rps_in_range": False, "customers_money_in_range": False,
                         "seal_keys_id_not_empty": False}

        # new bad rows are refused; good ones pass
        for config in ('{"guaranteed_rps": -1}', '{"guaranteed_rps": 1.5}', '{"guaranteed_rps": 2147483648}',
                       '{"guaranteed_rps": null}', '{"burst_rps": "5"}', '{"burst_rps": 1e400}',
                       '{"guaranteed_rps": 20.0}'):
            with pytest.raises(asyncpg.CheckViolationError, match="service_instances_rps_in_range"):
                await conn.execute("INSERT INTO service_instances (customer_id, service_type, tier, config) "
                                   "VALUES ($1, 3, 'pro', $2::jsonb)", other, config)
        for config in ('{"guaranteed_rps": 0}', '{"guaranteed_rps": 2147483647}', '{"burst_rps": 1e3}',
                       '{"guaranteed_rps": 2e1, "note": "x"}'):
            async with conn.transaction():
                await conn.execute("INSERT INTO service_instances (customer_id, service_type, tier, config) "
                                   "VALUES ($1, 3, 'pro', $2::jsonb)", other, config)
                await conn.execute("DELETE FROM service_instances WHERE customer_id = $1", other)
        with pytest.raises(asyncpg.CheckViolationError, match="customers_money_in_range"):
            await conn.execute("UPDATE customers SET committed_charges_cents = $1 WHERE customer_id = $2",
                               CENTS_MAX + 1, other)
        with pytest.raises(asyncpg.CheckViolationError, match="seal_keys_id_not_empty"):
            await conn.execute("INSERT INTO seal_keys (seal_key_id, customer_id) VALUES ('', $1)", other)
        # an operator fixes the rows, then validates (docs/schema.md)
        await conn.execute("""UPDATE service_instances SET config = '{"guaranteed_rps": 10}' WHERE service_type = 1""")
        await conn.execute("UPDATE service_instances SET config = '{}' WHERE service_type = 2")
        await conn.execute("UPDATE customers SET balance_cents = $1 WHERE customer_id = $2", CENTS_MAX, customer)
        await conn.execute("DELETE FROM seal_keys WHERE seal_key_id = ''")
        for table, name in (("service_instances", "service_instances_rps_in_range"),
                            ("customers", "customers_money_in_range"), ("seal_keys", "seal_keys_id_not_empty")):
            await conn.execute(f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}")
    finally:
        await conn.close()


async def test_migration_0006_validates_its_constraints_on_clean_data(pg: asyncpg.Connection) -> None:
    rows = await pg.fetch("SELECT conname, convalidated FROM pg_constraint WHERE conname IN "
                          "('service_instances_rps_in_range', 'customers_money_in_range', 'seal_keys_id_not_empty')")
    assert sorted(tuple(r) for r in rows) == [("customers_money_in_range", True), ("seal_keys_id_not_empty", True),
                                              ("service_instances_rps_in_range", True)]
