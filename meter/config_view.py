"""The configuration every worker holds in full: the compacted ``meter.apikeys``,
``meter.instances`` and ``meter.customers`` topics, replicated into memory.

Each worker reads every partition of the three topics (no consumer group): the view is
loaded to the topics' end before the first record is resolved, then follows them. A key
state is looked up for every log record, so it lives in a plain dict; a tombstone removes it.
``subscribe()`` collects customers whose spend policy or instances changed, so the
meter re-evaluates their limits (a raised cap clears a breach without new traffic needing to
arrive first).

Why not a faust GlobalTable: the worker needs the view complete before it resolves anything
(an unknown key would be counted as unauthenticated), and it needs the decoded model, not the
bytes, on the hot path; a consumer of our own gives both, and is a few lines.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import cast

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from meterstream import logs
from meterstream.kafka import partitions_of
from meterstream.kafka_clients import client_kwargs
from meterstream.meter.rate import allowance
from meterstream.meter.spend import SpendPolicy
from meterstream.schemas import topics
from meterstream.schemas.config import ApiKeyState, CustomerState, InstanceState
from meterstream.schemas.enums import ApiKeyStatus
from meterstream.schemas.wire import WireError, decode
from meterstream.settings import Settings

log = logs.get(__name__)
_DEFAULT = CustomerState(customer_id=1)
DEFAULT_POLICY = SpendPolicy(cap_micros=_DEFAULT.spend_cap_micros, window=_DEFAULT.spend_window,
                             balance_micros=_DEFAULT.balance_micros, committed_micros=_DEFAULT.committed_charges_micros)


def slot(customer: int, service: int) -> int:
    """One int for (customer, service): a dict key of 28 bytes instead of a tuple's 120."""
    return customer << 2 | service


# what the worker holds per customer: its spend policy (None: the default) and the rate
# allowance of each service (index 1-3; None: not configured, no rate limit), then the
# partition of its records. Customers with the same configuration share one tuple.
CustomerConfig = tuple[SpendPolicy | None, int | None, int | None, int | None, int]
_EMPTY: CustomerConfig = (None, None, None, None, -1)


