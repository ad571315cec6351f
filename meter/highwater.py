"""High-water marks: how an aggregate recognises a record it has already applied
(docs/metering.md "Exactly once").

A record reaches an aggregate along one *route*: the ``haproxy.logs`` partition it was read
from (metered on that partition, or forwarded from it through ``meter.resolved`` to its
customer's partition). Along one route records arrive in that partition's offset order, and
the lines of one source stream (a file, a syslog listener) in their stream order. Two things
repeat records:

- a worker that processes a batch again (a crash, a rebalance) repeats *upstream offsets*;
- a tailer that resends a round after a crash repeats *source positions*, at new upstream
  offsets, later on the same route (a line's key, hence its partition, depends only on it).

So an aggregate keeps, inside the value it updates (one changelog message: the totals and
the marks cannot disagree):

- per route, the highest upstream offset applied: a worker repeat is at or below it;
- per (route, source stream), the highest source offset applied and the event time of the
  last record: a tailer repeat is at or below it.

Both are bounded whatever the input: routes by the partition count, streams by
``MAX_STREAMS`` per value. Past that many streams, the one silent longest (in event time) is
forgotten and counted; a tailer repeat of a forgotten stream would count again, while worker
repeats stay exact whatever the cap. Streams silent for longer than the windows' retention
are forgotten too (``forget_before``): their repeats are refused as too late anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from sys import intern
from typing import Any

MAX_STREAMS = 32  # source streams remembered per aggregate value


def stream_key(route: int, src_stream: str) -> str:
    """The ordered stream a record belongs to within one aggregate: its route and its source."""
    return intern(f"{route}|{src_stream}")


@dataclass(slots=True)
class HighWater:
    routes: dict[int, int] = field(default_factory=dict)  # route -> highest upstream offset applied
    streams: dict[str, list[int]] = field(default_factory=dict)  # stream_key -> [source offset, event time]
    forgotten: int = 0  # streams dropped past MAX_STREAMS since the value was loaded (not stored)

    def apply(self, route: int, upstream_offset: int, stream: str, offset: int, ts_ms: int) -> bool:
        """Records the positions if the record is new; False when it was applied before."""
        applied = self.routes.get(route)
        if applied is not None and upstream_offset <= applied:
            return False  # processed again by a worker
        self.routes[route] = upstream_offset
        mark = self.streams.get(stream)
        if mark is None:
            if len(self.streams) >= MAX_STREAMS:
                del self.streams[min(self.streams, key=lambda s: self.streams[s][1])]
                self.forgotten += 1
            self.streams[stream] = [offset, ts_ms]
            return True
        if offset <= mark[0]:
            return False  # resent by the tailer
        mark[0] = offset
        if ts_ms > mark[1]:
            mark[1] = ts_ms
        return True

    def forget_before(self, ts_ms: int) -> None:
        """Drops the marks of streams silent since before ``ts_ms`` (rotated-away files)."""
        for stream in [s for s, (_, seen) in self.streams.items() if seen < ts_ms]:
            del self.streams[stream]

    def dump(self) -> list[Any]:
        return [[[r, o] for r, o in self.routes.items()], [[s, o, t] for s, (o, t) in self.streams.items()]]

    @classmethod
    def load(cls, data: list[Any]) -> HighWater:
        routes, streams = data
        return cls({int(r): int(o) for r, o in routes}, {intern(s): [int(o), int(t)] for s, o, t in streams})
