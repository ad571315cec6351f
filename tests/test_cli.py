"""The `meterstream` command, run as users run it (the installed console script)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import Services

ROOT = Path(__file__).resolve().parent.parent


def meterstream(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("meterstream", path=str(Path(sys.executable).parent)) or "meterstream"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_help_lists_the_subcommands() -> None:
    out = meterstream("--help")
    assert out.returncode == 0, out.stderr
    for command in ("migrate", "dev", "demo", "topics"):
        assert f"  {command} " in out.stdout
    for sub in (("dev", "--help"), ("migrate", "--help"), ("topics", "create", "--help")):
        assert meterstream(*sub).returncode == 0


def test_bad_config_is_a_usage_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[kafka]\nbootstrp = 'x'\n")
    out = meterstream("--config", str(cfg), "migrate")
    assert out.returncode == 2
    assert "bootstrp" in out.stderr


@pytest.mark.services
async def test_migrate_command_applies_then_is_idempotent(
    empty_pg_dsn: str, services: Services
) -> None:
    env = {"MS_POSTGRES__DSN": empty_pg_dsn}
    first = meterstream("migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("applied: 0001_core")
    second = meterstream("migrate", env=env)
    assert second.returncode == 0 and second.stdout.strip() == "schema is up to date"
    conn = await asyncpg.connect(empty_pg_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") >= 2
        assert await conn.fetchval("SELECT to_regclass('api_keys')::text") == "api_keys"
    finally:
        await conn.close()


@pytest.mark.services
def test_dev_status_reports_running_services(services: Services) -> None:
    out = meterstream("dev", "status")
    assert out.returncode == 0
    assert "postgres: running on 127.0.0.1" in out.stdout
    assert "kafka: running on 127.0.0.1" in out.stdout
    again = meterstream("dev", "up")
    assert again.returncode == 0
    assert "started" not in again.stdout and "created" not in again.stdout
