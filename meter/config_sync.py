"""`meterstream sync-config`: Postgres configuration -> the compacted meter.* topics.

At start it reads back what the topics hold, then publishes the difference with Postgres (a
full snapshot on an empty topic; tombstones for what was deleted meanwhile). After that it
LISTENs to the triggers of migration 0003: a notification names a row, whose current state is
read and published if it differs from what was last published. A periodic reconciliation
pass repeats the full comparison, so a missed notification (or a change made with the
triggers disabled) heals within ``sync.reconcile_interval_s``. A revoked or deleted key is a
tombstone on meter.apikeys (unless another, active key has the same fingerprint).

Nothing read here stops the process: a row that makes no valid state (a ``guaranteed_rps`` of
-1, money beyond int64 micro-dollars) is skipped, logged with its table and key and counted
in ``meterstream_sync_invalid_rows``, and what its topic holds stays as it was; a notification
payload that names no row of ours (schemas/notifications.py) is counted and ignored.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Gauge

from meterstream import logs, pg
from meterstream.kafka import read_to_end
from meterstream.kafka_clients import client_kwargs
from meterstream.meter import metrics
from meterstream.pg import Row
from meterstream.schemas import topics
from meterstream.schemas.config import ApiKeyState, CustomerState, InstanceState
from meterstream.schemas.money import cents_to_micros
from meterstream.schemas.notifications import (
    CONFIG_CHANNEL,
    ApiKeyChanged,
    CustomerChanged,
    InstanceChanged,
    config_change,
)
from meterstream.schemas.tiers import instance_config
from meterstream.schemas.wire import WireError, encode, validate
from meterstream.service import FailureClock
from meterstream.settings import Settings

log = logs.get(__name__)
CHANNEL = CONFIG_CHANNEL
CONFIG_TOPICS = (topics.METER_APIKEYS, topics.METER_INSTANCES, topics.METER_CUSTOMERS)
# distinct rows named by notifications and not yet read; beyond it, one full comparison
# replaces them (memory stays bounded whatever a login NOTIFYs)
MAX_PENDING_CHANGES = 10_000
BAD_NOTIFICATION_LOG_S = 10.0  # at most one log line this often about ignored notifications

INVALID_ROWS = Gauge("meterstream_sync_invalid_rows",
                     "Configuration rows skipped because they do not make a valid state (logged with "
                     "their table and key); what the topic holds for them is left as it was", ["table"])
INVALID_NOTIFICATIONS = Counter("meterstream_sync_invalid_notifications_total",
                                "meterstream_config notifications whose payload names no row of ours (ignored)")

Slot = tuple[str, bytes]  # (logical topic, key)
Change = ApiKeyChanged | InstanceChanged | CustomerChanged

_KEYS_SQL = """SELECT DISTINCT ON (api_key_fp) api_key_fp, api_key_hash, customer_id, service_type, status
               FROM api_keys {where} ORDER BY api_key_fp, (status = 'active') DESC"""
_INSTANCES_SQL = ("SELECT customer_id, service_type, tier, enabled, config::text AS config "
                  "FROM service_instances {where}")
_CUSTOMERS_SQL = """SELECT customer_id, status, spend_cap_cents, spend_window, balance_cents,
                           committed_charges_cents FROM customers {where}"""


# -- a row -> the value its topic should hold (WireError: the row makes no valid state) --------
def key_state(row: Row) -> bytes | None:
    """meter.apikeys: the active key with this fingerprint, or a tombstone."""
    if row["status"] != "active":
        return None
    return encode(validate(ApiKeyState, {
        "api_key_fp": row["api_key_fp"], "api_key_hash": row["api_key_hash"].strip(),
        "customer_id": row["customer_id"], "service_type": row["service_type"]}))


def instance_state(row: Row) -> bytes:
    config = instance_config(row["config"])
    return encode(validate(InstanceState, {
        "customer_id": row["customer_id"], "service_type": row["service_type"], "tier": row["tier"],
        "enabled": row["enabled"], "guaranteed_rps": config.guaranteed_rps, "burst_rps": config.burst_rps}))


def customer_state(row: Row) -> bytes:
    return encode(validate(CustomerState, {
        "customer_id": row["customer_id"], "status": row["status"],
        "spend_cap_micros": cents_to_micros(row["spend_cap_cents"]), "spend_window": row["spend_window"],
        "balance_micros": cents_to_micros(row["balance_cents"]),
        "committed_charges_micros": cents_to_micros(row["committed_charges_cents"])}))


@dataclass(frozen=True, slots=True)
class Table:
    """A configuration table: how its rows are read, keyed and turned into topic values."""

    name: str
    topic: str
    sql: str
    where: str  # the row one notification names
    slot: Callable[[Row], bytes]  # the topic key of a row (or of a change)
    state: Callable[[Row], bytes | None]


TABLES = {
    "api_keys": Table("api_keys", topics.METER_APIKEYS, _KEYS_SQL, "WHERE api_key_fp = $1",
                      lambda r: str(r["api_key_fp"]).encode(), key_state),
    "service_instances": Table("service_instances", topics.METER_INSTANCES, _INSTANCES_SQL,
                               "WHERE customer_id = $1 AND service_type = $2",
                               lambda r: f"{r['customer_id']}:{int(r['service_type'])}".encode(), instance_state),
    "customers": Table("customers", topics.METER_CUSTOMERS, _CUSTOMERS_SQL, "WHERE customer_id = $1",
                       lambda r: str(r["customer_id"]).encode(), customer_state),
}
TABLE_OF_TOPIC = {t.topic: t.name for t in TABLES.values()}
for _table in TABLES:
    INVALID_ROWS.labels(_table).set(0)


def _args(change: Change) -> tuple[int, ...]:
    match change:
        case ApiKeyChanged():
            return (change.api_key_fp,)
        case InstanceChanged():
            return (change.customer_id, int(change.service_type))
        case CustomerChanged():
            return (change.customer_id,)


async def desired_state(conn: asyncpg.Connection) -> tuple[dict[Slot, bytes | None], dict[Slot, str]]:
    """What the three topics should hold, from Postgres (None: a tombstone), and the rows that
    make no valid state (slot -> why), which are skipped."""
    out: dict[Slot, bytes | None] = {}
    invalid: dict[Slot, str] = {}
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        for table in TABLES.values():
            for row in await conn.fetch(table.sql.format(where="")):
                slot = (table.topic, table.slot(row))
                try:
                    out[slot] = table.state(row)
                except WireError as exc:
                    invalid[slot] = str(exc)
    return out, invalid


async def state_of(conn: asyncpg.Connection, change: Change) -> tuple[Slot, bytes | None, str | None]:
    """The current state of the row a notification names: (slot, value or None when it is
    gone or revoked, why the row makes no valid state or None)."""
    table = TABLES[change.table]
    row = await conn.fetchrow(table.sql.format(where=table.where), *_args(change))
    slot = (table.topic, table.slot(change.model_dump()))
    if row is None:
        return slot, None, None
    try:
        return slot, table.state(row), None
    except WireError as exc:
        return slot, None, str(exc)


class ConfigSync:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.published: dict[Slot, bytes] = {}  # what the topics hold (tombstoned slots are gone)
        self.invalid: dict[Slot, str] = {}  # rows skipped because they make no valid state: why
        self.changes: dict[Change, None] = {}  # distinct rows notified, in order, not yet read
        self.changed = asyncio.Event()
        self.overflowed = False  # more than MAX_PENDING_CHANGES: compare in full instead
        self.ignored_since_log = 0
        self.ignored_logged_at = float("-inf")
        self.stop_requested = asyncio.Event()
        self.conn: asyncpg.Connection | None = None
        self.producer: AIOKafkaProducer | None = None
        self.last_reconcile: float | None = None
        self.failure = FailureClock()

    def health(self) -> tuple[bool, dict[str, object]]:
        return self.failure.healthy(), {"failing_s": round(self.failure.seconds(), 1),
            "published": len(self.published), "invalid_rows": len(self.invalid),
            "last_reconcile_s": (None if self.last_reconcile is None
                                 else round(time.monotonic() - self.last_reconcile, 1))}

    # -- Kafka -----------------------------------------------------------------------------
    async def _publish(self, items: list[tuple[Slot, bytes | None]]) -> None:
        """Publish and wait for the acknowledgement of each (idempotent producer, acks=all)."""
        if not items:
            return
        if self.producer is None:
            self.producer = AIOKafkaProducer(**client_kwargs(self.settings.kafka),
                                             client_id=f"{self.settings.kafka.client_id}-sync-config",
                                             acks="all", enable_idempotence=True)
            await asyncio.wait_for(self.producer.start(), self.settings.produce.send_timeout_s)
        futures = [await self.producer.send(self.settings.topic(topic), value, key=key)
                   for (topic, key), value in items]
        await asyncio.wait_for(asyncio.gather(*futures), self.settings.produce.send_timeout_s)
        for (topic, key), value in items:
            self._hold((topic, key), value)
            (metrics.SYNC_PUBLISHED if value is not None else metrics.SYNC_TOMBSTONES).labels(topic).inc()

    def _hold(self, slot: Slot, value: bytes | None) -> None:
        if value is None:
            self.published.pop(slot, None)
        else:
            self.published[slot] = value

    async def _read_published(self) -> None:
        for topic in CONFIG_TOPICS:
            for key, value in await read_to_end(self.settings, self.settings.topic(topic)):
                if key is not None:
                    self._hold((topic, key), value)

    # -- Postgres ----------------------------------------------------------------------------
    async def _listen(self) -> None:
        self.conn = await pg.connect(self.settings)
        await self.conn.add_listener(CHANNEL, self._on_notify)  # type: ignore[arg-type]  # payload: str

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        metrics.SYNC_NOTIFICATIONS.inc()
        try:
            change = config_change(payload)
        except WireError as exc:  # any login may NOTIFY anything: counted and ignored
            INVALID_NOTIFICATIONS.inc()
            self.ignored_since_log += 1
            if time.monotonic() - self.ignored_logged_at >= BAD_NOTIFICATION_LOG_S:
                log.warning("notification ignored: it names no configuration row", channel=CHANNEL,
                            error=str(exc)[:200], ignored=self.ignored_since_log)
                self.ignored_since_log, self.ignored_logged_at = 0, time.monotonic()
            return
        if self.overflowed or len(self.changes) >= MAX_PENDING_CHANGES:
            self.overflowed = True
            self.changes.clear()
        else:
            self.changes[change] = None
        self.changed.set()

    async def reconcile(self) -> int:
        """Publish every difference between Postgres and what was published; returns how many.
        A row that makes no valid state is skipped: what its topic holds stays as it was."""
        assert self.conn is not None
        started = time.monotonic()
        desired, invalid = await desired_state(self.conn)
        self._note_invalid(invalid, full=True)
        stale: list[tuple[Slot, bytes | None]] = [(slot, None) for slot in self.published
                                                   if slot not in desired and slot not in invalid]
        changed = [(slot, value) for slot, value in desired.items() if self._differs(slot, value)]
        await self._publish(changed + stale)
        metrics.SYNC_RECONCILE_SECONDS.observe(time.monotonic() - started)
        self.last_reconcile = time.monotonic()
        return len(changed) + len(stale)

    async def _apply(self, change: Change) -> None:
        assert self.conn is not None
        slot, value, invalid = await state_of(self.conn, change)
        self._note_invalid({slot: invalid} if invalid else {}, full=False, checked=slot)
        if invalid is None and self._differs(slot, value):
            await self._publish([(slot, value)])

    def _note_invalid(self, found: dict[Slot, str], *, full: bool, checked: Slot | None = None) -> None:
        """Reports rows that make no valid state: a log line (table, key, why; never a value)
        when a row turns invalid or valid again, and the gauge by table."""
        before = self.invalid
        after = dict(found) if full else {k: v for k, v in before.items() if k != checked} | found
        for slot, why in after.items():
            if before.get(slot) != why:
                log.error("configuration row skipped: it makes no valid state", table=TABLE_OF_TOPIC[slot[0]],
                          key=slot[1].decode(errors="replace"), error=why[:300])
        for slot in before.keys() - after.keys():
            log.info("configuration row valid again", table=TABLE_OF_TOPIC[slot[0]],
                     key=slot[1].decode(errors="replace"))
        self.invalid = after
        for table in TABLES:
            INVALID_ROWS.labels(table).set(sum(1 for slot in after if TABLE_OF_TOPIC[slot[0]] == table))

    def _differs(self, slot: Slot, value: bytes | None) -> bool:
        """Whether ``value`` must be published: it is not what the topic holds (a tombstone
        for a key the topic never had is not needed)."""
        if value is None:
            return slot in self.published
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
                    await asyncio.wait_for(self.changed.wait(), 0.5)
                except TimeoutError:
                    continue
                self.changed.clear()
                if self.overflowed:  # a flood of notifications: one full comparison reads them all
                    self.overflowed = False
                    log.warning("more notifications than rows kept pending: comparing in full",
                                pending_max=MAX_PENDING_CHANGES)
                    await self.reconcile()
                else:
                    # a burst (a bulk update) names the same rows many times: each is read once
                    batch, self.changes = list(self.changes), {}
                    for one in batch:
                        await self._apply(one)
                self.failure.recovered()
            except (*pg.TRANSIENT, KafkaError) as exc:
                self.failure.failed()
                log.warning("config sync failing, retrying", error=f"{type(exc).__name__}: {exc}"[:200])
                await self._reset()
                await asyncio.sleep(1)
        await self._reset()

    async def _reset(self) -> None:
        self.changes.clear()  # the full comparison after reconnecting covers them
        self.overflowed = False
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
