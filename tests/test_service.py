"""meterstream/service.py: the failure clock behind every process's /healthz."""

from __future__ import annotations

import pytest

from meterstream import service


def test_failure_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(service.time, "monotonic", lambda: now[0])
    clock = service.FailureClock()
    assert clock.healthy() and clock.seconds() == 0
    clock.failed()
    now[0] += 59.9
    clock.failed()  # still failing: the clock keeps its start
    assert clock.healthy() and clock.seconds() == pytest.approx(59.9)
    now[0] += 0.2
    assert not clock.healthy()
    clock.recovered()
    assert clock.healthy() and clock.seconds() == 0
