"""Local Kafka and Postgres for development, tests and the README's local run.

``meterstream dev up`` installs what is missing (Debian's postgresql, Java and Maven; the Kafka
broker jars from Maven Central through deploy/kafka/pom.xml; the tools the tests and benchmarks
run: ``TOOLS``), creates a Postgres cluster and a single-node KRaft broker under one state
directory, starts both on loopback and waits until they answer. It is idempotent: a second run
reuses the jars, the cluster, the tools and running servers.
``down`` stops what ``up`` started (never a server it found already running elsewhere).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from meterstream.dev.services.kafka import KafkaBroker
from meterstream.dev.services.postgres import PostgresCluster
from meterstream.dev.services.system import ensure_debian

# Debian packages of the tools the test suite and the benchmarks run: the real HAProxy (the
# closed loop, HAProxy's own log lines), kcat (the ingest benchmark's reference), prometheus
# (promtool: the scrape config, rules and dashboard queries of deploy/) and systemd
# (systemd-analyze: the units of deploy/systemd)
TOOLS = ("haproxy", "kcat", "prometheus", "systemd")


def state_dir() -> Path:
    """Where clusters, logs and data live: MS_DEV_DIR, else a per-user default.

    As root the default is under /var/lib, since Postgres runs as the postgres user and
    cannot enter root's home.
    """
    if env := os.environ.get("MS_DEV_DIR"):
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/meterstream-dev")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "meterstream-dev"


@dataclass
class DevServices:
    root: Path

    @classmethod
    def default(cls) -> DevServices:
        return cls(state_dir())

    @property
    def postgres(self) -> PostgresCluster:
        return PostgresCluster(self.root / "postgres")

    @property
    def kafka(self) -> KafkaBroker:
        return KafkaBroker(self.root / "kafka")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One `up` or `down` at a time (two test sessions may start together)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        with open(self.root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def up(self) -> list[str]:
        """Install, create and start what is missing; returns what was done, a line each."""
        with self._locked():
            tools = [f"installed {name}" for name in ensure_debian(*TOOLS)]
            return tools + self.postgres.up() + self.kafka.up()

    def down(self) -> list[str]:
        with self._locked():
            return self.kafka.down() + self.postgres.down()

    def status(self) -> dict[str, str]:
        return {"postgres": self.postgres.status(), "kafka": self.kafka.status()}
