"""Where the tests, the benchmarks and the demo find Kafka and Postgres: the project's own dev
services (started when needed) or already-running ones. See docs/dev-services.md."""

from __future__ import annotations

import os
from dataclasses import dataclass

from meterstream.dev.databases import dsn_of
from meterstream.dev.services import DevServices
from meterstream.settings import KafkaSettings


@dataclass(frozen=True)
class Services:
    kafka: KafkaSettings  # the connection settings of the clients
    pg_admin_dsn: str  # a superuser DSN to the `postgres` database

    @property
    def kafka_bootstrap(self) -> str:
        return self.kafka.bootstrap

    def dsn(self, database: str) -> str:
        return dsn_of(self.pg_admin_dsn, database)

    @classmethod
    def of(cls, dev: DevServices) -> Services:
        """The endpoints of these dev services (plaintext Kafka listener, superuser DSN)."""
        return cls(KafkaSettings(bootstrap=dev.kafka.bootstrap), dsn_of(dev.postgres.dsn, "postgres"))

    @classmethod
    def local(cls) -> Services:
        """The project's own dev services, started if they are not running (idempotent)."""
        dev = DevServices.default()
        dev.up()
        return cls.of(dev)

    @classmethod
    def external(cls) -> Services:
        """Already-running services: MS_KAFKA__* (TLS and SASL included) and MS_TEST_PG_ADMIN_DSN."""
        from meterstream import settings as settings_mod

        return cls(settings_mod.load(None).kafka, os.environ["MS_TEST_PG_ADMIN_DSN"])
