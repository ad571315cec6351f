"""Helpers for tests that run meterstream processes against the real services."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer

from meterstream.kafka_clients import client_kwargs
from meterstream.settings import DEV_KEY_SECRET_B64, KafkaSettings

ROOT = Path(__file__).resolve().parent.parent

LINE_TEMPLATE = (
    '{{"ts":{ts}.{ms:03d},"request_id":"{rid}","client_ip":"10.1.2.3","api_key_fp":"{fp}",'
    '"service_type":"1","network":"1","server_id":"16","fe_type":"2","traffic_type":"1",'
    '"event_type":"0","key_metadata":"S","status":200,"bytes_sent":"{bytes}",'
    '"path":"v1\\/fetch_k","TR":0,"Tw":0,"Tc":1,"Tr":3,"Ta":4,"backend_id":"3",'
    '"termination_state":"----","config_hex":"00000000"}}'
)
FINGERPRINTS = ["cba0c270", "13d8864c", "16f58caf", "7e000001", "8000abcd"]


def json_line(i: int, tag: str = "t") -> str:
    """A line as deploy/haproxy/haproxy.cfg logs it, with a unique request id."""
    return LINE_TEMPLATE.format(ts=1_795_600_000 + i // 1000, ms=i % 1000, rid=f"{tag}-{i:09d}",
                                fp=FINGERPRINTS[i % len(FINGERPRINTS)], bytes=100 + i % 900)


def kafka_env(kafka: KafkaSettings) -> dict[str, str]:
    """The MS_KAFKA__* environment that gives a process these Kafka settings (TLS, SASL)."""
    env = {f"MS_KAFKA__{name.upper()}": str(value) for name, value in kafka.model_dump().items()
           if value not in (None, "") and name != "sasl_password"}
    if kafka.sasl_password is not None:
        env["MS_KAFKA__SASL_PASSWORD"] = kafka.sasl_password.get_secret_value()
    return env


def require(tool: str) -> str:
    """The path of a tool the project's set-up installs (``meterstream dev up``: TOOLS); a
    test never installs it itself."""
    path = shutil.which(tool)
    assert path, f"{tool} is missing: the set-up installs it (deploy/dev.sh up)"
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def meterstream_exe() -> str:
    return shutil.which("meterstream", path=str(Path(sys.executable).parent)) or "meterstream"


class Process:
    """A meterstream subcommand run as a real process."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args, self.env, self.log = args, env, log
        self.http_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        self.http_port = free_port()
        out = open(self.log, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [meterstream_exe(), "--log-format", "json", *self.args, "--http-port", str(self.http_port)],
            env={**os.environ, **self.env}, stdout=out, stderr=subprocess.STDOUT,
        )
        out.close()
        return self

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
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

    def metric(self, name: str, labels: str = "", default: float | None = None) -> float:
        """A sample of /metrics; KeyError when absent, unless a default is given."""
        _, body = self.get("/metrics")
        prefix = f"{name}{{{labels}}} " if labels else f"{name} "
        for line in body.decode().splitlines():
            if line.startswith(prefix):
                return float(line.split()[-1])
        if default is not None:
            return default
        raise KeyError(prefix)

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


async def consume(kafka: KafkaSettings, topic: str, *, expect: int | None = None, quiet_s: float = 3.0,
                  timeout_s: float = 120.0, until: Callable[[list], bool] | None = None) -> list:
    """Every message of ``topic`` (decoded JSON values with keys), read until ``expect``
    messages arrived (or ``until`` holds) and then ``quiet_s`` without more."""
    consumer = AIOKafkaConsumer(topic, **client_kwargs(kafka), auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    out: list = []
    try:
        deadline = time.monotonic() + timeout_s
        last_growth = time.monotonic()
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for messages in batch.values():
                for m in messages:
                    out.append((m.key, orjson.loads(m.value)))
                last_growth = time.monotonic()
            done = (expect is not None and len(out) >= expect) or (until is not None and until(out))
            if (done or (expect is None and until is None)) and time.monotonic() - last_growth >= quiet_s:
                break
    finally:
        await consumer.stop()
    return out


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


class EchoBackend:
    """A small local HTTP backend: answers 200 with the X-Request-ID HAProxy forwarded."""

    def __init__(self) -> None:
        import http.server

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                body = orjson.dumps({"request_id": self.headers.get("X-Request-ID"),
                                     "api_key_forwarded": self.headers.get("X-API-Key") is not None})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        import threading

        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class HAProxy:
    """The real HAProxy running deploy/haproxy/haproxy.cfg, logging to a file."""

    def __init__(self, workdir: Path, backend_port: int, vault_map: Path | None = None,
                 key_secret_b64: str = DEV_KEY_SECRET_B64) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.log = workdir / "haproxy.log"
        self.socket = workdir / "haproxy.sock"
        self.vault_map = vault_map or workdir / "vault.map"
        self.vault_map.touch()
        # haproxy.cfg holds no key: the HMAC key the test's keys are hashed with (the tests'
        # settings hold the built-in development key)
        self.env = {"MS_KEY_SECRET_B64": key_secret_b64,
                    "MS_VAULT_MAP": str(self.vault_map), "MS_STATS_SOCKET": str(self.socket),
                    "MS_BIND": f"127.0.0.1:{self.port}", "MS_BACKEND": f"127.0.0.1:{backend_port}",
                    "MS_LOG_TARGET": "stdout"}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> HAProxy:
        out = open(self.log, "ab")  # noqa: SIM115
        err = open(self.workdir / "haproxy.stderr", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [require("haproxy"), "-f", str(ROOT / "deploy" / "haproxy" / "haproxy.cfg"), "-db"],
            env={**os.environ, **self.env}, stdout=out, stderr=err)
        out.close()
        err.close()
        wait_for(lambda: _port_open(self.port), 10, "haproxy listening")
        return self

    def request(self, path: str = "/v1/fetch_key/abc", key: str | None = None) -> tuple[int, bytes, int]:
        """(status, body, bytes received) of one HTTP/1.0 request through HAProxy."""
        head = f"GET {path} HTTP/1.0\r\nHost: api.test\r\n"
        if key is not None:
            head += f"X-API-Key: {key}\r\n"
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as conn:
            conn.sendall((head + "\r\n").encode())
            received = b""
            while chunk := conn.recv(65536):
                received += chunk
        status = int(received.split(b" ", 2)[1])
        return status, received.split(b"\r\n\r\n", 1)[1], len(received)

    def runtime(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX) as conn:
            conn.connect(str(self.socket))
            conn.sendall(command.encode() + b"\n")
            out = b""
            while chunk := conn.recv(65536):
                out += chunk
        return out.decode()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def own_services_or_skip(what: str):  # noqa: ANN201
    """The project's own dev services, for a test that stops or restarts one of them."""
    import pytest

    if os.environ.get("MS_TEST_EXTERNAL"):
        pytest.skip(f"{what}: only with the project's own services")
    from meterstream.dev.services import DevServices

    return DevServices.default()
