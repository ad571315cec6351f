"""Applies the numbered SQL files of ``schemas/sql`` in order, idempotently.

Each pending migration runs in its own transaction together with its row in
``schema_migrations``; the whole run holds an advisory lock, so two processes migrating the
same database at once apply each file once. A migration already applied whose file has since
changed is an error: migrations are append-only.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

# pg_advisory_lock key: the first 8 bytes of sha256("meterstream.migrate"), as a signed bigint
LOCK_KEY = int.from_bytes(hashlib.sha256(b"meterstream.migrate").digest()[:8], "big", signed=True)
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(RuntimeError):
    pass


def available() -> list[Migration]:
    """The migrations shipped with this version, in order."""
    found = []
    for entry in resources.files("meterstream.schemas").joinpath("sql").iterdir():
        match = _NAME.match(entry.name)
        if match is None:
            if entry.name.endswith(".sql"):
                raise MigrationError(f"migration file name not NNNN_name.sql: {entry.name}")
            continue
        found.append(Migration(int(match[1]), match[2], entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a number: {versions}")
    return found


async def migrate(conn: asyncpg.Connection) -> list[Migration]:
    """Apply what is pending; returns the migrations applied by this call."""
    await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    INTEGER PRIMARY KEY,
                   name       TEXT NOT NULL,
                   checksum   CHAR(64) NOT NULL,
                   applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"""
        )
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        applied = {r["version"]: r for r in rows}
        known = {m.version: m for m in available()}
        for version, row in sorted(applied.items()):
            migration = known.get(version)
            if migration is None:
                raise MigrationError(
                    f"the database has migration {version} ({row['name']}) that this version "
                    "of meterstream does not know: it is newer than this code"
                )
            if migration.checksum != row["checksum"]:
                raise MigrationError(
                    f"migration {version:04d}_{migration.name}.sql changed after it was applied; "
                    "add a new migration instead of editing an applied one"
                )
        done = []
        for migration in known.values():
            if migration.version in applied:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            done.append(migration)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)


@dataclass(frozen=True, slots=True)
class Status:
    """How a database stands against the migrations of this version (read only)."""

    pending: list[Migration]  # not applied yet
    unknown: list[str]  # applied there, unknown here (the database is newer than this code)
    changed: list[str]  # applied, and their file has changed since

    @property
    def up_to_date(self) -> bool:
        return not (self.pending or self.unknown or self.changed)


async def status(conn: asyncpg.Connection) -> Status:
    """What `migrate` would do or refuse, without doing it (`meterstream check`)."""
    known = {m.version: m for m in available()}
    if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
        return Status(list(known.values()), [], [])
    applied = {r["version"]: r for r in await conn.fetch("SELECT version, name, checksum FROM schema_migrations")}
    return Status(
        pending=[m for v, m in known.items() if v not in applied],
        unknown=[f"{v:04d}_{r['name']}" for v, r in sorted(applied.items()) if v not in known],
        changed=[f"{v:04d}_{known[v].name}" for v, r in sorted(applied.items())
                 if v in known and known[v].checksum != r["checksum"]],
    )
