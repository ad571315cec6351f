"""The migrated schema holds every decision of docs/schema.md (real Postgres)."""

from __future__ import annotations

import asyncio
import base64

import asyncpg
import pytest

from meterstream.schemas.apikeys import fingerprint_of_hash, key_hash
from meterstream.schemas.migrate import LOCK_KEY, MigrationError, available, migrate

pytestmark = pytest.mark.services

TABLES = {
    "customers", "service_instances", "api_keys", "seal_keys", "seal_key_packages",
    "customer_encryption_keys", "haproxy_raw_logs", "usage_records", "usage_minutes",
    "limit_events", "vault_versions", "schema_migrations", "sink_offsets",
}


async def columns(pg: asyncpg.Connection, table: str) -> dict[str, asyncpg.Record]:
    rows = await pg.fetch(
        """SELECT column_name, data_type, character_maximum_length, column_default, is_nullable
           FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1""",
        table,
    )
    return {r["column_name"]: r for r in rows}


async def test_tables_are_spec_section_8_and_nothing_else(pg: asyncpg.Connection) -> None:
    rows = await pg.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    )
    names = {r["table_name"] for r in rows}
    assert names == TABLES
    assert "haproxy_logs" not in names and "customer_limits" not in names


async def test_customer_id_is_integer_everywhere(pg: asyncpg.Connection) -> None:
    rows = await pg.fetch(
        """SELECT table_name, data_type FROM information_schema.columns
           WHERE table_schema = 'public' AND column_name = 'customer_id'"""
    )
    assert {r["table_name"] for r in rows} >= {
        "customers", "service_instances", "api_keys", "seal_keys", "customer_encryption_keys",
        "usage_minutes", "usage_records", "limit_events",
    }
    assert {r["data_type"] for r in rows} == {"integer"}
    fk = await pg.fetchrow(
        """SELECT ccu.table_name, ccu.column_name
           FROM information_schema.table_constraints tc
           JOIN information_schema.key_column_usage kcu USING (constraint_name, table_schema)
           JOIN information_schema.constraint_column_usage ccu USING (constraint_name, table_schema)
           WHERE tc.table_name = 'customer_encryption_keys' AND tc.constraint_type = 'FOREIGN KEY'
             AND kcu.column_name = 'customer_id'"""
    )
    assert (fk["table_name"], fk["column_name"]) == ("customers", "customer_id")


async def test_customers_columns(pg: asyncpg.Connection) -> None:
    cols = await columns(pg, "customers")
    assert "tier" not in cols
    assert cols["status"]["column_default"].startswith("'active'")
    assert cols["spend_cap_cents"]["data_type"] == "bigint"
    assert cols["spend_cap_cents"]["column_default"] == "200000"
    assert cols["spend_window"]["column_default"].startswith("'rolling_30d'")
    row = await pg.fetchrow("INSERT INTO customers (name) VALUES ('x') RETURNING *")
    assert row["customer_id"] > 0
    assert (row["status"], row["spend_cap_cents"], row["spend_window"]) == ("active", 200000, "rolling_30d")
    assert "tier" in await columns(pg, "service_instances")


async def test_api_keys_columns(pg: asyncpg.Connection) -> None:
    cols = await columns(pg, "api_keys")
    assert (cols["api_key_id"]["data_type"], cols["api_key_id"]["character_maximum_length"]) == (
        "character varying", 100)
    assert (cols["api_key_hash"]["data_type"], cols["api_key_hash"]["character_maximum_length"]) == (
        "character", 64)
    assert cols["api_key_fp"]["data_type"] == "integer"
    indexes = {r["indexdef"] for r in await pg.fetch(
        "SELECT indexdef FROM pg_indexes WHERE tablename = 'api_keys'")}
    assert any("(api_key_fp)" in d and "UNIQUE" not in d for d in indexes)
    assert any("UNIQUE" in d and "(api_key_hash)" in d for d in indexes)


async def test_raw_logs_use_the_review_names(pg: asyncpg.Connection) -> None:
    cols = await columns(pg, "haproxy_raw_logs")
    assert {"bytes_sent", "path_prefix", "service_type", "request_id"} <= set(cols)
    assert cols["service_type"]["data_type"] == "smallint"
    assert "bytes_in" not in cols and "endpoint" not in cols
    unique = await pg.fetchval(
        """SELECT count(*) FROM pg_indexes WHERE tablename = 'haproxy_raw_logs'
           AND indexdef LIKE 'CREATE UNIQUE INDEX%(request_id)'"""
    )
    assert unique == 1


