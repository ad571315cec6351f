"""The state the worker keeps in its faust tables, its serialized form (``dumps``) and how a
table is read back as objects (``StateTable``).

A value holds the aggregates of one customer that are updated together: its usage windows of
one minute (``UsageMinute``), its rate and spend trackers (``CustomerLimits``); and, for
customer 0, one unknown fingerprint's hits (``InvalidKeyState``). Every value carries the
high-water marks of the records it has applied (meter.highwater) and the partition it belongs
to; the whole value is written to the table's changelog at once, so its totals and its marks
cannot disagree after a crash. Every value is bounded in size whatever the input.

Values are compact JSON (orjson) lists; keys are bytes (see ``*_key``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from meterstream.meter.highwater import HighWater
from meterstream.meter.rate import RateTracker
from meterstream.meter.resolve import InvalidKeyTracker
from meterstream.meter.spend import SpendTracker
from meterstream.meter.usage import Totals
from meterstream.schemas.enums import LimitKind
from meterstream.schemas.wire import dumps_exact


def usage_key(customer: int, hour: int) -> bytes:
    return b"%d:%d" % (customer, hour)


def limits_key(customer: int) -> bytes:
    return b"%d" % customer


def clock_key(partition: int) -> bytes:
    return b"p%d" % partition


def invalid_key(api_key_fp: int) -> bytes:
    return b"%d" % api_key_fp


def window_id(service: int, network: int) -> int:
    """A window within its minute, as one small int: service (1-3) and network (0-3)."""
    return service * 4 + network


def window_parts(wid: int) -> tuple[int, int]:
    """(service, network) of a window id."""
    return wid // 4, wid % 4


def rate_id(service: int, region: int) -> int:
    """A rate tracker within its customer: service (1-3) and region (0-2047)."""
    return service << 11 | region


@dataclass(slots=True)
class Window:
    """One usage window (customer, service, network, minute): its totals and revisions."""

    totals: Totals = field(default_factory=Totals)
    revision: int = 0
    emitted_revision: int = 0  # the revision last published on meter.usage
    final_revision: int = 0  # the revision last published with final=true


@dataclass(slots=True)
class UsageMinute:
    """The usage windows of one customer in one minute of event time, one per (service,
    network): one table value, so they and their high-water marks are written together, and
    100,000 customers' windows of 3 services are 100,000 values (a value per window is three
    times the memory; a value per hour would rewrite a whole hour at every batch). At most 3
    services x 4 networks: bounded whatever the input."""

    partition: int
    windows: dict[int, Window] = field(default_factory=dict)  # window_id -> window
    seen: HighWater = field(default_factory=HighWater)

    def dump(self) -> list[Any]:
        return [self.partition, [[wid, w.totals.as_list(), w.revision, w.emitted_revision, w.final_revision]
                                 for wid, w in self.windows.items()], self.seen.dump()]

    @classmethod
    def load(cls, data: list[Any]) -> UsageMinute:
        p, windows, seen = data
        return cls(int(p), {int(wid): Window(Totals(*(int(n) for n in counts)), int(revision), int(emitted),
                                              int(final))
                            for wid, counts, revision, emitted, final in windows}, HighWater.load(seen))


@dataclass(slots=True)
class CustomerLimits:
    """A customer's rate trackers (per service and region) and spend tracker: one table value."""

    partition: int
    rates: dict[int, RateTracker] = field(default_factory=dict)  # rate_id -> tracker
    spend: SpendTracker = field(default_factory=SpendTracker)
    seen: HighWater = field(default_factory=HighWater)

    def dump(self) -> list[Any]:
        t = self.spend
        return [self.partition,
                [[rid, r.allowed, list(r.counts.items()), r.next_second, r.over_run, r.under_run, r.breached]
                 for rid, r in self.rates.items()],
                [list(t.billable_by_day.items()), [k.value for k, up in t.above.items() if up],
                 [[k.value, label, n] for (k, label), n in t.crossings.items()]],
                self.seen.dump()]

    @classmethod
    def load(cls, data: list[Any]) -> CustomerLimits:
        p, rates, (days, above, crossings), seen = data
        trackers = {int(rid): RateTracker(int(allowed), {int(s): int(n) for s, n in counts},
                                          None if nxt is None else int(nxt), int(over), int(under), bool(breached))
                    for rid, allowed, counts, nxt, over, under, breached in rates}
        spend = SpendTracker({int(d): int(n) for d, n in days}, {LimitKind(k): True for k in above},
                             {(LimitKind(k), str(label)): int(n) for k, label, n in crossings})
        return cls(int(p), trackers, spend, HighWater.load(seen))


