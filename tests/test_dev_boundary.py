"""The runtime never imports meterstream.dev (development only, docs/layout.md): importing every
runtime module loads none of it."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import importlib, os, pkgutil, sys
names = []
for package in ("meterstream", "meterstream.schemas", "meterstream.ingest", "meterstream.meter", "meterstream.sinks"):
    module = importlib.import_module(package)
    folder = os.path.dirname(module.__file__)  # meterstream's path also holds the checkout root
    names += [f"{package}.{m.name}" for m in pkgutil.iter_modules([folder]) if m.name != "dev"]
for name in names:
    importlib.import_module(name)
loaded = sorted(m for m in sys.modules if m == "meterstream.dev" or m.startswith("meterstream.dev."))
print(len(names), loaded)
"""


def test_runtime_modules_do_not_import_the_dev_package() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout.split()
    assert int(out[0]) > 20  # the probe found the runtime's modules
    assert out[1:] == ["[]"]
