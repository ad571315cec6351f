"""The meter stage of the worker: resolved records of one meter.resolved partition -> usage
windows, rate and spend limits, in event time (SPEC §6). No Kafka and no faust here: the
worker (meter/worker.py) hands batches in and writes what comes out, so this logic is tested
with plain dicts as tables.

Per batch:
1. each record is checked (too late, from the future, unmeterable -> dead letters), then
   applied to its usage window, its rate tracker and, when billable, its customer's spend,
   each only if that aggregate's high-water mark for the record's stream is below the record
   (meter.highwater: repeats are skipped, aggregate by aggregate);
2. the partition's watermark (highest event time applied) judges rate seconds, closes
   windows and is "now" for spend windows;
3. out come the UsageWindow and LimitEvent messages to publish and the table values to
   write; the worker publishes first and writes the tables only once Kafka has acknowledged
   the messages, so a crash in between repeats a message (same window revision, same
   event_id) rather than losing it.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

from meterstream.meter.aggregates import (
    PartitionClock,
    RateState,
    SpendState,
    WindowState,
    clock_key,
    rate_key,
    spend_key,
    window_key,
)
from meterstream.meter.clock import HOUR_MS, MINUTE_MS, SECOND_MS, floor_to
from meterstream.meter.highwater import stream_key
from meterstream.meter.config_view import ConfigView
from meterstream.meter.rate import CLEAR_AFTER, RateTracker
from meterstream.meter.usage import count_request
from meterstream.schemas.enums import ServiceType, TrafficType
from meterstream.schemas.limits import LimitEvent, event_id
from meterstream.schemas.usage import COUNTS, UsageWindow


@dataclass(frozen=True)
class MeterRules:
    retention_ms: int = 48 * HOUR_MS  # late events count while their window is this recent
    future_ms: int = 5 * MINUTE_MS  # events further ahead (of watermark and wall clock) are refused
    emit_every_ms: int = SECOND_MS  # a changed window is published at most this often (event time)
    rate_lateness_ms: int = 2 * SECOND_MS  # a second is judged once the watermark is this far past it
    rate_clear_after_s: int = CLEAR_AFTER  # seconds under the allowance that clear a rate breach
    idle_ms: int = MINUTE_MS  # an upstream partition this far behind the others no longer holds time back


# the meter stage's tables and the kind of their values (meter.aggregates.STATE_TYPES)
TABLE_KINDS = {"windows": "window", "rates": "rate", "spends": "spend", "clocks": "partition_clock"}


@dataclass
class Tables:
    """The faust tables of the meter stage (any mutable mapping in tests)."""

    windows: MutableMapping[bytes, WindowState]
    rates: MutableMapping[bytes, RateState]
    spends: MutableMapping[bytes, SpendState]
    clocks: MutableMapping[bytes, int]


@dataclass
class Rejection:
    record: dict[str, Any]
    reason: str
    detail: str


@dataclass
class BatchResult:
    usage: list[UsageWindow] = field(default_factory=list)
    events: list[LimitEvent] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    # table -> key -> new value (None: delete)
    writes: dict[str, dict[bytes, Any]] = field(default_factory=lambda: {"windows": {}, "rates": {}, "spends": {}, "clocks": {}})
    applied: int = 0  # records counted
    repeats: int = 0  # records skipped as already applied


def region_of(server_id: int | None) -> int:
    """SPEC §2: server_id = (region_id << 4) | server_num; no server id counts as region 0."""
    return 0 if server_id is None else server_id >> 4


class MeterPartition:
    def __init__(self, partition: int, tables: Tables, view: ConfigView, rules: MeterRules | None = None) -> None:
        self.partition = partition
        self.tables = tables
        self.view = view
        self.rules = rules or MeterRules()
        clock = tables.clocks.get(clock_key(partition)) or PartitionClock()
        self.watermark: int | None = clock.watermark
        self.upstream: dict[int, int] = dict(clock.upstream)  # upstream partition -> highest event time
        # indexes hold keys only: the values stay in the tables (serialized in the worker)
        self.pending: set[bytes] = set()  # windows changed since last published
        self.open: dict[int, set[bytes]] = {}  # minute -> windows not yet final
        self.minutes: dict[int, set[bytes]] = {}  # minute -> every window kept, for retention
        self.active_rates: set[bytes] = set()  # trackers with seconds to judge, or breached
        self.last_flush: int | None = None
        self.judged_second: int | None = None
        self._recover()

    def _recover(self) -> None:
        """Rebuilds the in-memory indexes from the tables (after a restart or a rebalance)."""
        for key, ws in list(self.tables.windows.items()):
            if ws.partition != self.partition:
                continue
            minute = int(key.rsplit(b":", 1)[1])
            self.minutes.setdefault(minute, set()).add(key)
            if ws.final_revision < ws.revision:
                self.open.setdefault(minute, set()).add(key)
            if ws.emitted_revision < ws.revision:
                self.pending.add(key)
        for key, rs in list(self.tables.rates.items()):
            if rs.partition == self.partition and (rs.tracker.counts or rs.tracker.breached):
                self.active_rates.add(key)

    def _window(self, key: bytes, out: BatchResult) -> WindowState | None:
        return out.writes["windows"].get(key) or self.tables.windows.get(key)

    def _rate(self, key: bytes, out: BatchResult) -> RateState | None:
        return out.writes["rates"].get(key) or self.tables.rates.get(key)

    # -- one batch ---------------------------------------------------------------------------
    def process(self, records: list[dict[str, Any]], now_ms: int, drained: bool,
                changed_customers: set[int] = frozenset()) -> BatchResult:  # type: ignore[assignment]
        out = BatchResult()
        touched_spend: dict[int, SpendState] = {}
        for record in records:
            self._apply(record, now_ms, out, touched_spend)
        if self.watermark is not None:
            out.writes["clocks"][clock_key(self.partition)] = PartitionClock(self.watermark, dict(self.upstream))
            for customer in changed_customers:  # a new cap, balance or committed charge
                state = touched_spend.get(customer) or self.tables.spends.get(spend_key(customer))
                if state is not None and state.partition == self.partition:
                    touched_spend[customer] = state
                    self._evaluate_spend(customer, state, out)
            forget = self.watermark - self.rules.retention_ms - HOUR_MS
            for customer, state in touched_spend.items():
                state.seen.forget_before(forget)
                out.writes["spends"][spend_key(customer)] = state
            self._publish_windows(out, drained)
            self._expire(out)
        return out

    def _apply(self, r: dict[str, Any], now_ms: int, out: BatchResult, touched_spend: dict[int, SpendState]) -> None:
        ts = r["ts"]
        rules = self.rules
        wm = self.watermark
        ahead_of = now_ms if wm is None or now_ms > wm else wm
        if ts > ahead_of + rules.future_ms:
            out.rejected.append(Rejection(r, "from_the_future", f"event time {ts} is more than "
                                          f"{rules.future_ms} ms ahead of {ahead_of}"))
            return
        if wm is not None and ts < wm - rules.retention_ms:
            out.rejected.append(Rejection(r, "too_late", f"event time {ts} is more than "
                                          f"{rules.retention_ms} ms behind the watermark {wm}"))
            return
        service, network = r.get("service_type"), r.get("network")
        if service is None or network is None:
            out.rejected.append(Rejection(r, "unmeterable", "the record names no service type or network"))
            return
        customer = r["customer_id"]
        fp = r.get("api_key_fp")
        src = r["src"]
        stream, offset = stream_key(src["stream"], fp), src["offset"]

        minute = ts - ts % MINUTE_MS
        wkey = window_key(customer, service, network, minute)
        ws = self._window(wkey, out)
        if ws is None:
            ws = WindowState(self.partition)
            self.minutes.setdefault(minute, set()).add(wkey)
        if ws.seen.apply(stream, offset, ts):
            count_request(ws.totals, r["traffic_type"], r["status"], r["bytes_sent"], r.get("Ta", -1))
            ws.revision += 1
            self.pending.add(wkey)
            self.open.setdefault(minute, set()).add(wkey)
            out.writes["windows"][wkey] = ws
            out.applied += 1
        else:
            out.repeats += 1
        upstream = r["upstream"]["partition"]
        if ts > self.upstream.get(upstream, -1):
            self.upstream[upstream] = ts
            moved = self._watermark()
            if wm is None or moved > wm:
                self.watermark = moved
                if (moved - rules.rate_lateness_ms) // 1000 != self.judged_second:
                    self._judge_rates(out)  # the watermark entered a new second
        if customer == 0:
            return

        allowed = self.view.allowance(customer, service)
        if allowed is not None:
            rkey = rate_key(customer, service, region_of(r.get("server_id")))
            rs = self._rate(rkey, out)
            if rs is None:
                rs = RateState(self.partition, RateTracker(allowed))
            rs.tracker.allowed = allowed
            if rs.seen.apply(stream, offset, ts):
                rs.tracker.hit(ts)
                self.active_rates.add(rkey)
                out.writes["rates"][rkey] = rs

        status = r["status"]
        if TrafficType(r["traffic_type"]).is_chargeable and 200 <= status <= 399:
            skey = spend_key(customer)
            ss = touched_spend.get(customer) or self.tables.spends.get(skey) or SpendState(self.partition)
            if ss.seen.apply(stream, offset, ts):
                ss.tracker.add(ts)
                touched_spend[customer] = ss
                # judged record by record, so that a crossing's values do not depend on batching
                self._evaluate_spend(customer, ss, out)
        else:
            # a customer over a threshold is refused, so its requests are not billable: they
            # still move time, and the window sliding (or the month turning) can clear it
            ss = touched_spend.get(customer) or self.tables.spends.get(spend_key(customer))
            if ss is not None and ss.partition == self.partition and any(ss.tracker.above.values()):
                touched_spend[customer] = ss
                self._evaluate_spend(customer, ss, out)

    def _watermark(self) -> int:
        """The lowest of the upstream partitions' event times: records of one customer come
        through every haproxy.logs partition its keys hash to, each in its own order, so time
        has passed only once it has passed in all of them (a resolver that lags after a crash
        holds the watermark back instead of making its records late). An upstream partition
        more than ``idle_ms`` behind the others is idle (its keys went quiet) and does not
        hold it back."""
        newest = max(self.upstream.values())
        return min(ts for ts in self.upstream.values() if ts >= newest - self.rules.idle_ms)

    # -- limits ------------------------------------------------------------------------------
    def _judge_rates(self, out: BatchResult) -> None:
        assert self.watermark is not None
        judge_to = self.watermark - self.rules.rate_lateness_ms
        if judge_to // 1000 == self.judged_second:
            return  # no new second to judge
        self.judged_second = judge_to // 1000
        for rkey in list(self.active_rates):
            rs = self._rate(rkey, out)
            if rs is None:
                self.active_rates.discard(rkey)
                continue
            rs.tracker.clear_after = self.rules.rate_clear_after_s
            before = (rs.tracker.next_second, rs.tracker.breached)
            crossings = rs.tracker.advance(judge_to)
            if (rs.tracker.next_second, rs.tracker.breached) != before:
                out.writes["rates"][rkey] = rs
            if not rs.tracker.counts and not rs.tracker.breached:
                self.active_rates.discard(rkey)
            if not crossings:
                continue
            customer, service, region = (int(part) for part in rkey.split(b":"))
            for c in crossings:
                window = f"r{region}:{c.second}"
                out.events.append(LimitEvent(
                    event_id=event_id(customer, c.kind, window, ServiceType(service)), customer_id=customer,
                    service_type=ServiceType(service), kind=c.kind, observed=c.observed, limit=c.limit,
                    window=window, at=c.second * 1000, region_id=region))

    def _evaluate_spend(self, customer: int, ss: SpendState, out: BatchResult) -> None:
        assert self.watermark is not None
        for crossing in ss.tracker.evaluate(self.view.policy(customer), self.watermark):
            out.events.append(crossing.event(customer))

    # -- usage windows -----------------------------------------------------------------------
    def _publish_windows(self, out: BatchResult, drained: bool) -> None:
        wm = self.watermark
        assert wm is not None
        closing = [m for m in self.open if m + MINUTE_MS <= wm]
        due = drained or self.last_flush is None or wm - self.last_flush >= self.rules.emit_every_ms
        if due:
            for key in self.pending:
                ws = self._window(key, out)
                if ws is not None:
                    minute = int(key.rsplit(b":", 1)[1])
                    self._emit(key, ws, final=minute + MINUTE_MS <= wm, out=out)
            self.pending.clear()
            self.last_flush = wm
        for minute in closing:
            for key in self.open.pop(minute):
                ws = self._window(key, out)
                if ws is not None and ws.final_revision < ws.revision:
                    self._emit(key, ws, final=True, out=out)
                    self.pending.discard(key)

    def _emit(self, key: bytes, ws: WindowState, final: bool, out: BatchResult) -> None:
        customer, service, network, minute = (int(part) for part in key.split(b":"))
        out.usage.append(UsageWindow(customer_id=customer, service_type=ServiceType(service), network=network,
                                     window_start=minute, revision=ws.revision, final=final,
                                     **{name: getattr(ws.totals, name) for name in COUNTS}))
        ws.emitted_revision = ws.revision
        if final:
            ws.final_revision = ws.revision
        out.writes["windows"][key] = ws

    def _expire(self, out: BatchResult) -> None:
        """Forgets windows past the retention: late events for them are refused from now on."""
        assert self.watermark is not None
        oldest = floor_to(self.watermark - self.rules.retention_ms, MINUTE_MS) - MINUTE_MS
        for minute in [m for m in self.minutes if m < oldest]:
            for key in self.minutes.pop(minute):
                out.writes["windows"][key] = None
                self.pending.discard(key)
            self.open.pop(minute, None)
