"""Metering rules (meter/meter_stage.py, rate.py, spend.py): pure logic, table-driven, no services."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from meterstream.meter.aggregates import usage_key, window_id
from meterstream.meter.clock import DAY_MS, HOUR_MS, MINUTE_MS
from meterstream.meter.config_view import ConfigView, slot
from meterstream.meter.meter_stage import BatchResult, MeterPartition, Tables
from meterstream.meter.rate import CLEAR_AFTER, RateTracker, allowance
from meterstream.meter.spend import SpendPolicy, SpendTracker
from meterstream.schemas.config import CustomerState, InstanceState
from meterstream.schemas.enums import LimitKind, Network, ServiceType, SpendWindow, Tier, TrafficType
from meterstream.schemas.records import LogRecord, SourcePosition
from tests.examples import configure


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


T0 = ms("2026-11-25T10:00:00")
SEAL, MAIN = ServiceType.SEAL, Network.MAINNET


# -- usage windows (meter/meter_stage.py over plain dicts) -----------------------------------

class Meter:
    """One partition of the meter stage, fed one record at a time: customer 7's seal key
    (fingerprint 5)."""

    def __init__(self) -> None:
        self.tables = Tables({}, {}, {}, {})
        view = ConfigView()
        view.keys[5] = slot(7, SEAL)
        self.stage = MeterPartition(0, self.tables, view)
        self.offset = 0

    def add(self, ts: int, traffic: int = 1, status: int = 200, size: int = 100, ta: int = 10,
            now: int | None = None, drained: bool = False) -> BatchResult:
        self.offset += 1
        record = LogRecord(ts=ts, request_id=f"r{self.offset}", client_ip="10.0.0.1", api_key_fp=5,
                           service_type=SEAL, network=MAIN, traffic_type=TrafficType(traffic), status=status,
                           bytes_sent=size,
                           Ta=ta, server_id=17, src=SourcePosition(stream="f", offset=self.offset))
        return self.apply(self.stage.process([(self.offset, record)], T0 if now is None else now, drained))

    def apply(self, result: BatchResult) -> BatchResult:
        for name, writes in result.writes.items():
            for key, value in writes.items():
                if value is None:
                    getattr(self.tables, name).pop(key, None)
                else:
                    getattr(self.tables, name)[key] = value
        return result


def refused(result: BatchResult) -> str | None:
    return result.rejected[0].reason if result.rejected else None


def test_minute_windows_and_totals() -> None:
    m = Meter()
    for ts, traffic, status in [(T0, 1, 200), (T0 + 59_999, 2, 304), (T0 + 30_000, 1, 404),
                                (T0 + 1, 3, 403), (T0 + 2, 1, 503), (T0 + 60_000, 1, 200)]:
        assert refused(m.add(ts, traffic, status, ta=-1 if status == 403 else 10)) is None
    (first_key, first), (second_key, second) = sorted(m.tables.usage.items())
    assert (first_key, second_key) == (usage_key(7, T0), usage_key(7, T0 + MINUTE_MS))
    assert list(first.windows) == list(second.windows) == [window_id(SEAL, MAIN)]
    t = first.windows[window_id(SEAL, MAIN)].totals
    assert (t.requests, t.billable, t.denied, t.client_errors, t.server_errors) == (5, 2, 1, 2, 1)
    assert (t.bytes_sent, t.ta_sum_ms) == (500, 40)  # -1 (not reached) adds nothing


def test_emission_is_throttled_to_a_second_of_event_time_then_final() -> None:
    m = Meter()
    assert [(u.revision, u.final) for u in m.add(T0).usage] == [(1, False)]
    assert m.add(T0 + 200).usage == []  # changed, but within a second of the last emission
    assert [(u.revision, u.counts[0]) for u in m.add(T0 + 1_000).usage] == [(3, 3)]
    assert m.apply(m.stage.process([], T0, drained=False)).usage == []
    out = m.add(T0 + MINUTE_MS).usage  # the watermark passes the first window's end: it closes
    assert sorted((u.window_start, u.revision, u.final) for u in out) == [(T0, 3, True), (T0 + MINUTE_MS, 1, False)]
    assert m.apply(m.stage.process([], T0, drained=False)).usage == []


def test_a_drained_partition_publishes_at_once() -> None:
    m = Meter()
    m.add(T0)
    assert [(u.revision, u.final) for u in m.add(T0 + 200, drained=True).usage] == [(2, False)]


@pytest.mark.parametrize(
    ("offset", "reason"),
    [(-47 * HOUR_MS, None), (-48 * HOUR_MS, None), (-48 * HOUR_MS - 1, "too_late"),
     (5 * MINUTE_MS, None), (5 * MINUTE_MS + 1, "from_the_future")],
)
def test_late_and_future_events(offset: int, reason: str | None) -> None:
    m = Meter()
    m.add(T0)
    result = m.add(T0 + offset)
    assert refused(result) == reason
    if reason is None and offset < 0:
        late = [u.model() for u in result.usage if u.window_start == T0 + offset - (T0 + offset) % MINUTE_MS]
        assert late and late[0].requests == 1 and late[0].final  # counted in its own window


def test_future_is_judged_against_the_wall_clock_too() -> None:
    m = Meter()
    assert refused(m.add(T0, now=T0 + HOUR_MS)) is None  # old data replayed: never "future"
    assert refused(m.add(T0 + HOUR_MS + 4 * MINUTE_MS, now=T0 + HOUR_MS)) is None
    assert refused(m.add(T0 + 3 * HOUR_MS, now=T0 + HOUR_MS)) == "from_the_future"


def test_windows_past_retention_are_forgotten() -> None:
    m = Meter()
    m.add(T0)
    m.add(T0 + 49 * HOUR_MS, now=T0 + 49 * HOUR_MS)  # not "future": the clock agrees
    assert list(m.tables.usage) == [usage_key(7, T0 + 49 * HOUR_MS)]


def test_replay_gives_the_same_outputs() -> None:
    events = [(T0 + i * 137 % 200_000, 1 + i % 3, [200, 404, 500][i % 3]) for i in range(2_000)]

    def run() -> list:
        m, out = Meter(), []
        for ts, traffic, status in events:
            out += m.add(ts, traffic, status).usage
        return out

    assert run() == run()


# -- rate --------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("tier", "guaranteed", "burst", "allowed"),
    [(Tier.STARTER, None, None, 100), (Tier.PRO, None, None, 2_000), (Tier.PRO, 1_500, None, 2_000),
     (Tier.ENTERPRISE, 5_000, 8_000, 8_000), (Tier.ENTERPRISE, 5_000, None, 5_000)],
)
def test_allowance_per_tier(tier: Tier, guaranteed: int | None, burst: int | None, allowed: int) -> None:
    assert allowance(tier, guaranteed, burst) == allowed


def feed(tracker: RateTracker, per_second: list[int], start_s: int = 1_000) -> list[tuple[str, int]]:
    out = []
    for i, n in enumerate(per_second):
        tracker.hit((start_s + i) * 1000, n)
        out += [(c.kind.value, c.second - start_s) for c in tracker.advance((start_s + i) * 1000)]
    out += [(c.kind.value, c.second - start_s) for c in tracker.advance((start_s + len(per_second)) * 1000)]
    return out


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        ([101, 101], []),  # two seconds over: not yet
        ([101, 101, 101], [("rate_exceeded", 2)]),
        ([101, 101, 100, 101, 101], []),  # exactly the limit is not over: the run restarts
        ([101] * 5, [("rate_exceeded", 2)]),  # once per crossing
        ([101] * 3 + [50] * (CLEAR_AFTER - 1), [("rate_exceeded", 2)]),
        ([101] * 3 + [50] * CLEAR_AFTER, [("rate_exceeded", 2), ("rate_cleared", 2 + CLEAR_AFTER)]),
        ([101] * 3 + [50] * 30 + [101] + [50] * 59, [("rate_exceeded", 2)]),  # an over second resets
    ],
)
def test_rate_exceeded_after_3s_cleared_after_60s(seconds: list[int], expected: list) -> None:
    assert feed(RateTracker(allowed=100), seconds) == expected


def test_silence_clears_at_the_right_second_without_judging_each() -> None:
    tracker = RateTracker(allowed=100)
    assert feed(tracker, [500, 500, 500]) == [("rate_exceeded", 2)]
    crossings = tracker.advance((1_000 + 10_000) * 1000)  # hours of silence at once
    assert [(c.kind, c.second - 1_000, c.observed) for c in crossings] == [
        (LimitKind.RATE_CLEARED, 2 + CLEAR_AFTER, 0)]


def test_late_hits_do_not_change_judged_seconds() -> None:
    tracker = RateTracker(allowed=10)
    tracker.hit(1_000_000, 5)
    tracker.advance(1_002_000)
    tracker.hit(1_000_500, 100)  # second 1000 is judged already
    assert tracker.counts == {}


# -- spend -------------------------------------------------------------------------------------

CAP = 100_000_000  # $100 in µ$: 1,000,000 billable requests
FUNDED = 10**12  # a balance that no test reaches, where the cap is the subject


def kinds(crossings: list) -> list[str]:
    return [c.kind.value for c in crossings]


def test_thresholds_fire_once_per_crossing_with_hysteresis() -> None:
    s, policy = SpendTracker(), SpendPolicy(cap_micros=CAP, balance_micros=FUNDED)
    s.add(T0, 799_999)
    assert kinds(s.evaluate(policy, T0)) == []
    s.add(T0, 1)  # exactly 80 %
    assert kinds(s.evaluate(policy, T0)) == ["spend_warning"]
    s.add(T0, 100_000)
    assert kinds(s.evaluate(policy, T0)) == []  # still above 80 %: no second warning
    s.add(T0, 100_000)
    reached = s.evaluate(policy, T0)
    assert kinds(reached) == ["spend_cap_reached"]
    assert (reached[0].observed, reached[0].limit) == (CAP, CAP)
    raised = SpendPolicy(cap_micros=2 * CAP, balance_micros=FUNDED)  # the cap is raised: capacity returns
    assert kinds(s.evaluate(raised, T0)) == ["spend_cleared"]
    # lowered again: 2nd crossings (the raise had re-armed the warning too)
    assert kinds(s.evaluate(policy, T0)) == ["spend_warning", "spend_cap_reached"]
    ids = [c.event(7).event_id for c in [*reached, *s.evaluate(raised, T0)]]
    assert ids == ["7:-:spend_cap_reached:rolling_30d:1", "7:-:spend_cleared:rolling_30d:2"]


def test_rolling_window_day_30_to_31_frees_capacity() -> None:
    s, policy = SpendTracker(), SpendPolicy(cap_micros=CAP, balance_micros=FUNDED)
    day0 = ms("2026-11-01T12:00:00")
    s.add(day0, 1_000_000)
    assert kinds(s.evaluate(policy, day0)) == ["spend_warning", "spend_cap_reached"]
    last_day_in = ms("2026-11-30T23:59:59.999")  # day 29 after day 0: still in the window
    assert s.charges(policy, last_day_in) == CAP and s.evaluate(policy, last_day_in) == []
    freed = ms("2026-12-01T00:00:00")  # day 30: day 0's bucket leaves the window
    assert s.charges(policy, freed) == 0
    assert kinds(s.evaluate(policy, freed)) == ["spend_cleared"]


def test_a_day_that_frees_part_of_the_capacity() -> None:
    s, policy = SpendTracker(), SpendPolicy(cap_micros=CAP, balance_micros=FUNDED)
    s.add(ms("2026-11-01T08:00:00"), 300_000)
    s.add(ms("2026-11-15T08:00:00"), 700_000)
    now = ms("2026-11-30T08:00:00")
    assert kinds(s.evaluate(policy, now)) == ["spend_warning", "spend_cap_reached"]
    after = ms("2026-12-01T00:00:00")  # Nov 1 leaves; 70 % remains: cap cleared, warning re-armed
    assert kinds(s.evaluate(policy, after)) == ["spend_cleared"]
    s.add(after, 100_000)
    assert kinds(s.evaluate(policy, after)) == ["spend_warning"]


@pytest.mark.parametrize(
    ("reached_at", "reset_at", "old", "new"),
    [("2026-02-28T23:59:59.999", "2026-03-01T00:00:00", "2026-02", "2026-03"),
     ("2028-02-29T12:00:00", "2028-03-01T00:00:00", "2028-02", "2028-03"),
     ("2026-12-31T23:59:59.999", "2027-01-01T00:00:00", "2026-12", "2027-01")],
)
def test_calendar_month_resets_at_midnight_utc_on_the_1st(reached_at: str, reset_at: str, old: str, new: str) -> None:
    s, policy = SpendTracker(), SpendPolicy(cap_micros=CAP, window=SpendWindow.CALENDAR_MONTH, balance_micros=FUNDED)
    s.add(ms(reached_at), 1_000_000)
    reached = s.evaluate(policy, ms(reached_at))
    assert [(c.kind.value, c.window) for c in reached] == [("spend_warning", old), ("spend_cap_reached", old)]
    assert s.evaluate(policy, ms(reset_at) - 1) == []
    cleared = s.evaluate(policy, ms(reset_at))
    assert [(c.kind.value, c.window) for c in cleared] == [("spend_cleared", new)]
    s.add(ms(reset_at), 1_000_000)
    again = s.evaluate(policy, ms(reset_at))
    assert [c.event(7).event_id for c in again] == [
        f"7:-:spend_warning:{new}:1", f"7:-:spend_cap_reached:{new}:1"]


def test_committed_charges_count_and_balance_thresholds() -> None:
    s = SpendTracker()
    policy = SpendPolicy(cap_micros=CAP, balance_micros=25_000_000, committed_micros=5_000_000)
    assert s.charges(policy, T0) == 5_000_000
    assert kinds(s.evaluate(SpendPolicy(cap_micros=CAP), T0)) == []  # nothing owed: not exhausted
    s.add(T0, 199_999)  # 19,999,900 + 5,000,000 committed: 100 µ$ below the balance
    assert kinds(s.evaluate(policy, T0)) == []
    s.add(T0, 1)
    assert kinds(s.evaluate(policy, T0)) == ["balance_exhausted"]
    deposit = SpendPolicy(cap_micros=CAP, balance_micros=125_000_000, committed_micros=5_000_000)
    assert kinds(s.evaluate(deposit, T0)) == ["balance_restored"]


def test_money_is_never_a_float() -> None:
    with pytest.raises(TypeError, match="integer micro-dollars"):
        SpendPolicy(cap_micros=100.0)  # type: ignore[arg-type]
    s = SpendTracker()
    s.add(T0, 3)
    assert isinstance(s.charges(SpendPolicy(cap_micros=CAP, balance_micros=FUNDED), T0), int)


def test_event_ids_are_deterministic_across_replays() -> None:
    def scenario() -> list[str]:
        s, out = SpendTracker(), []
        for day in range(60):
            now = ms("2026-10-01T12:00:00") + day * DAY_MS
            s.add(now, 90_000)
            out += [c.event(7).event_id for c in s.evaluate(SpendPolicy(cap_micros=CAP, balance_micros=FUNDED), now)]
        return out

    first = scenario()
    assert first == scenario() and len(first) == len(set(first))


def test_a_refused_customer_is_cleared_when_its_window_slides() -> None:
    """At its cap a customer gets 403s, which are not billable: those requests must still let
    the rolling window slide and clear the breach (30 days later), or it stays suspended."""
    m = Meter()
    policy = SpendPolicy(cap_micros=100_000_000, committed_micros=99_999_900,  # one request from the cap
                         balance_micros=10**12)
    configure(m.stage.view, CustomerState(customer_id=7, spend_cap_micros=policy.cap_micros,
                                          committed_charges_micros=policy.committed_micros,
                                          balance_micros=policy.balance_micros))
    assert [e.kind for e in m.add(T0).events] == [LimitKind.SPEND_WARNING, LimitKind.SPEND_CAP_REACHED]
    assert m.add(T0 + DAY_MS, traffic=3, status=403, now=T0 + DAY_MS).events == []  # still within the window
    cleared = m.add(T0 + 30 * DAY_MS, traffic=3, status=403, now=T0 + 30 * DAY_MS).events
    assert [(e.kind, e.observed) for e in cleared] == [(LimitKind.SPEND_CLEARED, 99_999_900)]


def test_window_totals_are_the_models_counters_and_saturate() -> None:
    from dataclasses import fields

    from meterstream.meter.usage import Totals, count_request
    from meterstream.schemas.enums import TrafficType
    from meterstream.schemas.types import INT64_MAX
    from meterstream.schemas.usage import COUNTS

    assert tuple(f.name for f in fields(Totals)) == COUNTS
    t = Totals()
    for _ in range(3):  # two records near the bound of bytes_sent would pass 2**63: it stays there
        count_request(t, TrafficType.GUARANTEED, 200, 2**53 - 1, 2**31 - 1)
    t.bytes_sent = INT64_MAX - 5
    count_request(t, TrafficType.GUARANTEED, 200, 2**53 - 1, -1)
    assert t.bytes_sent == INT64_MAX and t.requests == 4 and t.ta_sum_ms == 3 * (2**31 - 1)


def test_rate_counts_what_haproxy_served() -> None:
    """Requests HAProxy refused (traffic 3-6: 429s of a throttled customer) do not
    count towards the rate, so a breach clears 60 s after the served rate drops."""
    m = Meter()
    configure(m.stage.view, InstanceState(customer_id=7, service_type=SEAL, tier=Tier.ENTERPRISE, guaranteed_rps=10))
    events = []
    for second in range(80):
        served = 20 if second < 3 else 0
        for i in range(served):
            events += m.add(T0 + second * 1000 + i).events
        for i in range(200):  # the client keeps retrying at 20x its rate: refused
            events += m.add(T0 + second * 1000 + 500 + i, traffic=3, status=429).events
    rate = [(e.kind, e.at) for e in events if e.kind in (LimitKind.RATE_EXCEEDED, LimitKind.RATE_CLEARED)]
    assert rate == [(LimitKind.RATE_EXCEEDED, T0 + 2_000), (LimitKind.RATE_CLEARED, T0 + 62_000)]


def test_rate_trackers_per_service_are_bounded_in_regions() -> None:
    """A customer's requests from 20 regions (server_id = region << 4): 16 are rate-tracked,
    the others only counted (its limits value stays bounded whatever server ids arrive)."""
    from meterstream.meter.aggregates import limits_key
    from meterstream.meter.meter_stage import MAX_REGIONS

    m = Meter()
    configure(m.stage.view, InstanceState(customer_id=7, service_type=SEAL, tier=Tier.ENTERPRISE, guaranteed_rps=10))
    untracked = 0
    for region in range(MAX_REGIONS + 4):
        m.offset += 1
        record = LogRecord(ts=T0 + region, request_id=f"g{region}", client_ip="10.0.0.1", api_key_fp=5,
                           service_type=SEAL, network=MAIN, traffic_type=TrafficType.GUARANTEED, status=200,
                           bytes_sent=1,
                           server_id=region << 4 | 1, src=SourcePosition(stream="f", offset=m.offset))
        untracked += m.apply(m.stage.process([(m.offset, record)], T0, drained=False)).untracked_regions
    assert untracked == 4 and len(m.tables.limits[limits_key(7)].rates) == MAX_REGIONS


def test_customers_with_the_same_configuration_share_one_entry() -> None:
    """The config view holds a customer's policy, allowances and partition as one tuple,
    shared by every customer whose configuration is the same (700,000 entries in 40 MiB)."""
    view = ConfigView(partition_of=lambda customer: customer % 4)
    for c in range(1, 101):
        configure(view, CustomerState(customer_id=c, balance_micros=10**9),
                  InstanceState(customer_id=c, service_type=SEAL, tier=Tier.PRO))
    assert len({id(view.customers[c]) for c in range(1, 101)}) == 4  # one per partition
    assert view.allowance(5, SEAL) == 2_000 and view.allowance(5, ServiceType.GRPC) is None
    assert view.partition(5) == 1 and view.partition(1_000) is None
    assert view.policy(5).balance_micros == 10**9 and view.policy(1_000).balance_micros == 0
    configure(view, CustomerState(customer_id=5, balance_micros=1))
    assert view.policy(5).balance_micros == 1 and view.policy(9).balance_micros == 10**9
