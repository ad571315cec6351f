"""The HAProxy Runtime API (the ``stats socket`` of deploy/haproxy/haproxy.cfg): replacing a
map's whole content live, without a reload.

``prepare map <map>`` opens a new, empty version; ``add map @<ver> <map> <key> <value>`` fills
it; ``commit map @<ver> <map>`` makes it the map's content at once (lookups see the old
content or the new, never a mix). Commands are sent several to a connection, separated by
``;`` (the socket's non-interactive mode).

The socket is a Unix socket path or a loopback ``host:port`` (sinks/runtime_address.py): the
Runtime API is plaintext admin access.
"""

from __future__ import annotations

import asyncio
import re

from meterstream.sinks.runtime_address import parse

COMMANDS_PER_CONNECTION = 200


class RuntimeApiError(RuntimeError):
    """HAProxy refused a Runtime API command."""


async def _send(socket_path: str, command: str, timeout_s: float = 10.0) -> str:
    address = parse(socket_path)  # settings refused a remote address unless allowed (docs/security.md)
    if address.is_tcp:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(address.host, address.port), timeout_s)
    else:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(address.path), timeout_s)
    try:
        writer.write(command.encode() + b"\n")
        await writer.drain()
        return (await asyncio.wait_for(reader.read(), timeout_s)).decode(errors="replace")
    finally:
        writer.close()


async def replace_map(socket_path: str, map_name: str, lines: list[str]) -> int:
    """Replaces the content of ``map_name`` (as HAProxy loaded it: its file path) with
    ``lines`` (``key value``); returns the committed version."""
    answer = await _send(socket_path, f"prepare map {map_name}")
    found = re.search(r"New version created:\s*(\d+)", answer)
    if found is None:
        raise RuntimeApiError(f"prepare map {map_name}: {answer.strip()}")
    version = int(found.group(1))
    for start in range(0, len(lines), COMMANDS_PER_CONNECTION):
        chunk = lines[start:start + COMMANDS_PER_CONNECTION]
        answer = await _send(socket_path, ";".join(f"add map @{version} {map_name} {line}" for line in chunk))
        if answer.strip():  # add map answers nothing when it succeeds
            raise RuntimeApiError(f"add map @{version} {map_name}: {answer.strip()[:200]}")
    answer = await _send(socket_path, f"commit map @{version} {map_name}")
    if answer.strip():
        raise RuntimeApiError(f"commit map @{version} {map_name}: {answer.strip()[:200]}")
    return version


async def answers(socket_path: str, timeout_s: float = 5.0) -> str | None:
    """None when HAProxy answers ``show info`` on this socket; otherwise what went wrong
    (`meterstream check`)."""
    try:
        answer = await _send(socket_path, "show info", timeout_s)
    except (OSError, TimeoutError, ValueError) as exc:
        return f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}"
    if "Name:" not in answer:
        return f"it answered, but not as HAProxy's Runtime API: {answer.strip()[:100]!r}"
    return None
