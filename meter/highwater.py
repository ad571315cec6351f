"""High-water marks of applied source positions: how an aggregate recognises a record it has
already counted (SPEC §6, docs/metering.md "Exactly once").

Positions only grow along one ordered stream. A log line reaches a customer's aggregate
through the partition of its key fingerprint, so the ordered stream is (file, fingerprint):
lines of one file with one key travel through one haproxy.logs partition, one resolver, and
one meter.resolved partition, in file order. Each aggregate keeps, inside the same table
value it updates, the highest file offset it has applied per (file, fingerprint): a record at
or below it is a repeat (a tailer resend, a resolver replay, a worker replay) and is skipped;
a record above it is new. Because the mark is written in the same value as the totals, the
two can never disagree: a lost changelog write loses both, and the replay redoes both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from sys import intern

# stream key -> [highest applied offset, event time (ms) of that record]
Marks = dict[str, list[int]]


def stream_key(src_stream: str, api_key_fp: int | None) -> str:
    """The ordered stream a record belongs to: its source file and its key fingerprint."""
    return intern(f"{src_stream}/{'-' if api_key_fp is None else api_key_fp}")


@dataclass(slots=True)
class HighWater:
    marks: Marks = field(default_factory=dict)

    def is_new(self, stream: str, offset: int) -> bool:
        mark = self.marks.get(stream)
        return mark is None or offset > mark[0]

    def apply(self, stream: str, offset: int, ts_ms: int) -> bool:
        """Record the position if it is new; False when it was applied before (skip it)."""
        mark = self.marks.get(stream)
        if mark is None:
            self.marks[stream] = [offset, ts_ms]
            return True
        if offset <= mark[0]:
            return False
        mark[0] = offset
        if ts_ms > mark[1]:
            mark[1] = ts_ms
        return True

    def forget_before(self, ts_ms: int) -> None:
        """Drop marks of streams silent since before ``ts_ms`` (rotated-away files). Their
        repeats can only be older than the retention, which the windows refuse anyway."""
        for stream in [s for s, (_, seen) in self.marks.items() if seen < ts_ms]:
            del self.marks[stream]
