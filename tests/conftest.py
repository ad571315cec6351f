"""Session fixtures: one real Kafka broker and one real Postgres per test session.

Services are started by the project's own dev services (idempotent: reused when running).
Set MS_TEST_EXTERNAL=1 to use already-running services named by MS_KAFKA__BOOTSTRAP (with the
other MS_KAFKA__* settings: TLS and SASL) and MS_TEST_PG_ADMIN_DSN instead. Every Kafka client
of the tests is made from ``services.kafka`` (meterstream.kafka_clients). Each test gets its own
database (a copy of a migrated template) and its own topics, so tests do not interfere. The
fixtures are thin: the harness is meterstream/dev (docs/dev-services.md).

The tests run in development mode (MS_DEV=1, docs/security.md), and so do the processes they
start; a test of production behaviour sets MS_DEV=0 for its own process.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from meterstream import devmode
from meterstream import settings as settings_mod
from meterstream.dev.databases import create_database, drop_database, migrated_database
from meterstream.dev.endpoints import Services
from meterstream.dev.names import unique
from meterstream.dev.topics import NewTopics
from meterstream.settings import KafkaSettings, Settings

__all__ = ["Services", "unique"]  # the tests import them from here

devmode.enable()


@pytest.fixture(scope="session")
def services() -> Services:
    if os.environ.get("MS_TEST_EXTERNAL"):
        return Services.external()
    return Services.local()


@pytest.fixture(scope="session")
def secure_kafka(services: Services) -> KafkaSettings:
    """Client settings of the broker's SASL_SSL listener (SCRAM-SHA-512, the development CA):
    the dev services' own, or with MS_TEST_EXTERNAL those of MS_TEST_KAFKA_SASL_SSL_BOOTSTRAP
    and MS_TEST_KAFKA_TLS_DIR (a directory laid out as meterstream.dev.services.kafka_tls's)."""
    from pathlib import Path

    from meterstream.dev.services.kafka_tls import KafkaTls

    if os.environ.get("MS_TEST_EXTERNAL"):
        bootstrap, tls = os.environ.get("MS_TEST_KAFKA_SASL_SSL_BOOTSTRAP"), os.environ.get("MS_TEST_KAFKA_TLS_DIR")
        if not (bootstrap and tls):
            pytest.skip("no SASL_SSL listener named (MS_TEST_KAFKA_SASL_SSL_BOOTSTRAP, MS_TEST_KAFKA_TLS_DIR)")
        return KafkaSettings.model_validate(KafkaTls(Path(tls)).client_settings(bootstrap))
    from meterstream.dev.services import DevServices

    return DevServices.default().kafka.secure_settings()


@pytest.fixture(scope="session")
async def pg_template(services: Services) -> AsyncIterator[str]:
    """A database migrated once per session; each test's database is a copy of it."""
    name = await migrated_database(services.pg_admin_dsn, prefix="ms_tpl")
    yield name
    await drop_database(services.pg_admin_dsn, name)


@pytest.fixture
async def pg_dsn(services: Services, pg_template: str) -> AsyncIterator[str]:
    """A migrated database of this test's own."""
    name = await create_database(services.pg_admin_dsn, pg_template)
    yield services.dsn(name)
    await drop_database(services.pg_admin_dsn, name)


@pytest.fixture
async def empty_pg_dsn(services: Services) -> AsyncIterator[str]:
    """An empty database of this test's own (for migration tests)."""
    name = await create_database(services.pg_admin_dsn)
    yield services.dsn(name)
    await drop_database(services.pg_admin_dsn, name)


@pytest.fixture
async def pg(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_dsn)
    yield conn
    await conn.close()


@pytest.fixture
async def new_topic(services: Services) -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """Creates topics with unique names for this test; deletes them afterwards."""
    topics = await NewTopics(services.kafka).start()
    yield topics.make
    await topics.close()


@pytest.fixture
async def ms_topics(services: Services) -> AsyncIterator[Settings]:
    """Settings whose topic prefix is this test's own, with the topics of docs/wire.md created
    (2 partitions each); every topic with the prefix is deleted afterwards."""
    from meterstream.kafka import delete_topics_with_prefix, ensure_topics

    settings = settings_mod.load(None, kafka={**services.kafka.model_dump(), "topic_prefix": unique("t") + "."})
    await ensure_topics(settings, partitions=2)
    yield settings
    await delete_topics_with_prefix(settings)


@pytest.fixture
def settings_for(services: Services) -> Callable[..., Settings]:
    """Settings pointing at the test services (and a given database)."""

    def make(dsn: str | None = None, **overrides: object) -> Settings:
        base: dict[str, object] = {"kafka": services.kafka.model_dump()}
        if dsn is not None:
            base["postgres"] = {"dsn": dsn}
        return settings_mod.load(None, **{**base, **overrides})

    return make
