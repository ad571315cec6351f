"""How the sink's rows carry timestamps and addresses to the binary COPY.

asyncpg encodes a ``datetime`` for a TIMESTAMPTZ column by subtracting an epoch (a timedelta
per value) and an address for an INET column by building an ``ipaddress`` object (even from
its packed bytes): together more than half of the client's cost of a raw-log row in the
sink's profile (docs/sinks.md). On the sink's connections (``prepare``) the two types are encoded from
what the rows already hold instead:

- TIMESTAMPTZ: epoch milliseconds, the wire models' ``EpochMs`` (2000-2100), sent as
  Postgres's binary value (microseconds since 2000-01-01). Read back as epoch milliseconds.
- INET: the binary value itself (family, bits, flag, length, address), built once per
  distinct client address by ``inet``; None (NULL) for text that is not an IP address.

Every handler's rows follow this, so any code that writes them (the sink, ``isolate``, tests)
calls ``prepare`` on its connection first.
"""

from __future__ import annotations

import functools
import ipaddress

import asyncpg

PG_EPOCH_MS = 946_684_800_000  # 2000-01-01T00:00:00Z, Postgres's epoch, in Unix milliseconds
# family (PGSQL_AF_INET 2, PGSQL_AF_INET6 3), mask bits, is_cidr, address length
_INET_HEADER = {4: b"\x02\x20\x00\x04", 16: b"\x03\x80\x00\x10"}


def _timestamp_out(ms: int) -> tuple[int]:
    return ((ms - PG_EPOCH_MS) * 1000,)


def _timestamp_in(value: tuple[int]) -> int:
    return value[0] // 1000 + PG_EPOCH_MS


def _inet_out(value: bytes) -> bytes:
    return value


async def prepare(conn: asyncpg.Connection) -> None:
    """Makes ``conn`` take the sink's row values for TIMESTAMPTZ and INET columns."""
    await conn.set_type_codec("timestamptz", schema="pg_catalog", format="tuple",
                              encoder=_timestamp_out, decoder=_timestamp_in)
    await conn.set_type_codec("inet", schema="pg_catalog", format="binary", encoder=_inet_out, decoder=bytes)


@functools.lru_cache(maxsize=65_536)
def inet(text: str) -> bytes | None:
    """The binary INET value of an address, or None when ``text`` is not one (HAProxy logs a
    unix socket peer or nothing). Cached: client addresses repeat."""
    try:
        packed = ipaddress.ip_address(text).packed
    except ValueError:
        return None
    return _INET_HEADER[len(packed)] + packed
