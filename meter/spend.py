"""Spend limits per customer in event time (docs/metering.md, docs/schema.md): pure state.

Charges in the customer's window = billable requests x 100 µ$ + committed charges. The
window is the last 30 UTC days in day buckets (``rolling_30d``: today and the 29 days before,
so the bucket of day N-30 frees its capacity at 00:00 UTC of day N) or the calendar month of
the watermark (``calendar_month``: resets at 00:00 UTC on the 1st).

Thresholds, each firing once per crossing and re-armed only once the value is back below:
``spend_warning`` at 80 % of the cap; ``spend_cap_reached`` at 100 % (``spend_cleared`` when
back below: the window slid, the month turned, or the cap was raised); ``balance_exhausted``
when the charges (above zero) reach the balance (``balance_restored`` when back below: a
deposit or the window). Money is integer micro-dollars throughout.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meterstream.meter.clock import day_number, month_label, month_of, month_start_ms
from meterstream.schemas.enums import LimitKind, SpendWindow
from meterstream.schemas.limits import LimitEvent, event_id
from meterstream.schemas.money import PRICE_PER_BILLABLE_REQUEST_MICROS

ROLLING_DAYS = 30
WARNING_PERCENT = 80

# (kind fired on crossing up, kind fired on falling back below or None)
_THRESHOLDS = (
    (LimitKind.SPEND_WARNING, None),
    (LimitKind.SPEND_CAP_REACHED, LimitKind.SPEND_CLEARED),
    (LimitKind.BALANCE_EXHAUSTED, LimitKind.BALANCE_RESTORED),
)


@dataclass(frozen=True, slots=True)
class SpendPolicy:
    cap_micros: int
    window: SpendWindow = SpendWindow.ROLLING_30D
    balance_micros: int = 0
    committed_micros: int = 0

    def __post_init__(self) -> None:
        for name in ("cap_micros", "balance_micros", "committed_micros"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be integer micro-dollars, got {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class SpendCrossing:
    kind: LimitKind
    observed: int  # charges in the window, µ$
    limit: int  # the threshold crossed, µ$
    window: str  # "rolling_30d" or the calendar month "YYYY-MM"
    crossing: int  # 1, 2, ... per kind and window label
    at: int  # event time, epoch ms

    def event(self, customer_id: int) -> LimitEvent:
        label = f"{self.window}:{self.crossing}"
        return LimitEvent(event_id=event_id(customer_id, self.kind, label), customer_id=customer_id,
                          kind=self.kind, observed=self.observed, limit=self.limit, window=label,
                          at=self.at)


@dataclass(slots=True)
class SpendTracker:
    billable_by_day: dict[int, int] = field(default_factory=dict)
    above: dict[LimitKind, bool] = field(default_factory=dict)  # threshold currently crossed
    crossings: dict[tuple[LimitKind, str], int] = field(default_factory=dict)
    # the charges of the window last evaluated, kept up to date by add(): evaluating after each
    # billable request is then constant time (not stored: rebuilt on the first evaluation)
    _window: tuple[SpendPolicy, int, int] | None = None  # policy, today, first day of the window
    _charges: int = 0
    _label: str = ""
    _quiet_below: int = 0  # charges under this cross nothing (while no threshold is above)
    _any_above: bool = True

    def add(self, ts_ms: int, billable: int = 1) -> None:
        day = day_number(ts_ms)
        self.billable_by_day[day] = self.billable_by_day.get(day, 0) + billable
        window = self._window
        if window is not None and window[2] <= day <= window[1]:
            self._charges += billable * PRICE_PER_BILLABLE_REQUEST_MICROS

    def charges(self, policy: SpendPolicy, now_ms: int) -> int:
        today = day_number(now_ms)
        first = self._first_day(policy, now_ms, today)
        requests = sum(n for d, n in self.billable_by_day.items() if first <= d <= today)
        return requests * PRICE_PER_BILLABLE_REQUEST_MICROS + policy.committed_micros

    @staticmethod
    def _first_day(policy: SpendPolicy, now_ms: int, today: int) -> int:
        if policy.window is SpendWindow.ROLLING_30D:
            return today - ROLLING_DAYS + 1
        year, month = month_of(now_ms)
        return day_number(month_start_ms(year, month))

    def evaluate(self, policy: SpendPolicy, now_ms: int, at_ms: int | None = None) -> list[SpendCrossing]:
        """Crossings at event time ``now_ms`` (the watermark: which days are in the window),
        in threshold order; ``at_ms`` is the event time of the request that crossed, when one
        did (a crossing's time then does not depend on how far other partitions are)."""
        at = now_ms if at_ms is None else at_ms
        today = now_ms // 86_400_000  # day_number, inlined: this runs after every billable request
        window = self._window
        if window is not None and window[1] == today and (window[0] is policy or window[0] == policy) \
                and self._charges < self._quiet_below and not self._any_above:
            return []  # nothing crossed, and nothing can be crossed below the lowest threshold
        if window is None or window[0] != policy or window[1] != today:
            self._forget_before(today - 31)
            first = self._first_day(policy, now_ms, today)
            self._window = (policy, today, first)
            self._charges = self.charges(policy, now_ms)
            label = "rolling_30d" if policy.window is SpendWindow.ROLLING_30D else month_label(now_ms)
            if label != self._label:
                self._label = label
                # crossings are numbered per window: those of other windows are done with
                self.crossings = {k: n for k, n in self.crossings.items() if k[1] == label}
        charges, label = self._charges, self._label
        out = []
        for up, down in _THRESHOLDS:
            if up is LimitKind.SPEND_WARNING:
                limit = policy.cap_micros * WARNING_PERCENT // 100
            elif up is LimitKind.SPEND_CAP_REACHED:
                limit = policy.cap_micros
            else:
                limit = policy.balance_micros
            reached = charges >= limit and (up is not LimitKind.BALANCE_EXHAUSTED or charges > 0)
            if reached and not self.above.get(up, False):
                self.above[up] = True
                n = self.crossings[(up, label)] = self.crossings.get((up, label), 0) + 1
                out.append(SpendCrossing(up, charges, limit, label, n, at))
            elif not reached and self.above.get(up, False):
                self.above[up] = False
                if down is not None:
                    n = self.crossings[(down, label)] = self.crossings.get((down, label), 0) + 1
                    out.append(SpendCrossing(down, charges, limit, label, n, at))
        self._any_above = any(self.above.values())
        warning = policy.cap_micros * WARNING_PERCENT // 100
        self._quiet_below = min(warning, policy.cap_micros, max(policy.balance_micros, 1))
        return out

    def _forget_before(self, day: int) -> None:
        for old in [d for d in self.billable_by_day if d < day]:
            del self.billable_by_day[old]
