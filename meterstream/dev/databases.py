"""Postgres databases of their own for the tests, the benchmarks and the closed loop: created
(empty, from a template, or migrated) and dropped through a superuser DSN to ``postgres``."""

from __future__ import annotations

import asyncpg

from meterstream.dev.names import unique
from meterstream.schemas.migrate import migrate


def dsn_of(admin_dsn: str, database: str) -> str:
    """The DSN of ``database`` on the server of ``admin_dsn``."""
    return admin_dsn.rsplit("/", 1)[0] + "/" + database


async def create_database(admin_dsn: str, template: str | None = None, prefix: str = "ms_test") -> str:
    """A new database with a unique name (a copy of ``template`` if given); returns its name."""
    name = unique(prefix)
    admin = await asyncpg.connect(admin_dsn)
    try:
        clause = f' TEMPLATE "{template}"' if template else ""
        await admin.execute(f'CREATE DATABASE "{name}"{clause}')
    finally:
        await admin.close()
    return name


async def migrated_database(admin_dsn: str, prefix: str = "ms_test") -> str:
    """A new database with every migration applied; returns its name."""
    name = await create_database(admin_dsn, prefix=prefix)
    conn = await asyncpg.connect(dsn_of(admin_dsn, name))
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return name


async def drop_database(admin_dsn: str, name: str) -> None:
    """Drops it, closing its connections (a new admin connection each time: Postgres may
    have been restarted meanwhile)."""
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
