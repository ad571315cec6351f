"""meterstream.memory: the collector of a process that runs one stage. Pure: no services."""

from __future__ import annotations

import gc
import subprocess
import sys


def test_tune_collector_freezes_start_up_and_runs_the_first_generation_rarely() -> None:
    code = ("import gc; from meterstream import memory; before = gc.get_freeze_count(); memory.tune_collector(); "
            "print(gc.get_threshold()[0], gc.get_freeze_count() > before)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    from meterstream import memory

    assert out == [str(memory.COLLECT_EVERY), "True"]
    assert gc.get_threshold()[0] != memory.COLLECT_EVERY  # in its own process: the test run's is left alone

