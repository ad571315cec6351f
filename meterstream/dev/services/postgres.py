"""A PostgreSQL cluster of Debian's packages, owned by the dev services, on loopback."""

from __future__ import annotations

import glob
import os
import pwd
import time
from dataclasses import dataclass
from pathlib import Path

from meterstream.dev.services.system import ServiceError, ensure_debian, run
from meterstream.settings import DEV_POSTGRES_PORT

DATABASE = "meterstream"
SUPERUSER = "postgres"
MIN_VERSION = 15

# Development settings: durability traded for speed (a killed server process loses nothing,
# since the OS still holds its writes; only a machine crash could). Never use these in
# production.
SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "port": str(DEV_POSTGRES_PORT),
    "max_connections": "200",
    "shared_buffers": "'256MB'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_wal_size": "'1GB'",
    "log_min_messages": "warning",
}


def bindir() -> Path | None:
    """The newest PostgreSQL >= 15 server binaries Debian's packages put on this machine."""
    found = []
    for initdb in glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        version = Path(initdb).parent.parent.name
        if version.isdigit() and int(version) >= MIN_VERSION:
            found.append((int(version), Path(initdb).parent))
    return max(found)[1] if found else None


@dataclass
class PostgresCluster:
    root: Path
    port: int = DEV_POSTGRES_PORT

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def dsn(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{DATABASE}"

    def _os_user(self) -> str | None:
        """Postgres refuses to run as root: as root we run it as the `postgres` user."""
        return "postgres" if os.geteuid() == 0 else None

    def _bin(self, name: str) -> str:
        directory = bindir()
        if directory is None:
            raise ServiceError("PostgreSQL server binaries not found")
        return str(directory / name)

    def ready(self) -> bool:
        directory = bindir()
        if directory is None:
            return False
        proc = run(
            [str(directory / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
            check=False,
        )
        return proc.returncode == 0

    def up(self) -> list[str]:
        done = []
        if bindir() is None:
            installed = ensure_debian("postgresql")
            done.append(f"installed {', '.join(installed)}")
        if self.ready():
            if not (self.data / "postmaster.pid").exists():
                done.append(f"postgres: reusing a server already on 127.0.0.1:{self.port}")
            else:
                done.append(f"postgres: running on 127.0.0.1:{self.port} ({self.data})")
        else:
            if not (self.data / "PG_VERSION").exists():
                self._initdb()
                done.append(f"postgres: created cluster {self.data}")
            self._start()
            done.append(f"postgres: started on 127.0.0.1:{self.port}")
        if self._ensure_database():
            done.append(f"postgres: created database {DATABASE}")
        return done

    def _initdb(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        user = self._os_user()
        if user is not None:
            entry = pwd.getpwnam(user)
            for path in (self.root, self.data):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self.data.chmod(0o700)
        run(
            [self._bin("initdb"), "-D", str(self.data), "-U", SUPERUSER, "--auth=trust",
             "--encoding=UTF8", "--no-locale"],
            user=user,
        )
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("\n# meterstream dev services\n")
            conf.write(f"unix_socket_directories = '{self.data}'\n")
            for key, value in SERVER_SETTINGS.items():
                conf.write(f"{key} = {value}\n")

    def _start(self) -> None:
        run(
            [self._bin("pg_ctl"), "-D", str(self.data), "-l", str(self.data / "server.log"),
             "-w", "-t", "60", "start"],
            user=self._os_user(),
        )
        deadline = time.monotonic() + 30
        while not self.ready():
            if time.monotonic() > deadline:
                raise ServiceError(f"postgres did not answer; see {self.data / 'server.log'}")
            time.sleep(0.2)

    def psql(self, sql: str, database: str = "postgres") -> str:
        proc = run(
            [self._bin("psql"), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1",
             "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, "-d", database, "-c", sql]
        )
        return proc.stdout.strip()

    def _ensure_database(self) -> bool:
        if self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'") == "1":
            return False
        self.psql(f'CREATE DATABASE "{DATABASE}"')
        return True

    def stop(self, mode: str = "fast") -> None:
        run([self._bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"],
            user=self._os_user())

    def start(self) -> None:
        self._start()

    def down(self) -> list[str]:
        if not (self.data / "postmaster.pid").exists():
            return ["postgres: not running from " + str(self.data)]
        self.stop()
        return [f"postgres: stopped ({self.data})"]

    def status(self) -> str:
        if not self.ready():
            return "stopped"
        owned = (self.data / "postmaster.pid").exists()
        return f"running on 127.0.0.1:{self.port}" + ("" if owned else " (not started by us)")