@dataclass(slots=True)
class InvalidKeyState:
    """Hits of one fingerprint that resolves to no customer, in the current hour."""

    partition: int
    tracker: InvalidKeyTracker = field(default_factory=InvalidKeyTracker)
    seen: HighWater = field(default_factory=HighWater)

    def dump(self) -> list[Any]:
        t = self.tracker
        return [self.partition, t.hour, t.hits, t.reported, self.seen.dump()]

    @classmethod
    def load(cls, data: list[Any]) -> InvalidKeyState:
        p, hour, hits, reported, seen = data
        return cls(int(p), InvalidKeyTracker(int(hour), int(hits), bool(reported)), HighWater.load(seen))


@dataclass(slots=True)
class PartitionClock:
    """Event time of one partition: the highest event time reached by each route (the
    haproxy.logs partitions whose records reach it), and the watermark derived from them
    (meter_stage)."""

    watermark: int | None = None
    upstream: dict[int, int] = field(default_factory=dict)
    idle: list[int] = field(default_factory=list)  # routes whose source had nothing more to read

    def dump(self) -> list[Any]:
        return [self.watermark, list(self.upstream.items()), self.idle]

    @classmethod
    def load(cls, data: list[Any]) -> PartitionClock:
        watermark, upstream, idle = data
        return cls(None if watermark is None else int(watermark), {int(p): int(ts) for p, ts in upstream},
                   [int(p) for p in idle])


# a value of one of the worker's tables (the positions table holds ints)
StateValue = UsageMinute | CustomerLimits | InvalidKeyState | PartitionClock | int

STATE_TYPES: dict[str, Any] = {"usage": UsageMinute, "limits": CustomerLimits, "invalid": InvalidKeyState,
                                "partition_clock": PartitionClock, "clock": int}


def dumps(value: StateValue) -> bytes:
    if isinstance(value, int):
        return b"%d" % value
    return dumps_exact(value.dump())


class StateTable(MutableMapping[bytes, Any]):
    """A table's store seen as state objects.

    The worker keeps values serialized in the store: the bytes it writes to the changelog,
    which faust recovers as they are (the tables' serializer is ``raw``); a tenth of the
    memory of the objects. A value becomes its state object on access, cached until
    ``clear_cache()`` (the worker calls it after each batch, so one object stands for a key
    during a batch). Tests store objects directly.

    A stored value that does not load (a changelog is an input like any other) is taken as
    absent and kept in ``bad`` (key, bytes) for the worker to report and dead-letter.
    """

    def __init__(self, data: MutableMapping[bytes, Any], kind: str) -> None:
        self.data = data
        kind_type = STATE_TYPES[kind]
        self.load: Callable[[Any], Any] = int if kind_type is int else kind_type.load
        self.cache: dict[bytes, Any] = {}
        self.bad: list[tuple[bytes, bytes]] = []

    def _load(self, key: bytes, value: bytes) -> Any:
        try:
            return self.load(orjson.loads(value))
        except (ValueError, TypeError, KeyError) as exc:  # JSONDecodeError is a ValueError
            del self.data[key]
            self.bad.append((key, value[:4096] + f" ({type(exc).__name__})".encode()))
            return None

    def _typed(self, key: bytes, value: Any) -> Any:
        if isinstance(value, bytes):
            cached = self.cache.get(key)
            if cached is None:
                cached = self._load(key, value)
                if cached is not None:
                    self.cache[key] = cached
            return cached
        return value

    def clear_cache(self) -> None:
        self.cache.clear()

    def __getitem__(self, key: bytes) -> Any:
        value = self._typed(key, self.data[key])
        if value is None:
            raise KeyError(key)
        return value

    def get(self, key: bytes, default: Any = None) -> Any:  # noqa: D102 - the fast path
        value = self.data.get(key)
        if value is None:
            return default
        typed = self._typed(key, value)
        return default if typed is None else typed

    def __setitem__(self, key: bytes, value: Any) -> None:
        self.data[key] = value

    def __delitem__(self, key: bytes) -> None:
        del self.data[key]
        self.cache.pop(key, None)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def items(self) -> Iterator[tuple[bytes, Any]]:  # type: ignore[override]
        for key in list(self.data):
            value = self.get(key)
            if value is not None:
                yield key, value

    def scan(self) -> Iterator[tuple[bytes, Any]]:
        """Every (key, state object), loaded without caching: a pass over the whole table
        (rebuilding indexes after a restart) holds one object at a time."""
        for key in list(self.data):
            value = self.data.get(key)
            if value is None:
                continue
            found = self.cache.get(key) if isinstance(value, bytes) else value
            if found is None:
                found = self._load(key, value)
            if found is not None:
                yield key, found
