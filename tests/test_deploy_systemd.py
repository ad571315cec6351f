"""deploy/systemd: the units as systemd itself reads them (systemd-analyze from Debian's systemd,
installed by the set-up), offline: a file tree holding the units, the distribution's own
units and a `meterstream` executable where the units look for it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from meterstream.dev.processes import require
from tests.helpers import ROOT

UNITS_DIR = ROOT / "deploy" / "systemd"
PROCESSES = ("tail", "syslog", "worker", "sink-postgres", "vault", "sync-config")
SERVICES = [f"meterstream-{p}.service" for p in PROCESSES]
MAX_EXPOSURE = 3.0
EXECUTABLE = "/opt/meterstream/bin/meterstream"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file tree systemd-analyze --root reads: the distribution's units (sysinit.target,
    network-online.target...), ours in /etc/systemd/system, and the executable."""
    tree = tmp_path_factory.mktemp("systemd-root")
    shutil.copytree("/usr/lib/systemd/system", tree / "usr/lib/systemd/system", symlinks=True)
    (tree / "etc/systemd/system").mkdir(parents=True)
    for unit in UNITS_DIR.glob("meterstream*.service"):
        shutil.copy(unit, tree / "etc/systemd/system")
    shutil.copy(UNITS_DIR / "meterstream.target", tree / "etc/systemd/system")
    exe = tree / EXECUTABLE.lstrip("/")
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    return tree


def unit_text(name: str) -> str:
    return (UNITS_DIR / name).read_text()


def test_one_unit_per_process_and_a_target() -> None:
    assert sorted(p.name for p in UNITS_DIR.glob("meterstream*.service")) == sorted(SERVICES)
    target = unit_text("meterstream.target")
    for service in SERVICES:
        text = unit_text(service)
        assert f"ExecStart={EXECUTABLE} {service.removeprefix('meterstream-').removesuffix('.service')}\n" in text
        process = service.removeprefix("meterstream-").removesuffix(".service")
        assert f"ExecStartPre={EXECUTABLE} check --for {process}\n" in text  # what this process needs
        assert "PartOf=meterstream.target" in text and "WantedBy=meterstream.target" in text
        assert "Restart=always" in text and "User=meterstream" in text
        assert "EnvironmentFile=/etc/meterstream/meterstream.env" in text
        assert "StateDirectory=meterstream\n" in text and "LogsDirectory=meterstream\n" in text
        for setting in ("ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes", "PrivateDevices=yes",
                        "RestrictAddressFamilies=", "SystemCallFilter=@system-service", "UMask=0077"):
            assert setting in text, (service, setting)
    # every process but the two inputs is started by the target; one input is enabled on its own
    for process in ("worker", "sink-postgres", "vault", "sync-config"):
        assert f"meterstream-{process}.service" in target
    # the tail reads HAProxy's log, the vault reaches its Runtime API socket
    assert "SupplementaryGroups=adm" in unit_text("meterstream-tail.service")
    vault = unit_text("meterstream-vault.service")
    assert "SupplementaryGroups=haproxy" in vault and "ReadWritePaths=-/run/haproxy" in vault


def test_each_process_has_its_own_metrics_port() -> None:
    ports = [re.search(r"^Environment=MS_HTTP__PORT=(\d+)$", unit_text(s), re.M) for s in SERVICES]
    assert all(ports)
    assert len({p.group(1) for p in ports if p}) == len(SERVICES)


def test_systemd_analyze_verify_says_nothing(root: Path) -> None:
    """An unknown key or a misspelt value only warns, and verify still exits 0: any output
    at all is a failure."""
    tool = require("systemd-analyze")
    units = [str(root / "etc/systemd/system" / u) for u in [*SERVICES, "meterstream.target"]]
    result = subprocess.run([tool, "verify", f"--root={root}", "--man=no", "--generators=no", *units],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == "", result.stdout + result.stderr


def test_systemd_analyze_verify_catches_a_misspelt_key(root: Path, tmp_path: Path) -> None:
    """The check above can fail: a unit with an unknown key makes verify speak."""
    tool = require("systemd-analyze")
    bad = root / "etc/systemd/system/meterstream-misspelt.service"
    bad.write_text(unit_text("meterstream-worker.service").replace("PrivateTmp=yes", "PrivateTemp=yes"))
    try:
        result = subprocess.run([tool, "verify", f"--root={root}", "--man=no", "--generators=no", str(bad)],
                                capture_output=True, text=True, timeout=120)
    finally:
        bad.unlink()
    assert "Unknown key" in result.stdout + result.stderr


@pytest.mark.parametrize("service", SERVICES)
def test_security_exposure_is_low(root: Path, service: str) -> None:
    tool = require("systemd-analyze")
    result = subprocess.run([tool, "security", "--offline=yes", f"--root={root}", "--no-pager", service],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    found = re.search(rf"Overall exposure level for {re.escape(service)}: (\d+\.\d+)", result.stdout)
    assert found, result.stdout[-2000:]
    assert float(found.group(1)) <= MAX_EXPOSURE, result.stdout


def test_the_dedicated_user_is_declared(tmp_path: Path) -> None:
    tool = require("systemd-sysusers")
    result = subprocess.run([tool, f"--root={tmp_path}", "--dry-run",
                             str(UNITS_DIR / "meterstream.sysusers.conf")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Creating user 'meterstream'" in result.stdout + result.stderr
