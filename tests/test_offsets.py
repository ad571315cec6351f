"""The worker's offset bookkeeping (meter/offsets.py), without a broker."""

from __future__ import annotations

import pytest

from meterstream.meter.offsets import SEEK_AGAIN_S, Action, PartitionPosition, classify


@pytest.mark.parametrize(
    ("offsets", "expected", "result"),
    [
        ([5, 6, 7], None, (0, 3, None)),  # nothing known yet: everything
        ([5, 6, 7], 5, (0, 3, None)),
        ([3, 4, 5, 6], 5, (2, 4, None)),  # a replay of 3 and 4, then new records
        ([3, 4], 5, (2, 2, None)),  # all replayed
        ([5, 6, 9, 10], 5, (0, 2, 9)),  # a hole after 6
        ([8, 9], 5, (0, 0, 8)),  # records skipped: 5-7 never came
        ([3, 4, 8], 5, (2, 2, 8)),
        ([], 5, (0, 0, None)),
    ],
)
def test_classify(offsets: list[int], expected: int | None, result: tuple) -> None:
    assert classify(offsets, expected) == result


def test_a_gap_is_sought_back_and_waited_for() -> None:
    pos = PartitionPosition(100)
    step = pos.step([150, 151], now=0.0)
    assert (step.action, step.seek_to, step.end) == (Action.SEEK, 100, 0)
    assert pos.step([152, 153], now=1.0).action is Action.NONE  # fetched before the seek: dropped
    step = pos.step([100, 101, 102], now=1.5)  # the sought records arrive
    assert (step.repeats, step.end, step.action) == (0, 3, Action.NONE)
    pos.processed([100, 101, 102], step)
    assert pos.expected == 103


def test_a_seek_that_did_not_take_is_made_again() -> None:
    pos = PartitionPosition(100)
    assert pos.step([150], now=0.0).action is Action.SEEK
    assert pos.step([151], now=SEEK_AGAIN_S - 0.1).action is Action.NONE
    assert pos.step([152], now=SEEK_AGAIN_S + 0.1).action is Action.SEEK


def test_a_hole_that_comes_back_after_a_seek_is_accepted() -> None:
    """Offsets with no record (a transactional producer's markers, or records deleted by
    retention): after a seek the same first record comes again; the partition goes on."""
    pos = PartitionPosition(100)
    assert pos.step([120, 121], now=0.0).action is Action.SEEK
    step = pos.step([120, 121, 122], now=0.5)
    assert (step.action, step.gap, step.repeats, step.end) == (Action.ACCEPT, (100, 120), 0, 3)
    pos.processed([120, 121, 122], step)
    assert pos.expected == 123
