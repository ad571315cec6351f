"""Rate breaches per (customer, service, region) in event time (docs/metering.md): pure state.

Requests are counted per second of event time. A second is judged once the watermark has
passed it: over when its count exceeds the allowance (the burst allowance where the tier
has one, else the guaranteed rate). ``rate_exceeded`` fires after EXCEED_AFTER consecutive
seconds over, once; ``rate_cleared`` after CLEAR_AFTER consecutive seconds not over. Seconds
without requests are not over. Hits for a second already judged are late and do not change
the decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meterstream.schemas.enums import LimitKind, Tier
from meterstream.schemas.tiers import effective_limits

EXCEED_AFTER = 3
CLEAR_AFTER = 60


def allowance(tier: Tier, guaranteed_rps: int | None = None, burst_rps: int | None = None) -> int:
    """Requests per second a service instance may make before it is over its rate."""
    config = {k: v for k, v in (("guaranteed_rps", guaranteed_rps), ("burst_rps", burst_rps)) if v is not None}
    limits = effective_limits(tier, config)
    return limits.burst_rps if limits.burst_rps is not None else limits.guaranteed_rps


@dataclass(frozen=True, slots=True)
class RateCrossing:
    kind: LimitKind  # RATE_EXCEEDED or RATE_CLEARED
    second: int  # epoch seconds of the second that decided it
    observed: int  # requests in that second
    limit: int


@dataclass(slots=True)
class RateTracker:
    allowed: int
    counts: dict[int, int] = field(default_factory=dict)  # epoch second -> requests
    next_second: int | None = None  # the first second not yet judged
    over_run: int = 0
    under_run: int = 0
    breached: bool = False
    clear_after: int = CLEAR_AFTER  # a rule, not state: set from the worker's settings

    def hit(self, ts_ms: int, requests: int = 1) -> None:
        second = ts_ms // 1000
        if self.next_second is not None and second < self.next_second:
            return  # late: that second is judged already
        self.counts[second] = self.counts.get(second, 0) + requests
        if self.next_second is None:
            self.next_second = second

    def advance(self, watermark_ms: int) -> list[RateCrossing]:
        """Judge every second before the watermark's; returns the crossings, in order."""
        end = watermark_ms // 1000
        out: list[RateCrossing] = []
        while self.next_second is not None and self.next_second < end:
            second = self.next_second
            count = self.counts.pop(second, 0)
            self._judge(second, count, out)
            # seconds up to the next one with requests (or the watermark) are empty: judge
            # them at once instead of one by one
            upcoming = min(self.counts) if self.counts else end
            target = min(upcoming, end)
            self._judge_empty(second + 1, target, out)
            self.next_second = target
        return out

    def _judge(self, second: int, count: int, out: list[RateCrossing]) -> None:
        if count > self.allowed:
            self.over_run += 1
            self.under_run = 0
        else:
            self.under_run += 1
            self.over_run = 0
        if not self.breached and self.over_run >= EXCEED_AFTER:
            self.breached = True
            out.append(RateCrossing(LimitKind.RATE_EXCEEDED, second, count, self.allowed))
        elif self.breached and self.under_run >= self.clear_after:
            self.breached = False
            out.append(RateCrossing(LimitKind.RATE_CLEARED, second, count, self.allowed))

    def _judge_empty(self, first: int, stop: int, out: list[RateCrossing]) -> None:
        gap = stop - first
        if gap <= 0:
            return
        self.over_run = 0
        if self.breached and self.under_run + gap >= self.clear_after:
            clearing = first + (self.clear_after - self.under_run) - 1
            self.breached = False
            out.append(RateCrossing(LimitKind.RATE_CLEARED, clearing, 0, self.allowed))
        self.under_run += gap
