"""Development mode: ``MS_DEV=1`` (set by deploy/dev.sh, the demo, the tests and the
benchmarks). What differs in it is decided by asking ``enabled()`` here, and nowhere else."""

from __future__ import annotations

import os

ENV = "MS_DEV"


def enabled() -> bool:
    """True when the environment says this is a development run (MS_DEV=1, true or yes)."""
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes")
