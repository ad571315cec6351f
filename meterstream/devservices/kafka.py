"""A single-node KRaft Apache Kafka broker, run from the Maven Central jars on loopback."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from meterstream import checkout_root
from meterstream.devservices.system import (
    ServiceError,
    ensure_debian,
    port_open,
    read_pid,
    run,
    terminate,
)
from meterstream.settings import DEV_KAFKA_CONTROLLER_PORT, DEV_KAFKA_PORT

# The broker's heap is bounded so the test suite fits a 2-core, 24 GiB machine.
JVM_OPTS = [
    "-Xms256m", "-Xmx512m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
    "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
]

LOG4J2 = """\
status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = {logs}/server.log
appender.file.filePattern = {logs}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 2
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
logger.state.name = state.change.logger
logger.state.level = warn
"""


def pom_path() -> Path:
    root = checkout_root()
    if root is None:
        raise ServiceError("the dev services need a source checkout (deploy/kafka/pom.xml)")
    return root / "deploy" / "kafka" / "pom.xml"


def kafka_version(pom: Path) -> str:
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom.read_text())
    if match is None:
        raise ServiceError(f"no <kafka.version> in {pom}")
    return match[1]


def jar_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "meterstream"


@dataclass
class KafkaBroker:
    root: Path
    port: int = DEV_KAFKA_PORT
    controller_port: int = DEV_KAFKA_CONTROLLER_PORT

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pidfile(self) -> Path:
        return self.root / "broker.pid"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    # -- install ---------------------------------------------------------------------------
    def libs(self) -> tuple[Path, list[str]]:
        """The broker's jars, resolved by Maven once per pom content and cached."""
        done = []
        for tool, package in (("java", "openjdk-17-jre-headless"), ("mvn", "maven")):
            if shutil.which(tool) is None:
                done += [f"installed {name}" for name in ensure_debian(package)]
        pom = pom_path()
        digest = hashlib.sha256(pom.read_bytes()).hexdigest()[:12]
        target = jar_cache() / f"kafka-{kafka_version(pom)}-{digest}"
        if not (target / ".complete").exists():
            staging = target.with_name(target.name + ".partial")
            shutil.rmtree(staging, ignore_errors=True)
            run(["mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
                 "-DincludeScope=runtime", f"-DoutputDirectory={staging / 'libs'}"])
            (staging / ".complete").write_text(digest)
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
            done.append(f"kafka: resolved broker jars into {target}")
        return target / "libs", done

    # -- configure -------------------------------------------------------------------------
    def _write_config(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.root / "data"),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "8",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "num.network.threads": "2",
            "num.io.threads": "4",
            "log.retention.hours": "24",
            "delete.topic.enable": "true",
        }
        path = self.root / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.root / "log4j2.properties").write_text(LOG4J2.format(logs=self.logs))
        return path

    def _java(self, libs: Path, main: str, *args: str) -> list[str]:
        return ["java", *JVM_OPTS,
                f"-Dlog4j2.configurationFile={self.root / 'log4j2.properties'}",
                f"-Dkafka.logs.dir={self.logs}", "-cp", f"{libs}/*", main, *args]

    def _format(self, libs: Path, config: Path) -> None:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        run(self._java(libs, "kafka.tools.StorageTool", "format", "-t", cluster_id,
                       "-c", str(config), "--ignore-formatted"))

    # -- run ---------------------------------------------------------------------------------
    def up(self) -> list[str]:
        libs, done = self.libs()
        if read_pid(self.pidfile) is None and port_open(self.port):
            if self.ready(timeout_s=30):
                return [*done, f"kafka: reusing a broker already on {self.bootstrap}"]
            raise ServiceError(f"port {self.port} is taken by something that is not a Kafka broker")
        if read_pid(self.pidfile) is not None and self.ready(timeout_s=60):
            return [*done, f"kafka: running on {self.bootstrap} ({self.root})"]
        self.start(libs)
        return [*done, f"kafka: started on {self.bootstrap} ({self.root})"]

    def start(self, libs: Path | None = None) -> None:
        if libs is None:
            libs, _ = self.libs()
        config = self._write_config()
        if not (self.root / "data" / "meta.properties").exists():
            self._format(libs, config)
        with open(self.logs / "stdout.log", "ab") as out:
            proc = subprocess.Popen(
                self._java(libs, "kafka.Kafka", str(config)),
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=self.root,
            )
        self.pidfile.write_text(str(proc.pid))
        if not self.ready(timeout_s=90, pid=proc.pid):
            raise ServiceError(f"kafka did not become ready; see {self.logs}")

    def stop(self, kill: bool = False) -> None:
        pid = read_pid(self.pidfile)
        if pid is not None:
            terminate(pid, timeout_s=0 if kill else 60)
        self.pidfile.unlink(missing_ok=True)

    def ready(self, timeout_s: float = 60, pid: int | None = None) -> bool:
        """True once the broker answers a metadata request (not only accepts connections)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if pid is not None and read_pid(self.pidfile) is None:
                return False
            if port_open(self.port) and asyncio.run(_answers(self.bootstrap)):
                return True
            time.sleep(0.5)
        return False

    def down(self) -> list[str]:
        if read_pid(self.pidfile) is None:
            return [f"kafka: not running from {self.root}"]
        self.stop()
        return [f"kafka: stopped ({self.root})"]

    def status(self) -> str:
        owned = read_pid(self.pidfile) is not None
        if not port_open(self.port):
            return "stopped"
        return f"running on {self.bootstrap}" + ("" if owned else " (not started by us)")


async def _answers(bootstrap: str) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await asyncio.wait_for(admin.start(), 10)
        await asyncio.wait_for(admin.list_topics(), 10)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not ready yet"
        return False
    finally:
        try:
            await asyncio.wait_for(admin.close(), 5)
        except Exception:  # noqa: BLE001
            pass
