"""The closed loop with every real part, shared by tests/test_closed_loop.py and the end-to-end
benchmark: HAProxy running deploy/haproxy/haproxy.cfg logs to a file; `meterstream tail` sends
its lines to Kafka; `meterstream worker` meters them; `meterstream sink-postgres` records the
limit events; `meterstream vault` turns them into HAProxy's map through the Runtime API;
`meterstream sync-config` brings Postgres changes to the worker. See docs/metering.md."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from types import TracebackType

import asyncpg

from meterstream import settings as settings_mod
from meterstream.dev import sample
from meterstream.dev.haproxy import EchoBackend, HAProxy
from meterstream.dev.names import unique
from meterstream.dev.processes import Process, wait_for
from meterstream.kafka import delete_topics_with_prefix, ensure_topics
from meterstream.schemas.apikeys import fingerprint_of_hash, key_hash

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


class ClosedLoop:
    """The loop on topics of its own (a unique prefix) and the migrated database ``pg_dsn``
    (``pg`` a connection to it): the sample customers, acme $0.01 below its $100 spend cap,
    initech at 5 requests a second, hooli the bystander. ``async with`` starts everything
    (HAProxy serving every key, the worker healthy, the bystander's 10 requests a second) and
    stops it all: processes still running are killed, the topics deleted."""

    def __init__(self, bootstrap: str, pg: asyncpg.Connection, pg_dsn: str, workdir: Path) -> None:
        self.pg, self.pg_dsn, self.workdir = pg, pg_dsn, workdir
        self.settings = settings_mod.load(None, kafka={"bootstrap": bootstrap, "topic_prefix": unique("loop") + "."})
        self.backend: EchoBackend | None = None
        self.proxy: HAProxy | None = None
        self.procs: list[Process] = []
        self.bystander: list[int] = []  # the bystander's statuses, in order
        self._stop = asyncio.Event()
        self._background: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ClosedLoop:
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def _start(self) -> None:
        settings, pg, tmp = self.settings, self.pg, self.workdir
        await ensure_topics(settings, partitions=1)  # one partition: the bystander's traffic moves the watermark
        await sample.load(pg, settings)
        assert settings.keys.key_secret_b64 is not None  # development mode: the built-in key
        await add_hooli(pg, base64.b64decode(settings.keys.key_secret_b64.get_secret_value()))
        # acme: $99.99 of a $100 cap committed, so its 100th billable request reaches the cap
        await pg.execute("UPDATE customers SET spend_cap_cents = 10000, committed_charges_cents = 9999 "
                         "WHERE customer_id = $1", ACME)
        # initech: 5 requests per second, no burst
        await pg.execute("""UPDATE service_instances SET config = '{"guaranteed_rps": 5}'
                            WHERE customer_id = $1 AND service_type = 1""", INITECH)

        self.backend = EchoBackend()
        (tmp / "vault").mkdir()
        self.proxy = proxy = HAProxy(tmp, self.backend.port, vault_map=tmp / "vault" / "vault.map").start()
        env = {"MS_KAFKA__BOOTSTRAP": settings.kafka.bootstrap, "MS_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
               "MS_POSTGRES__DSN": self.pg_dsn, "MS_VAULT__DIRECTORY": str(tmp / "vault"),
               "MS_VAULT__KEY_B64": VAULT_KEY, "MS_WORKER__RATE_CLEAR_AFTER_S": "5"}
        self.procs = [
            Process(["sync-config", "--reconcile-interval", "5"], env, tmp / "sync.log"),
            Process(["tail", str(proxy.log), "--checkpoint", str(tmp / "tail.cp")], env, tmp / "tail.log"),
            Process(["worker"], env, tmp / "worker.log"),
            Process(["sink-postgres"], env, tmp / "sink.log"),
            Process(["vault", "--runtime-socket", str(proxy.socket)], env, tmp / "vault.log"),
        ]
        for p in self.procs:
            p.start()
        wait_for(lambda: all(proxy.request(key=k)[0] == 200 for k in (ACME_KEY, INITECH_KEY, HOOLI_KEY)), 30,
                 "the vault's first map in HAProxy")
        wait_for(lambda: self.procs[2].get("/healthz")[0] == 200, 60, "the worker")
        self._background = asyncio.create_task(self._bystander_traffic())

    async def _bystander_traffic(self) -> None:  # 10 requests a second, all the time
        while not self._stop.is_set():
            self.bystander.append(await self.status(HOOLI_KEY))
            await asyncio.sleep(0.1)

    async def status(self, key: str) -> int:
        """HAProxy's status for one request with this key."""
        assert self.proxy is not None
        return (await asyncio.to_thread(self.proxy.request, key=key))[0]

    async def until(self, key: str, expected: int, seconds: float, every: float = 0.05) -> float:
        """Requests with ``key`` until HAProxy answers ``expected``; returns how long it took."""
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            if await self.status(key) == expected:
                return time.monotonic() - started
            await asyncio.sleep(every)
        raise AssertionError(f"HAProxy did not answer {expected} for that key within {seconds}s")

    async def breach(self, within_s: float = 5.0) -> float:
        """acme's 100 billable requests, each served (200): the 100th reaches its spend cap;
        returns the seconds from then to HAProxy's first 403 for acme (at most ``within_s``)."""
        for i in range(100):
            if (code := await self.status(ACME_KEY)) != 200:
                raise AssertionError(f"acme's request {i + 1} of 100 got {code}, not 200")
        cap_reached_at = time.monotonic()
        await self.until(ACME_KEY, 403, within_s)
        return time.monotonic() - cap_reached_at

    async def stop_bystander(self) -> None:
        self._stop.set()
        if self._background is not None:
            await self._background
            self._background = None

    async def close(self) -> None:
        self._stop.set()
        if self._background is not None:
            self._background.cancel()
            await asyncio.gather(self._background, return_exceptions=True)
        for p in self.procs:
            if p.running():
                p.kill9()
        if self.proxy is not None:
            self.proxy.stop()
        if self.backend is not None:
            self.backend.stop()
        await delete_topics_with_prefix(self.settings)
