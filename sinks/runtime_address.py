"""Where a HAProxy Runtime API socket is (``vault.runtime_sockets``): a Unix socket path, or a
TCP ``host:port`` (``[v6]:port`` for IPv6).

The Runtime API at ``level admin`` is plaintext and unauthenticated: whoever can connect can
change every map, disable servers and read the traffic state. A Unix socket (file mode and
group decide who connects) or a loopback address is what the vault uses; any other TCP
address is refused unless ``vault.runtime_allow_remote`` says so explicitly
(docs/security.md). A host name other than ``localhost`` is not loopback: what it resolves to
can change.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RuntimeAddress:
    path: str | None = None  # a Unix socket
    host: str | None = None  # TCP (an IPv6 address without brackets)
    port: int | None = None

    @property
    def is_tcp(self) -> bool:
        return self.path is None

    @property
    def is_loopback(self) -> bool:
        if not self.is_tcp:
            return True  # a local socket file
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host or "").is_loopback
        except ValueError:
            return False  # a host name: what it resolves to can change

    def __str__(self) -> str:
        if self.path is not None:
            return self.path
        return f"[{self.host}]:{self.port}" if ":" in (self.host or "") else f"{self.host}:{self.port}"


def parse(text: str) -> RuntimeAddress:
    """A Unix socket path (``/run/haproxy/admin.sock``, ``unix@/run/...``, or any text without
    a colon) or ``host:port`` / ``[v6]:port``. Raises ValueError naming what is wrong."""
    text = text.strip()
    if not text:
        raise ValueError("an empty Runtime API address")
    if text.startswith("unix@"):
        text = text.removeprefix("unix@")
        if not text:
            raise ValueError("unix@ without a path")
        return RuntimeAddress(path=text)
    if text.startswith(("/", ".")) or ":" not in text:
        return RuntimeAddress(path=text)
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError("an IPv6 address is written [address]:port")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("not an IPv6 address between [ and ]") from None
    else:
        host, _, port = text.rpartition(":")
        if ":" in host:
            raise ValueError("an IPv6 address is written [address]:port")
        if not host:
            raise ValueError("host:port without a host")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError("the port is not 1-65535")
    return RuntimeAddress(host=host, port=int(port))
