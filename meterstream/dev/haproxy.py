"""The real HAProxy running deploy/haproxy/haproxy.cfg, and a small backend behind it, for the
tests, the benchmarks and the closed loop. See docs/dev-services.md."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import threading
from pathlib import Path

import orjson

from meterstream import checkout_root
from meterstream.dev.processes import free_port, port_open, require, wait_for
from meterstream.settings import DEV_KEY_SECRET_B64


def haproxy_cfg() -> Path:
    root = checkout_root()
    if root is None:
        raise FileNotFoundError("deploy/haproxy/haproxy.cfg ships with the source checkout")
    return root / "deploy" / "haproxy" / "haproxy.cfg"


class EchoBackend:
    """A small local HTTP backend: answers 200 with the X-Request-ID HAProxy forwarded."""

    def __init__(self) -> None:
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
        # haproxy.cfg holds no key: the HMAC key the keys it is asked with are hashed with
        # (by default the built-in development key, which development-mode settings hold)
        self.env = {"MS_KEY_SECRET_B64": key_secret_b64,
                    "MS_VAULT_MAP": str(self.vault_map), "MS_STATS_SOCKET": str(self.socket),
                    "MS_BIND": f"127.0.0.1:{self.port}", "MS_BACKEND": f"127.0.0.1:{backend_port}",
                    "MS_LOG_TARGET": "stdout"}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> HAProxy:
        out = open(self.log, "ab")  # noqa: SIM115
        err = open(self.workdir / "haproxy.stderr", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [require("haproxy"), "-f", str(haproxy_cfg()), "-db"],
            env={**os.environ, **self.env}, stdout=out, stderr=err)
        out.close()
        err.close()
        wait_for(lambda: port_open(self.port), 10, "haproxy listening")
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
