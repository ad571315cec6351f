"""meterstream: HAProxy access logs -> Kafka -> per-customer metering -> Postgres and the vault.

The stages are top-level folders of the repository (``ingest/``, ``meter/``, ``sinks/``,
``schemas/``) imported as ``meterstream.<stage>`` through committed relative symlinks
(``meterstream/schemas -> ../schemas``, ...), so a clone, an editable install, a wheel, mypy
and editors all see one package tree. See docs/layout.md.
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

_checkout_root = Path(__file__).resolve().parent.parent


def checkout_root() -> Path | None:
    """The source checkout this package runs from, or None for an installed wheel."""
    return _checkout_root if (_checkout_root / "deploy").is_dir() else None