async def test_usage_records_unique_per_hour(pg: asyncpg.Connection) -> None:
    row = "INSERT INTO usage_records (customer_id, service_type, window_start) VALUES (1, 1, '2026-11-25 10:00Z')"
    await pg.execute(row)
    with pytest.raises(asyncpg.UniqueViolationError):
        await pg.execute(row)
    with pytest.raises(asyncpg.CheckViolationError):
        await pg.execute("INSERT INTO usage_records (customer_id, service_type, window_start) "
                         "VALUES (1, 1, '2026-11-25 10:30Z')")


# -- inserts that must fail -----------------------------------------------------------------

SECRET = b"test-secret-test-secret-32bytes!"


async def _customer(pg: asyncpg.Connection, **cols: object) -> int:
    names = ", ".join(["name", *cols])
    params = ", ".join(f"${i}" for i in range(1, len(cols) + 2))
    return await pg.fetchval(
        f"INSERT INTO customers ({names}) VALUES ({params}) RETURNING customer_id", "c", *cols.values()
    )


async def _key(pg: asyncpg.Connection, customer: int, key: str, *, fp: int | None = None,
               digest: str | None = None, status: str = "active") -> None:
    digest = digest or key_hash(SECRET, key)
    await pg.execute(
        """INSERT INTO api_keys (api_key_id, api_key_hash, api_key_fp, customer_id, service_type,
                                 status, revoked_at)
           VALUES ($1, $2, $3, $4, 1, $5::varchar, CASE WHEN $5::varchar = 'revoked' THEN now() END)""",
        base64.b64encode(key.encode()).decode(), digest,
        fingerprint_of_hash(digest) if fp is None else fp, customer, status,
    )


async def test_uuid_customer_id_is_refused(pg: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.DataError):
        await pg.execute("INSERT INTO customers (customer_id, name) VALUES ($1, 'x')",
                         "7d1f1e5e-0000-4000-8000-000000000000")
    with pytest.raises(asyncpg.InvalidTextRepresentationError):
        await pg.execute("INSERT INTO customers (customer_id, name) "
                         "VALUES ('7d1f1e5e-0000-4000-8000-000000000000', 'x')")
    with pytest.raises(asyncpg.CheckViolationError):
        await pg.execute("INSERT INTO customers (customer_id, name) VALUES (0, 'x')")
    with pytest.raises(asyncpg.CheckViolationError):
        await pg.execute("INSERT INTO customers (customer_id, name) VALUES (-5, 'x')")
    with pytest.raises(asyncpg.DataError):
        await pg.execute("INSERT INTO customer_encryption_keys (customer_id, key_version, encrypted_key) "
                         "VALUES ($1, 1, 'k')", "7d1f1e5e-0000-4000-8000-000000000000")


@pytest.mark.parametrize(("cents", "ok"), [(10_000, True), (9_999, False), (5_000_000, True),
                                            (5_000_100, False)])
async def test_spend_cap_range(pg: asyncpg.Connection, cents: int, ok: bool) -> None:
    if ok:
        assert await _customer(pg, spend_cap_cents=cents) > 0
    else:
        with pytest.raises(asyncpg.CheckViolationError, match="spend_cap_cents"):
            await _customer(pg, spend_cap_cents=cents)


async def test_unknown_status_and_window_refused(pg: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.CheckViolationError, match="status"):
        await _customer(pg, status="frozen")
    with pytest.raises(asyncpg.CheckViolationError, match="spend_window"):
        await _customer(pg, spend_window="weekly")
    for status in ("active", "suspended", "closed"):
        assert await _customer(pg, status=status) > 0
    assert await _customer(pg, spend_window="calendar_month") > 0


async def test_duplicate_api_key_hash_refused(pg: asyncpg.Connection) -> None:
    c = await _customer(pg)
    await _key(pg, c, "Sone")
    with pytest.raises(asyncpg.UniqueViolationError, match="api_key_hash"):
        await _key(pg, c, "Sother", digest=key_hash(SECRET, "Sone"))


async def test_fingerprint_must_match_hash_and_not_be_zero(pg: asyncpg.Connection) -> None:
    c = await _customer(pg)
    with pytest.raises(asyncpg.CheckViolationError, match="api_keys_fp_matches_hash"):
        await _key(pg, c, "Sone", fp=fingerprint_of_hash(key_hash(SECRET, "Sone")) + 1)
    with pytest.raises(asyncpg.CheckViolationError):
        await _key(pg, c, "Szero", digest="00000000" + "a" * 56)


