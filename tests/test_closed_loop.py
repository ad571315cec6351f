"""The closed loop (issue 6) with every real part: HAProxy running deploy/haproxy/haproxy.cfg
logs to a file; `meterstream tail` sends its lines to Kafka; `meterstream worker` meters them;
`meterstream sink-postgres` records the limit events; `meterstream vault` turns them into
HAProxy's map through the Runtime API; `meterstream sync-config` brings Postgres changes to
the worker. A customer at its spend cap is refused (403) within 5 s while another keeps
getting 200; raising the cap lets it back in; a customer over its rate gets 429 while
throttled and 200 once it has cleared."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path

import asyncpg
import pytest

from meterstream.dev import sample
from meterstream import settings as settings_mod
from meterstream.kafka import delete_topics_with_prefix, ensure_topics
from meterstream.schemas.apikeys import fingerprint_of_hash, key_hash
from tests.conftest import Services, unique
from tests.helpers import EchoBackend, HAProxy, Process, wait_for

pytestmark = [pytest.mark.services, pytest.mark.slow]

ACME, INITECH, HOOLI = 184467441, 1299827003, 555001
ACME_KEY = "SacmeSealDemoKey00000000000000001"
INITECH_KEY = "SinitechSealDemoKey00000000000001"
HOOLI_KEY = "ShooliSealKey0000000000000000001"
VAULT_KEY = base64.b64encode(b"v" * 32).decode()


async def add_hooli(pg: asyncpg.Connection, secret: bytes) -> None:
    """A third customer on the seal service (this HAProxy serves seal), the bystander."""
    digest = key_hash(secret, HOOLI_KEY)
    await pg.execute("INSERT INTO customers (customer_id, name, balance_cents) VALUES ($1, 'Hooli', 10000000)", HOOLI)
    await pg.execute("INSERT INTO service_instances (customer_id, service_type, tier) VALUES ($1, 1, 'starter')", HOOLI)
    await pg.execute("INSERT INTO api_keys (api_key_id, api_key_hash, api_key_fp, customer_id, service_type) "
                     "VALUES ('hooli-key', $1, $2, $3, 1)", digest, fingerprint_of_hash(digest), HOOLI)


async def test_closed_loop_through_haproxy(services: Services, pg_dsn: str, pg: asyncpg.Connection,
                                           tmp_path: Path) -> None:
    settings = settings_mod.load(None, kafka={"bootstrap": services.kafka_bootstrap,
                                              "topic_prefix": unique("loop") + "."})
    await ensure_topics(settings, partitions=1)  # one partition: the bystander's traffic moves the watermark
    await sample.load(pg, settings)
    await add_hooli(pg, base64.b64decode(settings.keys.key_secret_b64.get_secret_value()))
    # acme: $99.99 of a $100 cap committed, so its 100th billable request reaches the cap
    await pg.execute("UPDATE customers SET spend_cap_cents = 10000, committed_charges_cents = 9999 "
                     "WHERE customer_id = $1", ACME)
    # initech: 5 requests per second, no burst
    await pg.execute("""UPDATE service_instances SET config = '{"guaranteed_rps": 5}'
                        WHERE customer_id = $1 AND service_type = 1""", INITECH)

    backend = EchoBackend()
    (tmp_path / "vault").mkdir()
    proxy = HAProxy(tmp_path, backend.port, vault_map=tmp_path / "vault" / "vault.map").start()
    env = {"MS_KAFKA__BOOTSTRAP": settings.kafka.bootstrap, "MS_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
           "MS_POSTGRES__DSN": pg_dsn, "MS_VAULT__DIRECTORY": str(tmp_path / "vault"),
           "MS_VAULT__KEY_B64": VAULT_KEY, "MS_WORKER__RATE_CLEAR_AFTER_S": "5"}
    procs = [
        Process(["sync-config", "--reconcile-interval", "5"], env, tmp_path / "sync.log"),
        Process(["tail", str(proxy.log), "--checkpoint", str(tmp_path / "tail.cp")], env, tmp_path / "tail.log"),
        Process(["worker"], env, tmp_path / "worker.log"),
        Process(["sink-postgres"], env, tmp_path / "sink.log"),
        Process(["vault", "--runtime-socket", str(proxy.socket)], env, tmp_path / "vault.log"),
    ]
    bystander: list[int] = []
    stop = asyncio.Event()

    async def bystander_traffic() -> None:  # 10 requests a second, all the time
        while not stop.is_set():
            bystander.append((await asyncio.to_thread(proxy.request, key=HOOLI_KEY))[0])
            await asyncio.sleep(0.1)

    async def until(key: str, expected: int, seconds: float, every: float = 0.05) -> float:
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            if (await asyncio.to_thread(proxy.request, key=key))[0] == expected:
                return time.monotonic() - started
            await asyncio.sleep(every)
        raise AssertionError(f"HAProxy did not answer {expected} for that key within {seconds}s")

    try:
        for p in procs:
            p.start()
        wait_for(lambda: all(proxy.request(key=k)[0] == 200 for k in (ACME_KEY, INITECH_KEY, HOOLI_KEY)), 30,
                 "the vault's first map in HAProxy")
        wait_for(lambda: procs[2].get("/healthz")[0] == 200, 60, "the worker")
        background = asyncio.create_task(bystander_traffic())

        # -- spend: the 100th billable request reaches the cap; 403 follows within 5 s --------
        for _ in range(100):
            assert (await asyncio.to_thread(proxy.request, key=ACME_KEY))[0] == 200
        cap_reached_at = time.monotonic()
        await until(ACME_KEY, 403, 5.0)
        breach_to_403 = time.monotonic() - cap_reached_at
        print(f"breach -> first 403: {breach_to_403:.2f} s")
        assert breach_to_403 <= 5.0
        assert bystander and bystander[-1] == 200

        # -- raising the cap in Postgres lets the customer back in ---------------------------
        await pg.execute("UPDATE customers SET spend_cap_cents = 20000 WHERE customer_id = $1", ACME)
        await until(ACME_KEY, 200, 20.0, every=0.2)

        # -- rate: over 5 rps for more than 3 s -> 429 while throttled, 200 once cleared ---------
        started = time.monotonic()
        throttled = False
        while time.monotonic() - started < 20 and not throttled:
            throttled = (await asyncio.to_thread(proxy.request, key=INITECH_KEY))[0] == 429
            await asyncio.sleep(0.02)  # ~40 requests a second
        assert throttled, "no 429 after 20 s at ~8x the rate"
        assert (await asyncio.to_thread(proxy.request, key=INITECH_KEY))[0] == 429
        # its client keeps retrying at ~8x the rate: HAProxy refuses those (429), they are not
        # served, so the breach clears (5 s here) while it retries (SPEC §6), and the customer is
        # served again; served over the rate once more, it is throttled once more
        answers: list[int] = []
        started = time.monotonic()
        while time.monotonic() - started < 40 and not (200 in answers and answers[-1] == 429):
            answers.append((await asyncio.to_thread(proxy.request, key=INITECH_KEY))[0])
            await asyncio.sleep(0.02)
        assert 200 in answers, "never cleared while its client kept retrying"
        assert answers[-1] == 429, "not throttled again when served over the rate"
        await until(INITECH_KEY, 200, 30.0, every=0.5)  # 2 requests a second: under the rate

        stop.set()
        await background
        assert set(bystander) == {200}, "the bystander was refused"
        events = {r["kind"] for r in await pg.fetch("SELECT kind FROM limit_events WHERE customer_id IN ($1, $2)",
                                                    ACME, INITECH)}
        assert {"spend_warning", "spend_cap_reached", "spend_cleared", "rate_exceeded", "rate_cleared"} <= events
        assert proxy.proc is not None and proxy.proc.poll() is None  # never reloaded
        for p in reversed(procs):
            assert p.terminate() == 0, p.args
    finally:
        stop.set()
        for p in procs:
            if p.running():
                p.kill9()
        proxy.stop()
        backend.stop()
        await delete_topics_with_prefix(settings)
