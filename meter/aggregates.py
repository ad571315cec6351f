"""The state the worker keeps in its faust tables, one value per aggregate, its serialized
form (``dumps``) and how a table is read back as objects (``StateTable``).

Every value carries the high-water marks of the records it has applied (meter.highwater)
and the meter.resolved partition it belongs to; the whole value is written to the table's
changelog at once, so its totals and its marks cannot disagree after a crash.

Values are compact JSON (orjson) lists; keys are bytes (see ``*_key``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Iterator, MutableMapping
from typing import Any

import orjson

from meterstream.meter.highwater import HighWater
from meterstream.meter.rate import RateTracker
from meterstream.meter.resolve import InvalidKeyTracker
from meterstream.meter.spend import SpendTracker
from meterstream.meter.usage import Totals
from meterstream.schemas.enums import LimitKind
from meterstream.schemas.usage import COUNTS


def window_key(customer: int, service: int, network: int, minute: int) -> bytes:
    return b"%d:%d:%d:%d" % (customer, service, network, minute)


def rate_key(customer: int, service: int, region: int) -> bytes:
    return b"%d:%d:%d" % (customer, service, region)


def spend_key(customer: int) -> bytes:
    return b"%d" % customer


def clock_key(partition: int) -> bytes:
    return b"p%d" % partition


@dataclass(slots=True)
class WindowState:
    """One usage window (customer, service, network, minute)."""

    partition: int
    totals: Totals = field(default_factory=Totals)
    revision: int = 0
    emitted_revision: int = 0  # the revision last published on meter.usage
    final_revision: int = 0  # the revision last published with final=true
    seen: HighWater = field(default_factory=HighWater)

    def dump(self) -> list[Any]:
        return [self.partition, [getattr(self.totals, n) for n in COUNTS], self.revision,
                self.emitted_revision, self.final_revision, self.seen.marks]

    @classmethod
    def load(cls, data: list[Any]) -> WindowState:
        p, counts, revision, emitted, final, marks = data
        return cls(p, Totals(*counts), revision, emitted, final, HighWater(marks))


@dataclass(slots=True)
class RateState:
    """The rate tracker of one (customer, service, region)."""

    partition: int
    tracker: RateTracker
    seen: HighWater = field(default_factory=HighWater)

    def dump(self) -> list[Any]:
        t = self.tracker
        return [self.partition, t.allowed, list(t.counts.items()), t.next_second, t.over_run, t.under_run,
                t.breached, self.seen.marks]

    @classmethod
    def load(cls, data: list[Any]) -> RateState:
        p, allowed, counts, next_second, over, under, breached, marks = data
        tracker = RateTracker(allowed, dict((int(s), n) for s, n in counts), next_second, over, under, breached)
        return cls(p, tracker, HighWater(marks))


@dataclass(slots=True)
class SpendState:
    """The spend tracker of one customer."""

    partition: int
    tracker: SpendTracker = field(default_factory=SpendTracker)
    seen: HighWater = field(default_factory=HighWater)

    def dump(self) -> list[Any]:
        t = self.tracker
        return [self.partition, list(t.billable_by_day.items()), [k.value for k, up in t.above.items() if up],
                [[k.value, label, n] for (k, label), n in t.crossings.items()], self.seen.marks]

    @classmethod
    def load(cls, data: list[Any]) -> SpendState:
        p, days, above, crossings, marks = data
        tracker = SpendTracker(dict((int(d), n) for d, n in days), {LimitKind(k): True for k in above},
                               {(LimitKind(k), label): n for k, label, n in crossings})
        return cls(p, tracker, HighWater(marks))


@dataclass(slots=True)
class InvalidKeyState:
    tracker: InvalidKeyTracker = field(default_factory=InvalidKeyTracker)
    seen: HighWater = field(default_factory=HighWater)

    def dump(self) -> list[Any]:
        t = self.tracker
        return [t.hour, t.hits, t.reported, self.seen.marks]

    @classmethod
    def load(cls, data: list[Any]) -> InvalidKeyState:
        hour, hits, reported, marks = data
        return cls(InvalidKeyTracker(hour, hits, reported), HighWater(marks))


@dataclass(slots=True)
class PartitionClock:
    """Event time of one meter.resolved partition: the highest event time seen from each
    upstream (haproxy.logs) partition, and the watermark derived from them (meter_stage)."""

    watermark: int | None = None
    upstream: dict[int, int] = field(default_factory=dict)

    def dump(self) -> list[Any]:
        return [self.watermark, list(self.upstream.items())]

    @classmethod
    def load(cls, data: list[Any]) -> PartitionClock:
        watermark, upstream = data
        return cls(watermark, {int(p): ts for p, ts in upstream})


STATE_TYPES: dict[str, type] = {"window": WindowState, "rate": RateState, "spend": SpendState,
                                "invalid": InvalidKeyState, "partition_clock": PartitionClock, "clock": int}


def _exact(data: bytes) -> bytes:
    # orjson's result keeps its whole write buffer (~8 KiB); a value kept in a table must not
    return memoryview(data).tobytes()


def dumps(value: Any) -> bytes:
    if isinstance(value, int):
        return b"%d" % value
    return _exact(orjson.dumps(value.dump()))


class StateTable(MutableMapping[bytes, Any]):
    """A table's store seen as state objects.

    The worker keeps values serialized in the store (the bytes it also writes to the
    changelog: a tenth of the memory of the objects), and faust recovers a table with the
    changelog topic's JSON serializer, so a recovered value is a parsed list. Either becomes
    its state object on access, cached until ``clear_cache()`` (the worker calls it after each
    batch, so one object stands for a key during a batch). Tests store objects directly.
    """

    def __init__(self, data: MutableMapping[bytes, Any], kind: str) -> None:
        self.data = data
        kind_type = STATE_TYPES[kind]
        self.load = int if kind_type is int else kind_type.load
        self.cache: dict[bytes, Any] = {}

    def _typed(self, key: bytes, value: Any) -> Any:
        if isinstance(value, bytes | list):
            cached = self.cache.get(key)
            if cached is None:
                if isinstance(value, list):
                    self.data[key] = _exact(orjson.dumps(value))  # recovered: keep it compact from now on
                cached = self.cache[key] = self.load(orjson.loads(value) if isinstance(value, bytes) else value)
            return cached
        return value

    def clear_cache(self) -> None:
        self.cache.clear()

    def __getitem__(self, key: bytes) -> Any:
        return self._typed(key, self.data[key])

    def get(self, key: bytes, default: Any = None) -> Any:  # noqa: D102 - the fast path
        value = self.data.get(key)
        return default if value is None else self._typed(key, value)

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
            yield key, self[key]
