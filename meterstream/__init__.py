"""meterstream: HAProxy access logs -> Kafka -> per-customer metering -> Postgres and the vault.

The stages are top-level folders of the repository (``ingest/``, ``meter/``, ``sinks/``,
``schemas/``) imported as ``meterstream.<stage>``. An installed wheel maps them there through
``package-dir`` (pyproject.toml); in a source checkout the repository root is added to this
package's search path, so the same imports work from a clone, an editable install and a wheel.
See docs/layout.md.
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

_checkout_root = Path(__file__).resolve().parent.parent
if (_checkout_root / "schemas" / "__init__.py").is_file() and str(_checkout_root) not in __path__:
    __path__.append(str(_checkout_root))


def checkout_root() -> Path | None:
    """The source checkout this package runs from, or None for an installed wheel."""
    return _checkout_root if (_checkout_root / "deploy").is_dir() else None
