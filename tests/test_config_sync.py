"""`meterstream sync-config`: Postgres -> meter.apikeys / meter.instances / meter.customers."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path

import asyncpg
import orjson
import pytest

from meterstream.dev import sample
from meterstream.dev.processes import Process
from meterstream.kafka import read_to_end
from meterstream.schemas.apikeys import fingerprint_of_hash, key_hash
from meterstream.settings import Settings

pytestmark = pytest.mark.services


async def view(settings: Settings, topic: str) -> dict[bytes, dict | None]:
    """The topic as compaction will leave it: the last value of each key."""
    out: dict[bytes, dict | None] = {}
    for key, value in await read_to_end(settings, settings.topic(topic)):
        out[key] = None if value is None else orjson.loads(value)
    return out


async def eventually(check, timeout: float = 15.0):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


def sync_process(settings: Settings, dsn: str, tmp_path: Path) -> Process:
    return Process(["sync-config", "--reconcile-interval", "1.5"],
                   {"MS_KAFKA__BOOTSTRAP": settings.kafka.bootstrap,
                    "MS_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix, "MS_POSTGRES__DSN": dsn},
                   tmp_path / "sync.log")


async def test_snapshot_changes_tombstones_and_healing(
    ms_topics: Settings, pg_dsn: str, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    await sample.load(pg, ms_topics)
    secret = base64.b64decode(ms_topics.keys.key_secret_b64.get_secret_value())
    proc = sync_process(ms_topics, pg_dsn, tmp_path).start()
    try:
        async def snapshot() -> None:
            keys = await view(ms_topics, "meter.apikeys")
            assert len(keys) == 4 and all(v is not None for v in keys.values())  # 4 active keys
            assert len(await view(ms_topics, "meter.instances")) == 5
            customers = await view(ms_topics, "meter.customers")
            assert customers[b"907305217"] == {
                "v": 1, "customer_id": 907305217, "status": "active", "spend_cap_micros": 100_000_000,
                "spend_window": "calendar_month", "balance_micros": 25_000_000, "committed_charges_micros": 90_000_000}
        await eventually(snapshot)
        acme_seal = fingerprint_of_hash(key_hash(secret, "SacmeSealDemoKey00000000000000001"))
        keys = await view(ms_topics, "meter.apikeys")
        assert keys[str(acme_seal).encode()]["customer_id"] == 184467441
        initech = (await view(ms_topics, "meter.instances"))[b"1299827003:1"]
        assert (initech["tier"], initech["guaranteed_rps"], initech["burst_rps"]) == ("enterprise", 5000, 8000)

        # changes as they happen
        await pg.execute("UPDATE customers SET spend_cap_cents = 50000 WHERE customer_id = 907305217")
        await pg.execute("UPDATE api_keys SET status = 'revoked', revoked_at = now() WHERE api_key_fp = $1", acme_seal)
        await pg.execute("DELETE FROM service_instances WHERE customer_id = 184467441 AND service_type = 2")

        async def changed() -> None:
            assert (await view(ms_topics, "meter.customers"))[b"907305217"]["spend_cap_micros"] == 500_000_000
            assert (await view(ms_topics, "meter.apikeys"))[str(acme_seal).encode()] is None  # tombstone
            assert (await view(ms_topics, "meter.instances"))[b"184467441:2"] is None
        await eventually(changed, timeout=5)
        # published by the notifications, not by a reconciliation pass
        assert proc.metric("meterstream_sync_reconcile_healed_total") == 0

        # a change no notification announces heals at the next reconciliation
        await pg.execute("ALTER TABLE customers DISABLE TRIGGER customers_notify_config")
        await pg.execute("UPDATE customers SET balance_cents = 777 WHERE customer_id = 907305217")
        await pg.execute("ALTER TABLE customers ENABLE TRIGGER customers_notify_config")

        async def healed() -> None:
            assert (await view(ms_topics, "meter.customers"))[b"907305217"]["balance_micros"] == 7_770_000
        await eventually(healed)
        assert proc.metric("meterstream_sync_reconcile_healed_total") >= 1
        assert proc.metric("meterstream_sync_notifications_total") >= 3
    finally:
        assert proc.terminate() == 0

    # deleted while sync-config was down: a tombstone at the next start
    await pg.execute("DELETE FROM service_instances WHERE customer_id = 1299827003 AND service_type = 2")
    before = len(await read_to_end(ms_topics, ms_topics.topic("meter.customers")))
    proc.start()
    try:
        async def tombstoned() -> None:
            assert (await view(ms_topics, "meter.instances"))[b"1299827003:2"] is None
        await eventually(tombstoned)
        # a restart with nothing changed republishes nothing
        assert len(await read_to_end(ms_topics, ms_topics.topic("meter.customers"))) == before
    finally:
        assert proc.terminate() == 0