class ConfigView:
    """The parts of the configuration the worker uses, compactly (a worker of 100,000
    customers holds 700,000 of them in about 40 MiB): per fingerprint the (customer, service
    type) of its active key, as one int (``slot``); per customer a ``CustomerConfig`` tuple,
    one object shared by the customers whose configuration is the same."""

    def __init__(self, partition_of: Callable[[int], int] | None = None) -> None:
        self.keys: dict[int, int] = {}  # fingerprint -> slot(customer, service) of its active key
        self.customers: dict[int, CustomerConfig] = {}
        self._shared: dict[CustomerConfig, CustomerConfig] = {}
        self._partition_of = partition_of or (lambda customer: 0)
        self.watchers: list[set[int]] = []  # one set per meter partition (subscribe)

    def allowance(self, customer: int, service: int) -> int | None:
        found = self.customers.get(customer)
        return None if found is None else cast("int | None", found[service])  # 1-3: an allowance

    def policy(self, customer: int) -> SpendPolicy:
        found = self.customers.get(customer)
        return DEFAULT_POLICY if found is None or found[0] is None else found[0]

    def partition(self, customer: int) -> int | None:
        """The partition of a configured customer's records (None: not configured)."""
        found = self.customers.get(customer)
        return None if found is None else found[4]

    def _set(self, customer: int, index: int, value: SpendPolicy | int | None) -> None:
        config = list(self.customers.get(customer, _EMPTY))
        config[index] = value
        config[4] = self._partition_of(customer)
        if config[:4] == [None, None, None, None]:
            self.customers.pop(customer, None)
            return
        if len(self._shared) > 100_000:  # most customers share a few configurations; bounded
            self._shared.clear()
        shared = tuple(config)
        self.customers[customer] = self._shared.setdefault(shared, shared)  # type: ignore[arg-type]

    # -- applying topic records -------------------------------------------------------------
    def apply(self, logical_topic: str, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        try:
            if logical_topic == topics.METER_APIKEYS:
                fp = int(key)
                state = None if value is None else decode(ApiKeyState, value)
                if state is None or state.status is not ApiKeyStatus.ACTIVE:
                    self.keys.pop(fp, None)
                else:
                    self.keys[fp] = slot(state.customer_id, int(state.service_type))
            elif logical_topic == topics.METER_INSTANCES:
                customer, service = (int(part) for part in key.split(b":"))
                if service not in (1, 2, 3):
                    raise ValueError(f"no service type {service}")
                if value is None:
                    self._set(customer, service, None)
                else:
                    inst = decode(InstanceState, value)
                    self._set(customer, service, allowance(inst.tier, inst.guaranteed_rps, inst.burst_rps))
                self._changed(customer)
            elif logical_topic == topics.METER_CUSTOMERS:
                customer = int(key)
                if value is None:
                    self._set(customer, 0, None)
                else:
                    c = decode(CustomerState, value)
                    self._set(customer, 0, SpendPolicy(
                        cap_micros=c.spend_cap_micros, window=c.spend_window, balance_micros=c.balance_micros,
                        committed_micros=c.committed_charges_micros))
                self._changed(customer)
        except (WireError, ValueError) as exc:
            # a bad config record must not stop metering; the previous state stays
            log.error("config record ignored", topic=logical_topic, error=str(exc))

    def subscribe(self) -> set[int]:
        """A set that collects the ids of customers whose configuration changes."""
        watcher: set[int] = set()
        self.watchers.append(watcher)
        return watcher

    def unsubscribe(self, watcher: set[int]) -> None:
        self.watchers = [w for w in self.watchers if w is not watcher]

    def _changed(self, customer: int) -> None:
        for watcher in self.watchers:
            watcher.add(customer)

    def apply_many(self, logical_topic: str, records: Iterable[tuple[bytes | None, bytes | None]]) -> None:
        for key, value in records:
            self.apply(logical_topic, key, value)

class ConfigFollower:
    """Loads a ConfigView to the topics' end, then keeps it following them."""

    def __init__(self, settings: Settings, view: ConfigView) -> None:
        self.settings = settings
        self.view = view
        self.names = {settings.topic(name): name for name in
                      (topics.METER_APIKEYS, topics.METER_INSTANCES, topics.METER_CUSTOMERS)}
        self.consumer: AIOKafkaConsumer | None = None
        self.loaded = asyncio.Event()

    async def load(self) -> None:
        """Reads the three topics up to their current end (retrying while Kafka is away)."""
        while True:
            try:
                self.consumer = AIOKafkaConsumer(**client_kwargs(self.settings.kafka),
                                                 enable_auto_commit=False, isolation_level="read_committed",
                                                 client_id=f"{self.settings.kafka.client_id}-config")
                await self.consumer.start()
                partitions = [TopicPartition(t, p) for t in self.names for p in await partitions_of(self.settings, t)]
                self.consumer.assign(partitions)
                await self.consumer.seek_to_beginning(*partitions)
                ends = await self.consumer.end_offsets(partitions)
                while [tp for tp, end in ends.items() if await self.consumer.position(tp) < end]:
                    await self._poll(500)
                self.loaded.set()
                log.info("config loaded", keys=len(self.view.keys), customers=len(self.view.customers))
                return
            except KafkaError as exc:
                log.warning("config load failed, retrying", error=str(exc))
                await self.close()
                await asyncio.sleep(1.0)

    async def follow(self) -> None:
        while True:
            try:
                await self._poll(1000)
            except KafkaError as exc:  # the consumer reconnects by itself
                log.warning("config follow error", error=str(exc))
                await asyncio.sleep(1.0)

    async def _poll(self, timeout_ms: int) -> None:
        assert self.consumer is not None
        batch = await self.consumer.getmany(timeout_ms=timeout_ms)
        for tp, messages in batch.items():
            self.view.apply_many(self.names[tp.topic], ((m.key, m.value) for m in messages))

    async def close(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None
