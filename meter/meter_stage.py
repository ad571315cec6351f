"""The worker's one pass over a partition (docs/metering.md): the records of one
``haproxy.logs`` partition, and the records other partitions forward to it, become usage
windows, limit events, invalid-key reports, forwarded records and dead letters, in event
time (docs/metering.md). No Kafka and no faust here: the worker (meter/worker.py) hands batches in and
publishes and writes what comes out, so this logic is tested with plain dicts as tables.

Per batch:

1. **Resolve** (``process``): each record of the partition is resolved to its customer
   (meter.resolve). A record whose customer belongs to this partition is metered here; one
   whose customer belongs to another partition is forwarded there (``meter.resolved``) and
   only moves this partition's time.
2. **Check and apply**: a metered record is refused when too late, from the future or
   unmeterable (dead letters); else it is applied to its usage window, its rate tracker
   (requests HAProxy served), its customer's spend (billable requests), and for customer 0
   with a fingerprint to that fingerprint's invalid-key tracker: each only if that
   aggregate's high-water marks (meter.highwater) say the record is new there.
3. **Time**: each route (a haproxy.logs partition whose records reach this one) has the
   highest event time it reached; the watermark, the lowest of the routes that are not idle
   (whose source still has records to read),
   judges rate seconds, closes windows and is "now" for spend windows.
4. **Out** come the messages (forwarded records, usage windows, limit events, dead letters)
   and the table values to write; the worker publishes first and writes the tables only once
   Kafka has acknowledged the messages, so a crash in between repeats a message (same window
   revision, same event_id) rather than losing it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meterstream.meter.aggregates import (
    CustomerLimits,
    InvalidKeyState,
    PartitionClock,
    UsageMinute,
    Window,
    clock_key,
    invalid_key,
    limits_key,
    rate_id,
    usage_key,
    window_id,
    window_parts,
)
from meterstream.meter.clock import HOUR_MS, MINUTE_MS, SECOND_MS, floor_to
from meterstream.meter.config_view import ConfigView
from meterstream.meter.highwater import stream_key
from meterstream.meter.rate import CLEAR_AFTER, RateTracker
from meterstream.meter.resolve import UNAUTHENTICATED, resolve
from meterstream.meter.usage import count_request
from meterstream.schemas.enums import ServiceType, TrafficType, UnauthReason
from meterstream.schemas.limits import LimitEvent, event_id
from meterstream.schemas.records import LogRecord, is_billable
from meterstream.schemas.resolved import ResolvedBatch
from meterstream.schemas.usage import WindowRow

# The rate counts the requests HAProxy served, not those it refused (3-6)
SERVED = frozenset((TrafficType.GUARANTEED, TrafficType.BURST))


@dataclass(frozen=True)
class MeterRules:
    retention_ms: int = 48 * HOUR_MS  # late events count while their window is this recent
    future_ms: int = 5 * MINUTE_MS  # events further ahead (of watermark and wall clock) are refused
    emit_every_ms: int = SECOND_MS  # a changed window is published at most this often (event time)
    rate_lateness_ms: int = 2 * SECOND_MS  # a second is judged once the watermark is this far past it
    rate_clear_after_s: int = CLEAR_AFTER  # seconds under the allowance that clear a rate breach
    idle_ms: int = MINUTE_MS  # a forwarding partition this far behind this one's records no longer holds time back
    invalid_key_hits: int = 10  # hits in an hour that report an unknown fingerprint
    invalid_keys_max: int = 50_000  # fingerprints tracked per partition; past it, only counted


MAX_REGIONS = 16  # rate trackers per customer and service; a record of a further region is not rate-tracked

# the meter stage's tables and the kind of their values (meter.aggregates.STATE_TYPES)
TABLE_KINDS = {"usage": "usage", "limits": "limits", "invalid_keys": "invalid", "clocks": "partition_clock"}


@dataclass
class Tables:
    """The faust tables of the worker (any mutable mapping in tests)."""

    usage: MutableMapping[bytes, UsageMinute]  # (customer, minute) -> its windows
    limits: MutableMapping[bytes, CustomerLimits]  # customer -> its rate and spend trackers
    invalid_keys: MutableMapping[bytes, InvalidKeyState]  # fingerprint -> its hits this hour
    clocks: MutableMapping[bytes, PartitionClock]


@dataclass(slots=True)
class Writes:
    """The table values a batch changed, per table (None: delete the key); the same names as
    ``Tables``."""

    usage: dict[bytes, UsageMinute | None]
    limits: dict[bytes, CustomerLimits | None]
    invalid_keys: dict[bytes, InvalidKeyState | None]
    clocks: dict[bytes, PartitionClock | None]

    def items(self) -> Iterable[tuple[str, dict[bytes, Any]]]:
        return ((name, getattr(self, name)) for name in TABLE_KINDS)


@dataclass(slots=True)
class Rejection:
    """A record the meter refuses: dead-lettered with its route and upstream offset."""

    record: LogRecord
    route: int
    offset: int
    reason: str
    detail: str


# a forwarded record: customer, reason when unauthenticated, upstream offset, the record
Forward = tuple[int, UnauthReason | None, int, LogRecord]


@dataclass
class BatchResult:
    usage: list[WindowRow] = field(default_factory=list)
    events: list[LimitEvent] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    forward: dict[int, list[Forward]] = field(default_factory=dict)  # destination partition -> records
    progress: int | None = None  # event time this partition's own records reached
    # table -> key -> new value (None: delete)
    writes: Writes = field(default_factory=lambda: Writes({}, {}, {}, {}))
    applied: int = 0  # records counted
    repeats: int = 0  # records skipped as already applied
    unauthenticated: dict[UnauthReason, int] = field(default_factory=dict)  # counted under customer 0
    untracked_invalid_keys: int = 0  # hits of fingerprints past invalid_keys_max
    untracked_regions: int = 0  # requests of regions past MAX_REGIONS, not rate-tracked


def _scan(table: MutableMapping[bytes, Any]) -> Iterable[tuple[bytes, Any]]:
    scan = getattr(table, "scan", None)  # StateTable: one value loaded at a time
    return scan() if scan is not None else list(table.items())


def region_of(server_id: int | None) -> int:
    """server_id = (region_id << 4) | server_num; no server id counts as region 0."""
    return 0 if server_id is None else server_id >> 4


class MeterPartition:
    def __init__(self, partition: int, tables: Tables, view: ConfigView, rules: MeterRules | None = None,
                 partition_of: Callable[[int], int] | None = None, routes: int = 1) -> None:
        """``partition_of(customer)`` is the partition a customer's records and state belong
        to; ``routes`` the number of haproxy.logs partitions (forwarded from nowhere else)."""
        self.partition = partition
        self.tables = tables
        self.view = view
        self.rules = rules or MeterRules()
        self.partition_of = partition_of or (lambda customer: partition)
        self.routes = max(routes, partition + 1)
        clock = tables.clocks.get(clock_key(partition)) or PartitionClock()
        self.watermark: int | None = clock.watermark
        self.upstream: dict[int, int] = dict(clock.upstream)  # route -> highest event time
        # indexes hold keys only: the values stay in the tables (serialized in the worker)
        self.pending: set[bytes] = set()  # usage values with windows changed since last published
        self.open: dict[int, set[bytes]] = {}  # minute -> its usage values with a window not yet final
        self.minutes: dict[int, list[bytes]] = {}  # minute -> its usage values, for retention
        self.active_rates: set[bytes] = set()  # limits with a tracker that has seconds to judge, or breached
        self.idle: set[int] = set(clock.idle)  # routes whose source had nothing more to read
        self.invalid_hours: dict[int, set[bytes]] = {}  # hour -> invalid-key trackers of that hour
        self.invalid_count = 0
        self.last_flush: int | None = None
        self.judged_second: int | None = None
        self._streams: dict[int, dict[str, str]] = {}  # route -> source stream -> stream key
        self._recover()

    def _recover(self) -> None:
        """Rebuilds the in-memory indexes from the tables (after a restart or a rebalance),
        loading one value at a time (``scan``; a plain dict in tests)."""
        k = self.partition
        for key, uh in _scan(self.tables.usage):
            if uh.partition == k:
                minute = int(key.rsplit(b":", 1)[1])
                self.minutes.setdefault(minute, []).append(key)
                for w in uh.windows.values():
                    if w.final_revision < w.revision:
                        self.open.setdefault(minute, set()).add(key)
                    if w.emitted_revision < w.revision:
                        self.pending.add(key)
        for key, cl in _scan(self.tables.limits):
            if cl.partition == k:
                if any(r.counts or r.breached for r in cl.rates.values()):
                    self.active_rates.add(key)
        for key, ks in _scan(self.tables.invalid_keys):
            if ks.partition == k:
                self.invalid_hours.setdefault(ks.tracker.hour, set()).add(key)
                self.invalid_count += 1

    # -- one batch ---------------------------------------------------------------------------
    def process(self, records: Iterable[tuple[int, LogRecord]], now_ms: int, drained: bool,
                changed_customers: set[int] | frozenset[int] = frozenset()) -> BatchResult:
        """The records of this partition's haproxy.logs, (offset, record) in offset order (an
        iterable: the worker decodes them one at a time)."""
        out = BatchResult()
        keys, k = self.view.keys, self.partition
        partition_of = self.partition_of
        self.idle.discard(k)  # it has records to give: it holds time back again
        for offset, rec in records:
            customer, unauth = resolve(keys, rec.api_key_fp, rec.service_type, rec.event_type)
            dest = partition_of(customer)
            if dest == k:
                self._apply(rec, customer, unauth, k, offset, now_ms, out)
            else:
                out.forward.setdefault(dest, []).append((customer, unauth, offset, rec))
                if self._timely(rec.ts, now_ms):
                    self._advance(k, rec.ts, out)
        if drained:  # nothing more to read on this partition: it does not hold time back
            self._set_idle(k, True, out)
        self._finish(out, drained, changed_customers)
        out.progress = self.upstream.get(k)
        return out

    def process_forwarded(self, batches: Sequence[tuple[int, ResolvedBatch]], now_ms: int, drained: bool,
                          changed_customers: set[int] | frozenset[int] = frozenset(),
                          own_idle: bool = False) -> BatchResult:
        """Records other partitions forwarded here: (offset on meter.resolved, batch).
        ``own_idle``: this partition's haproxy.logs has been read to its end."""
        out = BatchResult()
        k = self.partition
        if own_idle:
            self._set_idle(k, True, out)
        for _, batch in batches:
            route = batch.partition
            if route == k or route >= self.routes:
                for f in batch.records:
                    out.rejected.append(Rejection(f.record, route, f.offset, "misrouted",
                                                  f"no records come to partition {k} from partition {route}"))
                continue
            if batch.records:
                self.idle.discard(route)
            for f in batch.records:
                if self.partition_of(f.customer_id) != k:
                    out.rejected.append(Rejection(f.record, route, f.offset, "misrouted",
                                                  f"customer {f.customer_id} does not belong to partition {k}"))
                    continue
                self._apply(f.record, f.customer_id, f.unauth, route, f.offset, now_ms, out)
            if batch.progress is not None and self._timely(batch.progress, now_ms):
                self._advance(route, batch.progress, out)
            self._set_idle(route, batch.idle, out)
        self._finish(out, drained, changed_customers)
        return out

    def _timely(self, ts: int, now_ms: int) -> bool:
        """Not from the future: at most future_ms ahead of the watermark and the wall clock."""
        wm = self.watermark
        return ts <= (now_ms if wm is None or now_ms > wm else wm) + self.rules.future_ms

    def _stream(self, route: int, src_stream: str) -> str:
        """The stream key of a record's source and route, cached (a few files at a time)."""
        cache = self._streams.get(route)
        if cache is None:
            cache = self._streams[route] = {}
        stream = cache.get(src_stream)
        if stream is None:
            if len(cache) > 1_000:
                cache.clear()
            stream = cache[src_stream] = stream_key(route, src_stream)
        return stream

    def _apply(self, rec: LogRecord, customer: int, unauth: UnauthReason | None, route: int, offset: int,
               now_ms: int, out: BatchResult) -> None:
        ts = rec.ts
        wm = self.watermark
        if wm is not None and (ts < wm - self.rules.retention_ms or ts > max(now_ms, wm) + self.rules.future_ms):
            self._refuse(rec, route, offset, now_ms, out)
            return
        if wm is None and ts > now_ms + self.rules.future_ms:
            self._refuse(rec, route, offset, now_ms, out)
            return
        service, network = rec.service_type, rec.network
        if service is None or network is None:
            out.rejected.append(Rejection(rec, route, offset, "unmeterable",
                                          "the record names no service type or network"))
            return
        src = rec.src
        stream = self._stream(route, src.stream)
        src_offset = src.offset

        minute = ts - ts % MINUTE_MS
        ukey = usage_key(customer, minute)
        usage = out.writes.usage
        uh = usage.get(ukey) or self.tables.usage.get(ukey)
        if uh is None:
            uh = UsageMinute(self.partition)
            self.minutes.setdefault(minute, []).append(ukey)
        if uh.seen.apply(route, offset, stream, src_offset, ts):
            wid = window_id(service, network)
            w = uh.windows.get(wid)
            if w is None:
                w = uh.windows[wid] = Window()
            if w.final_revision == w.revision:  # new, or final and reopened by a late record
                self.open.setdefault(minute, set()).add(ukey)
            count_request(w.totals, rec.traffic_type, rec.status, rec.bytes_sent, rec.Ta)
            w.revision += 1
            self.pending.add(ukey)
            usage[ukey] = uh
            out.applied += 1
            if unauth is not None:
                out.unauthenticated[unauth] = out.unauthenticated.get(unauth, 0) + 1
        else:
            out.repeats += 1
        if ts > self.upstream.get(route, -1):
            self._advance(route, ts, out)
        if customer == UNAUTHENTICATED:
            if rec.api_key_fp is not None:
                self._invalid_key_hit(rec.api_key_fp, route, offset, stream, src_offset, ts, out)
            return

        traffic = rec.traffic_type
        allowed = self.view.allowance(customer, service) if traffic in SERVED else None
        billable = is_billable(traffic, rec.status)
        lkey = limits_key(customer)
        limits = out.writes.limits
        cl = limits.get(lkey) or self.tables.limits.get(lkey)
        if allowed is not None or billable:
            if cl is None:
                cl = CustomerLimits(self.partition)
            if not cl.seen.apply(route, offset, stream, src_offset, ts):
                return
            limits[lkey] = cl
            if allowed is not None:
                rid = rate_id(service, region_of(rec.server_id))
                tracker = cl.rates.get(rid)
                if tracker is None:
                    if sum(1 for r in cl.rates if r >> 11 == service) >= MAX_REGIONS:
                        out.untracked_regions += 1
                    else:
                        tracker = cl.rates[rid] = RateTracker(allowed)
                if tracker is not None:
                    tracker.allowed = allowed
                    tracker.hit(ts)
                    self.active_rates.add(lkey)
            if billable:
                cl.spend.add(ts)
                # judged record by record, so that a crossing's values do not depend on batching
                self._evaluate_spend(customer, cl, out, at=ts)
        elif cl is not None and cl.partition == self.partition and any(cl.spend.above.values()):
            # a customer over a threshold is refused, so its requests are not billable: they
            # still move time, and the window sliding (or the month turning) can clear it
            limits[lkey] = cl
            self._evaluate_spend(customer, cl, out)

    def _refuse(self, rec: LogRecord, route: int, offset: int, now_ms: int, out: BatchResult) -> None:
        """A record too late or from the future, to the dead letters with its reason."""
        rules, wm, ts = self.rules, self.watermark, rec.ts
        if not self._timely(ts, now_ms):
            ahead_of = now_ms if wm is None or now_ms > wm else wm
            out.rejected.append(Rejection(rec, route, offset, "from_the_future", f"event time {ts} is more than "
                                          f"{rules.future_ms} ms ahead of {ahead_of}"))
        else:
            out.rejected.append(Rejection(rec, route, offset, "too_late", f"event time {ts} is more than "
                                          f"{rules.retention_ms} ms behind the watermark {wm}"))

    def _invalid_key_hit(self, fp: int, route: int, offset: int, stream: str, src_offset: int, ts: int,
                         out: BatchResult) -> None:
        """One hit of a fingerprint that resolves to nobody, on its tracker (bounded in keys:
        past ``invalid_keys_max`` a new fingerprint is only counted)."""
        hour = floor_to(ts, HOUR_MS)
        if self.watermark is not None and hour < floor_to(self.watermark, HOUR_MS) - HOUR_MS:
            return  # an hour already expired: counted in usage only
        key = invalid_key(fp)
        trackers = out.writes.invalid_keys
        ks = trackers.get(key) or self.tables.invalid_keys.get(key)
        if ks is None:
            if self.invalid_count >= self.rules.invalid_keys_max:
                out.untracked_invalid_keys += 1
                return
            ks = InvalidKeyState(self.partition)
            self.invalid_count += 1
        if not ks.seen.apply(route, offset, stream, src_offset, ts):
            return
        before = ks.tracker.hour
        hit = ks.tracker.hit(fp, ts, self.rules.invalid_key_hits)
        if ks.tracker.hour != before:
            self.invalid_hours.get(before, set()).discard(key)
            self.invalid_hours.setdefault(ks.tracker.hour, set()).add(key)
        if hit is not None:
            out.events.append(hit)
        trackers[key] = ks

    def _advance(self, route: int, ts: int, out: BatchResult) -> None:
        """A route reached event time ``ts``: the watermark may move, and rate seconds with it."""
        before = self.upstream.get(route, -1)
        if ts > before:  # (the caller may have checked already: records mostly move time)
            self.upstream[route] = ts
            wm = self.watermark
            # only a route that held time back can move it, or this partition's own, which
            # decides which forwarding routes are idle (at a second's precision: enough for a
            # rule of a minute)
            if wm is None or before <= wm or route in self.idle or (
                    route == self.partition and ts // 1000 != before // 1000):
                self._move(out)

    def _set_idle(self, route: int, idle: bool, out: BatchResult) -> None:
        if idle and route not in self.idle:
            self.idle.add(route)
            self._move(out)
        elif not idle:
            self.idle.discard(route)

    def _move(self, out: BatchResult) -> None:
        moved = self._watermark()
        if moved is not None and (self.watermark is None or moved > self.watermark):
            self.watermark = moved
            if (moved - self.rules.rate_lateness_ms) // 1000 != self.judged_second:
                self._judge_rates(out)  # the watermark entered a new second

    def _watermark(self) -> int | None:
        """The lowest of the event times of the routes that are not idle: a customer's
        records come through its own partition and every partition that forwards to it, each
        in its own order, so time has passed only once it has passed in all of them (a
        partition that lags after a crash holds the watermark back instead of making its
        records late). A route is idle while its source has nothing more to read (this
        partition after a batch that drained it; another partition when its last message
        said so), or when a forwarding partition is more than ``idle_ms`` behind this one's
        own records (it is down, or went quiet): it does not hold time back. When every
        route is idle, time is the newest of them. Until this partition's own records have
        been read (or it is known to have none), time does not move."""
        own = self.upstream.get(self.partition)
        if len(self.upstream) == 1 and own is not None:
            return own  # only its own records: the lowest and the newest are the same
        if own is None and self.partition not in self.idle:
            return None
        active = [ts for route, ts in self.upstream.items() if route not in self.idle
                  and (route == self.partition or own is None or ts >= own - self.rules.idle_ms)]
        if active:
            return min(active)
        return max(self.upstream.values()) if self.upstream else None

    def _finish(self, out: BatchResult, drained: bool, changed_customers: set[int] | frozenset[int]) -> None:
        if self.watermark is None:
            return
        out.writes.clocks[clock_key(self.partition)] = PartitionClock(self.watermark, dict(self.upstream),
                                                                         sorted(self.idle))
        limits = out.writes.limits
        for customer in changed_customers:  # a new cap, balance or committed charge
            lkey = limits_key(customer)
            cl = limits.get(lkey) or self.tables.limits.get(lkey)
            if cl is not None and cl.partition == self.partition:
                limits[lkey] = cl
                self._evaluate_spend(customer, cl, out)
        forget = self.watermark - self.rules.retention_ms - HOUR_MS
        for held in limits.values():
            if held is not None:
                held.seen.forget_before(forget)
        self._publish_windows(out, drained)
        self._expire(out)

    # -- limits ------------------------------------------------------------------------------
    def _judge_rates(self, out: BatchResult) -> None:
        assert self.watermark is not None
        judge_to = self.watermark - self.rules.rate_lateness_ms
        if judge_to // 1000 == self.judged_second:
            return  # no new second to judge
        self.judged_second = judge_to // 1000
        limits = out.writes.limits
        for lkey in list(self.active_rates):
            cl = limits.get(lkey) or self.tables.limits.get(lkey)
            if cl is None:
                self.active_rates.discard(lkey)
                continue
            active = False
            for rid, tracker in cl.rates.items():
                if not tracker.counts and not tracker.breached:
                    continue
                tracker.clear_after = self.rules.rate_clear_after_s
                before = (tracker.next_second, tracker.breached)
                crossings = tracker.advance(judge_to)
                if (tracker.next_second, tracker.breached) != before:
                    limits[lkey] = cl
                active = active or bool(tracker.counts) or tracker.breached
                if crossings:
                    customer, service, region = int(lkey), ServiceType(rid >> 11), rid & 2047
                    for c in crossings:
                        window = f"r{region}:{c.second}"
                        out.events.append(LimitEvent(
                            event_id=event_id(customer, c.kind, window, service), customer_id=customer,
                            service_type=service, kind=c.kind, observed=c.observed, limit=c.limit,
                            window=window, at=c.second * 1000, region_id=region))
            if not active:
                self.active_rates.discard(lkey)

    def _evaluate_spend(self, customer: int, cl: CustomerLimits, out: BatchResult, at: int | None = None) -> None:
        """Judges a customer's spend at the watermark (which days are in its window); before
        time is known (a partition that has not read its own records yet), at the request's."""
        now = self.watermark if self.watermark is not None else at
        if now is None:
            return
        for crossing in cl.spend.evaluate(self.view.policy(customer), now, at):
            out.events.append(crossing.event(customer))

    # -- usage windows -----------------------------------------------------------------------
    def _publish_windows(self, out: BatchResult, drained: bool) -> None:
        wm = self.watermark
        assert wm is not None
        closing = [m for m in self.open if m + MINUTE_MS <= wm]
        due = drained or self.last_flush is None or wm - self.last_flush >= self.rules.emit_every_ms
        if due:
            for ukey in self.pending:
                self._emit(ukey, None, out)
            self.pending.clear()
            self.last_flush = wm
        for minute in closing:
            for ukey in self.open.pop(minute):
                self._emit(ukey, minute, out)

    def _emit(self, ukey: bytes, closing: int | None, out: BatchResult) -> None:
        """Publishes the changed windows of a usage value (final once their minute is over);
        with ``closing``, only the windows of that minute, final."""
        usage = out.writes.usage
        uh = usage.get(ukey) or self.tables.usage.get(ukey)
        if uh is None:
            return
        wm = self.watermark
        assert wm is not None
        customer, start = (int(part) for part in ukey.split(b":"))
        for wid, w in uh.windows.items():
            service, network = window_parts(wid)
            if closing is None:
                if w.emitted_revision == w.revision:
                    continue
                final = start + MINUTE_MS <= wm
            elif w.final_revision == w.revision:
                continue
            else:
                final = True
            out.usage.append(WindowRow(customer, service, network, start, w.revision, final, w.totals.as_tuple()))
            w.emitted_revision = w.revision
            if final:
                w.final_revision = w.revision
            usage[ukey] = uh

    def _expire(self, out: BatchResult) -> None:
        """Forgets usage minutes past the retention (late events for them are refused from
        now on) and invalid-key trackers of hours before the last."""
        assert self.watermark is not None
        oldest = floor_to(self.watermark - self.rules.retention_ms, MINUTE_MS) - MINUTE_MS
        for minute in [m for m in self.minutes if m < oldest]:
            for key in self.minutes.pop(minute):
                out.writes.usage[key] = None
        for minute in [m for m in self.open if m < oldest]:
            del self.open[minute]
        last_hour = floor_to(self.watermark, HOUR_MS) - HOUR_MS
        for hour in [h for h in self.invalid_hours if h < last_hour]:
            for key in self.invalid_hours.pop(hour):
                out.writes.invalid_keys[key] = None
                self.invalid_count -= 1
