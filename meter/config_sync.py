"""`meterstream sync-config`: Postgres configuration -> the compacted meter.* topics.

At start it reads back what the topics hold, then publishes the difference with Postgres (a
full snapshot on an empty topic; tombstones for what was deleted meanwhile). After that it
LISTENs to the triggers of migration 0003: a notification names a row, whose current state is
read and published if it differs from what was last published. A periodic reconciliation
pass repeats the full comparison, so a missed notification (or a change made with the
triggers disabled) heals within ``sync.reconcile_interval_s``. A revoked or deleted key is a
tombstone on meter.apikeys (unless another, active key has the same fingerprint).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from meterstream import logs, pg
from meterstream.kafka import read_to_end
from meterstream.meter import metrics
from meterstream.schemas import topics
from meterstream.schemas.config import ApiKeyState, CustomerState, InstanceState
from meterstream.schemas.money import cents_to_micros
from meterstream.schemas.topics import key_of
from meterstream.schemas.wire import encode
from meterstream.service import FailureClock
from meterstream.settings import Settings

log = logs.get(__name__)
CHANNEL = "meterstream_config"
CONFIG_TOPICS = (topics.METER_APIKEYS, topics.METER_INSTANCES, topics.METER_CUSTOMERS)

Slot = tuple[str, bytes]  # (logical topic, key)

_KEYS_SQL = """SELECT DISTINCT ON (api_key_fp) api_key_fp, api_key_hash, customer_id, service_type, status
               FROM api_keys {where} ORDER BY api_key_fp, (status = 'active') DESC"""
_INSTANCES_SQL = "SELECT customer_id, service_type, tier, enabled, config::text AS config FROM service_instances {where}"
_CUSTOMERS_SQL = """SELECT customer_id, status, spend_cap_cents, spend_window, balance_cents,
                           committed_charges_cents FROM customers {where}"""


def _key_state(row: asyncpg.Record) -> tuple[Slot, bytes | None]:
    slot = (topics.METER_APIKEYS, str(row["api_key_fp"]).encode())
    if row["status"] != "active":
        return slot, None
    state = ApiKeyState(api_key_fp=row["api_key_fp"], api_key_hash=row["api_key_hash"].strip(),
                        customer_id=row["customer_id"], service_type=row["service_type"])
    return slot, encode(state)


def _instance_state(row: asyncpg.Record) -> tuple[Slot, bytes]:
    config: dict[str, Any] = orjson.loads(row["config"])
    state = InstanceState(customer_id=row["customer_id"], service_type=row["service_type"], tier=row["tier"],
                          enabled=row["enabled"], guaranteed_rps=config.get("guaranteed_rps"),
                          burst_rps=config.get("burst_rps"))
    return (topics.METER_INSTANCES, key_of(state)), encode(state)


def _customer_state(row: asyncpg.Record) -> tuple[Slot, bytes]:
    state = CustomerState(customer_id=row["customer_id"], status=row["status"],
                          spend_cap_micros=cents_to_micros(row["spend_cap_cents"]),
                          spend_window=row["spend_window"],
                          balance_micros=cents_to_micros(row["balance_cents"]),
                          committed_charges_micros=cents_to_micros(row["committed_charges_cents"]))
    return (topics.METER_CUSTOMERS, key_of(state)), encode(state)


async def desired_state(conn: asyncpg.Connection) -> dict[Slot, bytes | None]:
    """What the three topics should hold, from Postgres (None: a tombstone)."""
    out: dict[Slot, bytes | None] = {}
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        for row in await conn.fetch(_KEYS_SQL.format(where="")):
            slot, value = _key_state(row)
            out[slot] = value
        for row in await conn.fetch(_INSTANCES_SQL.format(where="")):
            slot, value = _instance_state(row)
            out[slot] = value
        for row in await conn.fetch(_CUSTOMERS_SQL.format(where="")):
            slot, value = _customer_state(row)
            out[slot] = value
    return out


async def state_of(conn: asyncpg.Connection, change: dict[str, Any]) -> tuple[Slot, bytes | None]:
    """The current state of the row a notification names (None: it is gone or revoked)."""
    table = change["table"]
    if table == "api_keys":
        row = await conn.fetchrow(_KEYS_SQL.format(where="WHERE api_key_fp = $1"), change["api_key_fp"])
        slot = (topics.METER_APIKEYS, str(change["api_key_fp"]).encode())
        return _key_state(row) if row else (slot, None)
    if table == "service_instances":
        row = await conn.fetchrow(_INSTANCES_SQL.format(where="WHERE customer_id = $1 AND service_type = $2"),
                                  change["customer_id"], change["service_type"])
        slot = (topics.METER_INSTANCES, f"{change['customer_id']}:{change['service_type']}".encode())
        return _instance_state(row) if row else (slot, None)
    row = await conn.fetchrow(_CUSTOMERS_SQL.format(where="WHERE customer_id = $1"), change["customer_id"])
    slot = (topics.METER_CUSTOMERS, str(change["customer_id"]).encode())
    return _customer_state(row) if row else (slot, None)


class ConfigSync:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.published: dict[Slot, bytes | None] = {}
        self.changes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.stop_requested = asyncio.Event()
        self.conn: asyncpg.Connection | None = None
        self.producer: AIOKafkaProducer | None = None
        self.last_reconcile: float | None = None
        self.failure = FailureClock()

    def health(self) -> tuple[bool, dict[str, object]]:
        return self.failure.healthy(), {"failing_s": round(self.failure.seconds(), 1),
            "published": len(self.published),
            "last_reconcile_s": None if self.last_reconcile is None else round(time.monotonic() - self.last_reconcile, 1)}

    # -- Kafka -----------------------------------------------------------------------------
    async def _publish(self, items: list[tuple[Slot, bytes | None]]) -> None:
        """Publish and wait for the acknowledgement of each (idempotent producer, acks=all)."""
        if not items:
            return
        if self.producer is None:
            self.producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka.bootstrap,
                                             client_id=f"{self.settings.kafka.client_id}-sync-config",
                                             acks="all", enable_idempotence=True)
            await asyncio.wait_for(self.producer.start(), self.settings.produce.send_timeout_s)
        futures = [await self.producer.send(self.settings.topic(topic), value, key=key)
                   for (topic, key), value in items]
        await asyncio.wait_for(asyncio.gather(*futures), self.settings.produce.send_timeout_s)
        for (topic, key), value in items:
            self.published[(topic, key)] = value
            (metrics.SYNC_PUBLISHED if value is not None else metrics.SYNC_TOMBSTONES).labels(topic).inc()

    async def _read_published(self) -> None:
        for topic in CONFIG_TOPICS:
            for key, value in await read_to_end(self.settings, self.settings.topic(topic)):
                if key is not None:
                    self.published[(topic, key)] = value

    # -- Postgres ----------------------------------------------------------------------------
    async def _listen(self) -> None:
        self.conn = await pg.connect(self.settings)
        await self.conn.add_listener(CHANNEL, self._on_notify)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        metrics.SYNC_NOTIFICATIONS.inc()
        self.changes.put_nowait(orjson.loads(payload))

    async def reconcile(self) -> int:
        """Publish every difference between Postgres and what was published; returns how many."""
        assert self.conn is not None
        started = time.monotonic()
        desired = await desired_state(self.conn)
        stale = [(slot, None) for slot, value in self.published.items() if value is not None and slot not in desired]
        changed = [(slot, value) for slot, value in desired.items() if self._differs(slot, value)]
        await self._publish(changed + stale)
        metrics.SYNC_RECONCILE_SECONDS.observe(time.monotonic() - started)
        self.last_reconcile = time.monotonic()
        return len(changed) + len(stale)

    async def _apply(self, change: dict[str, Any]) -> None:
        assert self.conn is not None
        slot, value = await state_of(self.conn, change)
        if self._differs(slot, value):
            await self._publish([(slot, value)])

    def _differs(self, slot: Slot, value: bytes | None) -> bool:
        """Whether ``value`` must be published: it is not what the topic holds (a tombstone
        for a key the topic never had is not needed)."""
        if value is None:
            return self.published.get(slot) is not None
        return self.published.get(slot) != value

    async def publish_once(self) -> int:
        """One full comparison and publication, then close (the local run uses it)."""
        try:
            await self._listen()
            await self._read_published()
            return await self.reconcile()
        finally:
            await self._reset()

    # -- the loop ----------------------------------------------------------------------------
    async def run(self) -> None:
        interval = self.settings.sync.reconcile_interval_s
        first = True
        while not self.stop_requested.is_set():
            try:
                if self.conn is None or self.conn.is_closed():
                    await self._listen()  # listening before reading: no change falls between
                    if first:
                        await self._read_published()
                    healed = await self.reconcile()
                    log.info("config published", changes=healed, initial=first)
                    first = False
                elif self.last_reconcile is not None and time.monotonic() - self.last_reconcile >= interval:
                    healed = await self.reconcile()
                    if healed:
                        metrics.SYNC_HEALED.inc(healed)
                        log.warning("reconciliation found changes no notification announced", changes=healed)
                try:
                    change = await asyncio.wait_for(self.changes.get(), 0.5)
                except TimeoutError:
                    continue
                # a burst (a bulk update) names the same rows many times: read each once
                distinct = {orjson.dumps(change, option=orjson.OPT_SORT_KEYS): change}
                while not self.changes.empty():
                    more = self.changes.get_nowait()
                    distinct[orjson.dumps(more, option=orjson.OPT_SORT_KEYS)] = more
                for one in distinct.values():
                    await self._apply(one)
                self.failure.recovered()
            except (*pg.TRANSIENT, KafkaError) as exc:
                self.failure.failed()
                log.warning("config sync failing, retrying", error=f"{type(exc).__name__}: {exc}"[:200])
                await self._reset()
                await asyncio.sleep(1)
        await self._reset()

    async def _reset(self) -> None:
        if self.conn is not None:
            try:
                await asyncio.wait_for(self.conn.close(), 5)
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
            self.conn = None
        if self.producer is not None:
            try:
                await asyncio.wait_for(self.producer.stop(), self.settings.produce.stop_timeout_s)
            except Exception:  # noqa: BLE001
                pass
            self.producer = None

    def request_stop(self) -> None:
        self.stop_requested.set()
