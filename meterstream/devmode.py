"""Development mode: ``MS_DEV=1`` (docs/security.md "Development mode").

Set by ``deploy/dev.sh`` (every command), ``meterstream demo``, the tests and the benchmarks;
never by a deployment. Only in development mode do the key settings default to the built-in
development keys (public: they are in this repository); outside it, a configuration that holds
one of them is refused (``meterstream.builtin_keys``), and a key that is not set is absent.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

ENV = "MS_DEV"
_ON = frozenset({"1", "true", "yes", "on"})
_OFF = frozenset({"", "0", "false", "no", "off"})


class DevModeError(ValueError):
    """MS_DEV holds something that is neither on nor off."""


def enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether development mode is on. Raises DevModeError for a value that is neither on
    (1, true, yes, on) nor off (unset, empty, 0, false, no, off): a typo must not decide."""
    value = (os.environ if environ is None else environ).get(ENV, "").strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise DevModeError(f"{ENV} must be 1 (development mode) or 0 / unset (production)")


def enable() -> None:
    """Turn development mode on for this process and the processes it starts."""
    os.environ[ENV] = "1"