async def test_fingerprint_collision_with_active_key_refused(pg: asyncpg.Connection) -> None:
    c = await _customer(pg)
    first = "1234abcd" + "0" * 56
    await _key(pg, c, "Sone", digest=first)
    with pytest.raises(asyncpg.UniqueViolationError, match="api_keys_active_fp_unique"):
        await _key(pg, c, "Stwo", digest="1234abcd" + "1" * 56)
    # once the first key is revoked, its fingerprint may be reused
    await pg.execute("UPDATE api_keys SET status = 'revoked', revoked_at = now() WHERE api_key_hash = $1", first)
    await _key(pg, c, "Stwo", digest="1234abcd" + "1" * 56)


async def test_enterprise_needs_limits_and_tier_is_checked(pg: asyncpg.Connection) -> None:
    c = await _customer(pg)
    with pytest.raises(asyncpg.CheckViolationError, match="enterprise_limits"):
        await pg.execute("INSERT INTO service_instances (customer_id, service_type, tier) "
                         "VALUES ($1, 1, 'enterprise')", c)
    with pytest.raises(asyncpg.CheckViolationError):
        await pg.execute("INSERT INTO service_instances (customer_id, service_type, tier) VALUES ($1, 1, 'gold')", c)
    await pg.execute("INSERT INTO service_instances (customer_id, service_type, tier, config) "
                     "VALUES ($1, 1, 'enterprise', '{\"guaranteed_rps\": 5000}')", c)


async def test_seal_key_packages(pg: asyncpg.Connection) -> None:
    c = await _customer(pg)
    await pg.execute("INSERT INTO seal_keys (seal_key_id, customer_id) VALUES ('0xk', $1)", c)
    await pg.executemany("INSERT INTO seal_key_packages VALUES ('0xk', $1)", [("0xa",), ("0xb",)])
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await pg.execute("INSERT INTO seal_key_packages VALUES ('0xnone', '0xa')")
    await pg.execute("DELETE FROM seal_keys WHERE seal_key_id = '0xk'")
    assert await pg.fetchval("SELECT count(*) FROM seal_key_packages") == 0


# -- the migration runner --------------------------------------------------------------------

async def test_migrate_twice_changes_nothing(empty_pg_dsn: str) -> None:
    conn = await asyncpg.connect(empty_pg_dsn)
    try:
        first = await migrate(conn)
        assert [m.version for m in first] == [m.version for m in available()]
        schema = await conn.fetch(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public' ORDER BY 1, 2")
        applied = await conn.fetch("SELECT version, applied_at FROM schema_migrations ORDER BY 1")
        assert await migrate(conn) == []
        assert await conn.fetch(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public' ORDER BY 1, 2") == schema
        assert await conn.fetch("SELECT version, applied_at FROM schema_migrations ORDER BY 1") == applied
    finally:
        await conn.close()


async def test_concurrent_migrations_apply_once(empty_pg_dsn: str) -> None:
    conns = [await asyncpg.connect(empty_pg_dsn) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        assert sorted(len(r) for r in results) == [0, 0, len(available())]
        assert await conns[0].fetchval("SELECT count(*) FROM schema_migrations") == len(available())
        assert await conns[0].fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = ($1::bigint & x'ffffffff'::bigint)",
            LOCK_KEY) == 0
    finally:
        for c in conns:
            await c.close()


async def test_failed_migration_rolls_back(empty_pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from meterstream.schemas import migrate as migrate_mod

    good = available()
    broken = migrate_mod.Migration(good[-1].version + 1, "broken", "CREATE TABLE half (x int); SELECT 1/0;")
    monkeypatch.setattr(migrate_mod, "available", lambda: [*good, broken])
    conn = await asyncpg.connect(empty_pg_dsn)
    try:
        with pytest.raises(asyncpg.DivisionByZeroError):
            await migrate_mod.migrate(conn)
        assert await conn.fetchval("SELECT to_regclass('half')") is None
        assert await conn.fetchval("SELECT max(version) FROM schema_migrations") == good[-1].version
    finally:
        await conn.close()


async def test_edited_or_unknown_migration_is_an_error(pg: asyncpg.Connection) -> None:
    await pg.execute("UPDATE schema_migrations SET checksum = repeat('0', 64) WHERE version = 1")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await migrate(pg)
    await pg.execute("UPDATE schema_migrations SET checksum = $1 WHERE version = 1", available()[0].checksum)
    await pg.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, 'future', repeat('0', 64))")
    with pytest.raises(MigrationError, match="newer than this code"):
        await migrate(pg)


async def test_timescale_absent_means_plain_tables(pg: asyncpg.Connection) -> None:
    available_ext = await pg.fetchval("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'")
    installed = await pg.fetchval("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'")
    assert installed == available_ext
