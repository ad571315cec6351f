"""Real processes for the tests, the benchmarks and the demo: a ``meterstream`` subcommand
with its own environment and HTTP port, free ports, waiting for a condition, the tools the
set-up installs. See docs/dev-services.md."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from meterstream.dev import metrics
from meterstream.settings import KafkaSettings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def require(tool: str) -> str:
    """The path of a tool the project's set-up installs (``meterstream dev up``: TOOLS); a
    test never installs it itself."""
    path = shutil.which(tool)
    assert path, f"{tool} is missing: the set-up installs it (deploy/dev.sh up)"
    return path


def meterstream_exe() -> str:
    """The ``meterstream`` command of this Python environment."""
    return shutil.which("meterstream", path=str(Path(sys.executable).parent)) or "meterstream"


def kafka_env(kafka: KafkaSettings) -> dict[str, str]:
    """The MS_KAFKA__* environment that gives a process these Kafka settings (TLS, SASL)."""
    env = {f"MS_KAFKA__{name.upper()}": str(value) for name, value in kafka.model_dump().items()
           if value not in (None, "") and name != "sasl_password"}
    if kafka.sasl_password is not None:
        env["MS_KAFKA__SASL_PASSWORD"] = kafka.sasl_password.get_secret_value()
    return env


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


async def async_wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


class Process:
    """A meterstream subcommand run as a real process, logging JSON to ``log``, serving its
    /healthz and /metrics on a free port of its own. ``wrap`` goes before the command (for
    instance ``taskset -c 0``)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, wrap: Sequence[str] = ()) -> None:
        self.args, self.env, self.log, self.wrap = args, env, log, list(wrap)
        self.http_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        self.http_port = free_port()
        out = open(self.log, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [*self.wrap, meterstream_exe(), "--log-format", "json", *self.args, "--http-port", str(self.http_port)],
            env={**os.environ, **self.env}, stdout=out, stderr=subprocess.STDOUT,
        )
        out.close()
        return self

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
        """(status, body) of a GET on the process's HTTP port, retried until it listens."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=2) as r:
                    return r.status, r.read()
            except urllib.error.HTTPError as e:
                return e.code, e.read()
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def scrape(self, timeout: float = 10.0) -> str:
        """The text of its /metrics."""
        return self.get("/metrics", timeout)[1].decode()

    def metric(self, name: str, labels: str = "", default: float | None = None) -> float:
        """A sample of /metrics (``labels`` as the exposition writes them: ``a="x",b="y"``);
        KeyError when absent, unless a default is given."""
        return metrics.value(self.scrape(), name, labels, default)

    def terminate(self, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
