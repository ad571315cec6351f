"""The `meterstream` command, run as users run it (the installed console script)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from meterstream import settings as settings_mod
from meterstream.dev.databases import create_database, drop_database
from meterstream.kafka import delete_topics_with_prefix
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


def test_parse_prints_one_object_per_line_in_order(tmp_path: Path) -> None:
    import orjson

    from tests.test_parser import BADREQ_JSON, HTTPLOG, JSON_LINE

    log = tmp_path / "haproxy.log"
    log.write_bytes(f"{JSON_LINE}\nnot a log line\n{HTTPLOG}\n\n".encode() + b"\xff\n" + BADREQ_JSON.encode())
    out = meterstream("parse", str(log))
    assert out.returncode == 0, out.stderr
    rows = [orjson.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == 6
    assert rows[0]["request_id"].startswith("7F000001:9296") and rows[0]["status"] == 200
    assert rows[0]["path"] == "v1/fetch_k" and rows[0]["Ta"] == 4
    assert rows[1] == {"rejected": "unknown_format", "detail": rows[1]["detail"], "raw": "not a log line"}
    assert rows[2]["bytes_sent"] == 1532 and rows[2]["ts"] == 1795625401123
    assert rows[3]["rejected"] == "empty_line"
    assert rows[4]["rejected"] == "invalid_utf8" and rows[4]["raw"] == "\\xff"
    assert rows[5]["request_id"].startswith("ms-") and rows[5]["status"] == 400
    assert "4 records, 2 rejected" not in out.stderr and "3 records, 3 rejected" in out.stderr
    assert meterstream("parse", "--fail-on-reject", str(log)).returncode == 1

    exe = shutil.which("meterstream", path=str(Path(sys.executable).parent))
    assert exe is not None
    piped = subprocess.run([exe, "parse"],
                           input=JSON_LINE.encode(), capture_output=True, timeout=60)
    assert piped.returncode == 0 and orjson.loads(piped.stdout)["status"] == 200


@pytest.mark.services
async def test_demo_runs_the_pipeline_and_is_idempotent(tmp_path: Path, services: Services) -> None:
    import uuid

    name = await create_database(services.pg_admin_dsn, prefix="ms_demo")
    prefix = f"demo{uuid.uuid4().hex[:6]}."
    try:
        env = {"MS_POSTGRES__DSN": services.dsn(name), "MS_KAFKA__BOOTSTRAP": services.kafka_bootstrap,
               "MS_KAFKA__TOPIC_PREFIX": prefix, "MS_LOG_LEVEL": "warning"}
        first = meterstream("demo", "--workdir", str(tmp_path / "demo"), env=env)
        assert first.returncode == 0, first.stderr
        assert "sink-postgres: haproxy_raw_logs holds 601 rows" in first.stdout
        # the httplog line has no service type: in the raw logs, refused by the meter
        assert "haproxy.logs.rejected: 3 dead letters (1 not_json, 1 unknown_format, 1 unmeterable)" in first.stdout
        assert "Acme Analytics" in first.stdout and "(unknown key)" in first.stdout
        assert "balance_exhausted  customer  907305217" in first.stdout
        assert "customer:907305217  suspended" in first.stdout and "customer:184467441  active" in first.stdout
        assert "vault: version 1 " in first.stdout
        second = meterstream("demo", "--workdir", str(tmp_path / "demo"), env=env)
        assert second.returncode == 0, second.stderr
        assert "read 0 new bytes" in second.stdout and "holds 601 rows" in second.stdout
        assert "vault: version 1 " in second.stdout  # same content: no new version
        conn = await asyncpg.connect(services.dsn(name))
        try:
            assert await conn.fetchval("SELECT count(*) FROM customers") == 3
            refused = await conn.fetchval("SELECT count(*) FROM haproxy_raw_logs r JOIN api_keys k USING "
                                           "(api_key_fp) WHERE k.status = 'revoked' AND r.status_code = 401")
            assert refused > 0  # the revoked key's requests are refused, as HAProxy would
            # every metered request is in the usage exactly once, after two runs
            assert await conn.fetchval("SELECT sum(requests) FROM usage_records") == 600
            assert await conn.fetchval("SELECT sum(requests) FROM usage_minutes") == 600
        finally:
            await conn.close()
    finally:
        await drop_database(services.pg_admin_dsn, name)
        await delete_topics_with_prefix(settings_mod.load(None, kafka={**services.kafka.model_dump(),
                                                                        "topic_prefix": prefix}))
