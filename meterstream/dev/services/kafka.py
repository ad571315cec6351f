"""A single-node KRaft Apache Kafka broker, run from the Maven Central jars on loopback.

Two client listeners: PLAINTEXT (development) and SASL_SSL with SCRAM-SHA-512, whose CA,
certificates and SCRAM user the set-up makes (meterstream.dev.services.kafka_tls). ``up`` on a
broker of ours whose configuration is outdated (written by an older set-up, or TLS files made
anew) restarts it once with the new one; the data stays.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from meterstream import checkout_root
from meterstream.dev.services.kafka_tls import SCRAM_MECHANISM, SCRAM_USER, KafkaTls
from meterstream.dev.services.system import (
    ServiceError,
    ensure_debian,
    port_open,
    read_pid,
    run,
    terminate,
)
from meterstream.settings import DEV_KAFKA_CONTROLLER_PORT, DEV_KAFKA_PORT, DEV_KAFKA_SASL_SSL_PORT, KafkaSettings

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
    sasl_ssl_port: int = DEV_KAFKA_SASL_SSL_PORT

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def sasl_ssl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.sasl_ssl_port}"

    @property
    def tls(self) -> KafkaTls:
        return KafkaTls(self.root / "tls")

    def secure_settings(self, *, mutual: bool = False) -> KafkaSettings:
        """Client settings of the SASL_SSL listener (SCRAM-SHA-512, the development CA; with
        the client certificate too when ``mutual``)."""
        return KafkaSettings.model_validate(self.tls.client_settings(self.sasl_ssl_bootstrap, mutual=mutual))

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
    @property
    def config_path(self) -> Path:
        return self.root / "server.properties"

    def _config_text(self) -> str:
        """server.properties as this set-up writes it (the TLS files must exist)."""
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port},"
                         f"SASL_SSL://127.0.0.1:{self.sasl_ssl_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port},SASL_SSL://127.0.0.1:{self.sasl_ssl_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL",
            **self.tls.listener_properties("SASL_SSL"),
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
        # the TLS files' digest: new files make the configuration outdated, so the broker reloads them
        header = f"# written by meterstream dev up; tls {self.tls.fingerprint()}\n"
        return header + "".join(f"{k}={v}\n" for k, v in props.items())

    def _write_config(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        path = self.config_path
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the keystore password
        with os.fdopen(fd, "w") as out:
            out.write(self._config_text())
        path.chmod(0o600)
        (self.root / "log4j2.properties").write_text(LOG4J2.format(logs=self.logs))
        return path

    def outdated(self) -> bool:
        """True when the running broker was started with another configuration than this
        set-up writes (an older set-up's, without the SASL_SSL listener; or other TLS files)."""
        try:
            return self.config_path.read_text() != self._config_text()
        except OSError:
            return True

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
        done += self.tls.ensure()
        if read_pid(self.pidfile) is None and port_open(self.port):
            if self.ready(timeout_s=30):
                # not ours: never restarted, whatever its configuration
                return [*done, f"kafka: reusing a broker already on {self.bootstrap} (its SASL_SSL listener, if "
                               "any, is not this set-up's)"]
            raise ServiceError(f"port {self.port} is taken by something that is not a Kafka broker")
        if read_pid(self.pidfile) is not None and self.ready(timeout_s=60):
            if not self.outdated():
                return [*done, *self._ensure_scram_user(libs), f"kafka: running on {self.bootstrap} and "
                                                               f"{self.sasl_ssl_bootstrap} (SASL_SSL) ({self.root})"]
            started = time.monotonic()
            self.stop()
            self.start(libs)
            done.append(f"kafka: restarted with the new configuration (SASL_SSL listener on {self.sasl_ssl_bootstrap}) "
                        f"in {time.monotonic() - started:.1f} s")
            return [*done, *self._ensure_scram_user(libs), f"kafka: running on {self.bootstrap} ({self.root})"]
        self.start(libs)
        return [*done, *self._ensure_scram_user(libs),
                f"kafka: started on {self.bootstrap} and {self.sasl_ssl_bootstrap} (SASL_SSL) ({self.root})"]

    def _ensure_scram_user(self, libs: Path) -> list[str]:
        """The SCRAM user exists with the password of its file: checked by logging in on the
        SASL_SSL listener; (re)set through the plaintext listener when refused."""
        from meterstream.kafka_access import KafkaAccessRefused, check

        settings = self.secure_settings().model_copy(update={"access_check_s": 10.0})
        try:
            unanswered = asyncio.run(check(settings))
        except KafkaAccessRefused:
            unanswered = "refused"
        if unanswered is None:
            return []
        password = self.tls.password_file.read_text().strip()
        with tempfile.TemporaryDirectory() as tmp:
            # the password goes in a java @argfile, not on a command line (ConfigCommand's own
            # --add-config-file refuses SCRAM credentials in Kafka 4.1)
            argfile = Path(tmp) / "scram.args"
            fd = os.open(argfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write("\n".join(["kafka.admin.ConfigCommand", "--bootstrap-server", self.bootstrap, "--alter",
                                     "--entity-type", "users", "--entity-name", SCRAM_USER, "--add-config",
                                     f"{SCRAM_MECHANISM}=[password={password}]"]) + "\n")
            java = self._java(libs, "kafka.admin.ConfigCommand")[:-1]  # the JVM's options and class path
            proc = subprocess.run([*java, f"@{argfile}"], capture_output=True, text=True)
            if proc.returncode != 0:
                said = (proc.stdout[-1000:] + proc.stderr[-1000:]).replace(password, "***")
                raise ServiceError(f"kafka: setting the SCRAM user {SCRAM_USER} failed ({proc.returncode}): {said}")
        deadline = time.monotonic() + 30
        while True:  # the credential reaches the listener through the metadata log
            try:
                if asyncio.run(check(settings)) is None:
                    return [f"kafka: SCRAM user {SCRAM_USER} set ({SCRAM_MECHANISM})"]
            except KafkaAccessRefused as exc:
                if time.monotonic() > deadline:
                    raise ServiceError(f"kafka: the SCRAM user does not log in: {exc}") from None
            if time.monotonic() > deadline:
                raise ServiceError(f"kafka: the SASL_SSL listener on {self.sasl_ssl_bootstrap} does not answer")
            time.sleep(0.5)

    def start(self, libs: Path | None = None) -> None:
        if libs is None:
            libs, _ = self.libs()
        self.tls.ensure()
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
        if not owned:
            return f"running on {self.bootstrap} (not started by us)"
        secure = f", SASL_SSL on {self.sasl_ssl_bootstrap}" if port_open(self.sasl_ssl_port) else ""
        return f"running on {self.bootstrap}{secure}" + (" (configuration outdated: `up` restarts it)"
                                                         if self.tls.ca.exists() and self.outdated() else "")


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
