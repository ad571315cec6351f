"""The worker's own offset bookkeeping: which fetched records to process, skip, or wait for
(docs/metering.md "Exactly once", step 4).

What the worker takes from faust-streaming: the app, its agents (one actor per partition,
``isolated_partitions``), consumer-group membership and rebalancing, tables with their
changelog topics and their recovery at assignment, and the fetching itself (one event per
fetched batch: meter.batches). What it deliberately does not take: faust's
``exactly_once`` mode (transactions, with open duplicate and loss bugs), faust's committed
offsets as the truth of what was processed (after a rebalance its gap handling can commit
past records that were never processed), and faust's own batching (``Stream.take``).

Instead each stage keeps the next offset it must process per partition in its ``positions``
table, written only once a batch's messages and table values are acknowledged. A fetched
batch is classified against it (``classify``):

1. records below the position were processed already (a replay after a crash): they are
   skipped (and acknowledged, so faust may commit past them);
2. records from the position on, contiguous, are the batch to process;
3. a record above the position with nothing at the position means records were skipped (a
   gap): the consumer is sought back to the position, and what follows is dropped until the
   sought record arrives. A seek that does not take (the partition was moving) is made again
   after ``SEEK_AGAIN_S``. If the same gap comes back after a seek, no record exists in it
   (control records of a transactional producer, or records the topic's retention deleted
   before they were processed): the gap is accepted, loudly, and processing goes on from
   there, so a partition can never stall on it.

faust's committed offset only says where fetching starts after a restart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

SEEK_AGAIN_S = 3.0  # a seek back whose record has not come by then is made again


def classify(offsets: Sequence[int], expected: int | None) -> tuple[int, int, int | None]:
    """(repeats, end, gap) of a fetched batch's offsets (ascending) against the next offset
    to process: ``offsets[:repeats]`` are below it, ``offsets[repeats:end]`` are the batch
    (contiguous from ``expected``; everything from the start when nothing is known yet), and
    ``gap`` is the first offset past a hole (``offsets[end]``), or None."""
    repeats = 0
    n = len(offsets)
    if expected is not None:
        while repeats < n and offsets[repeats] < expected:
            repeats += 1
    end = repeats
    if end < n and expected is None:
        expected = offsets[end]
    while end < n and offsets[end] == expected:
        end += 1
        expected += 1
    return repeats, end, (offsets[end] if end < n else None)


class Action(Enum):
    NONE = "none"
    SEEK = "seek"  # seek the consumer back to ``Step.seek_to``
    ACCEPT = "accept"  # the gap is real: ``Step.end`` includes the records past it


@dataclass(frozen=True, slots=True)
class Step:
    repeats: int  # offsets[:repeats] are repeats
    end: int  # offsets[repeats:end] are to be processed now
    action: Action = Action.NONE
    seek_to: int | None = None
    gap: tuple[int, int] | None = None  # (expected, first offset found) of a gap seen


class PartitionPosition:
    """One partition's next offset to process, and the gap being waited for (pure: the
    caller passes the clock, seeks the consumer and says when a batch is durable)."""

    def __init__(self, expected: int | None) -> None:
        self.expected = expected
        self._after_gap: int | None = None  # the first offset past the hole last sought back from
        self._sought_at: float | None = None

    def step(self, offsets: Sequence[int], now: float) -> Step:
        repeats, end, gap = classify(offsets, self.expected)
        if end > repeats or gap is None:
            self._after_gap = self._sought_at = None
            return Step(repeats, end)
        assert self.expected is not None  # a gap needs a known position
        found = (self.expected, gap)
        if self._sought_at is not None and repeats == 0 and gap == self._after_gap:
            # fetched again from the position, and again the first record is past the hole:
            # nothing is in it
            self._after_gap = self._sought_at = None
            self.expected = gap
            repeats, end, _ = classify(offsets, gap)
            return Step(repeats, end, Action.ACCEPT, gap=found)
        if self._sought_at is not None and now - self._sought_at < SEEK_AGAIN_S:
            return Step(repeats, end)  # records fetched before the seek took: dropped
        self._after_gap, self._sought_at = gap, now
        return Step(repeats, end, Action.SEEK, seek_to=self.expected, gap=found)

    def processed(self, offsets: Sequence[int], step: Step) -> None:
        """The records of ``step`` are durable: the next offset follows them."""
        if step.end > step.repeats:
            self.expected = offsets[step.end - 1] + 1
