"""The HAProxy Runtime API over TCP is plaintext admin access: a Unix socket or loopback, or an
explicit vault.runtime_allow_remote (sinks/runtime_address.py, docs/security.md)."""

from __future__ import annotations

import subprocess

import pytest

from meterstream import settings as settings_mod
from meterstream.dev.processes import meterstream_exe
from meterstream.sinks.runtime_address import RuntimeAddress, parse


@pytest.mark.parametrize(("text", "address", "loopback"), [
    ("/run/haproxy/admin.sock", RuntimeAddress(path="/run/haproxy/admin.sock"), True),
    ("unix@/run/haproxy/admin.sock", RuntimeAddress(path="/run/haproxy/admin.sock"), True),
    ("haproxy.sock", RuntimeAddress(path="haproxy.sock"), True),
    ("127.0.0.1:9999", RuntimeAddress(host="127.0.0.1", port=9999), True),
    ("127.8.9.10:1", RuntimeAddress(host="127.8.9.10", port=1), True),
    ("[::1]:9999", RuntimeAddress(host="::1", port=9999), True),
    ("localhost:9999", RuntimeAddress(host="localhost", port=9999), True),
    ("10.0.0.5:9999", RuntimeAddress(host="10.0.0.5", port=9999), False),
    ("0.0.0.0:9999", RuntimeAddress(host="0.0.0.0", port=9999), False),
    ("[2001:db8::1]:9999", RuntimeAddress(host="2001:db8::1", port=9999), False),
    ("[::ffff:10.0.0.1]:9999", RuntimeAddress(host="::ffff:10.0.0.1", port=9999), False),
    ("haproxy.internal:9999", RuntimeAddress(host="haproxy.internal", port=9999), False),  # a name can change
    ("localhost.evil.example:9999", RuntimeAddress(host="localhost.evil.example", port=9999), False),
])
def test_addresses(text: str, address: RuntimeAddress, loopback: bool) -> None:
    assert parse(text) == address
    assert parse(text).is_loopback is loopback
    assert parse(str(address)) == address


@pytest.mark.parametrize("text", ["", "unix@", "host:", ":9999", "host:0", "host:65536", "host:http",
                                  "::1:9999", "[::1:9999", "[nonsense]:1", "[::1]9999"])
def test_bad_addresses(text: str) -> None:
    with pytest.raises(ValueError):
        parse(text)


def test_settings_refuse_a_remote_runtime_api_unless_allowed() -> None:
    with pytest.raises(settings_mod.ConfigError, match="10.0.0.5:9999 is not loopback") as caught:
        settings_mod.load(None, vault={"runtime_sockets": ["/run/h.sock", "10.0.0.5:9999"]})
    assert caught.value.problems[0].startswith("vault.runtime_sockets: ")
    allowed = settings_mod.load(None, vault={"runtime_sockets": ["10.0.0.5:9999"], "runtime_allow_remote": True})
    assert allowed.vault.runtime_sockets == ["10.0.0.5:9999"]
    assert settings_mod.load(None, vault={"runtime_sockets": ["127.0.0.1:9999", "[::1]:1"]}).vault.runtime_sockets


def test_the_vault_command_refuses_a_remote_runtime_socket_flag() -> None:
    """The command-line flag is checked as the setting is: exit 2 before anything starts."""
    out = subprocess.run([meterstream_exe(), "vault", "--runtime-socket", "192.0.2.7:9999"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "192.0.2.7:9999 is not loopback" in out.stderr and "runtime_allow_remote" in out.stderr
