"""Reading ``vault.updates`` back at the vault's start: what the compacted topic holds for each
customer, and the messages whose key names no customer.

The topic is keyed by customer id in decimal (docs/wire.md). A key that is not one (not digits, a
leading zero, zero, beyond 32 bits, no key at all) cannot be compared with any entry the vault
builds: the vault dead-letters such a message and publishes a tombstone for its key, so the
topic's readers never see it again and a restart does not report it twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from meterstream.schemas.types import INT32_MAX

Record = tuple[int, int, bytes | None, bytes | None]  # (partition, offset, key, value)


class UnknownKey(ValueError):
    """A vault.updates key that is not a customer id."""


def customer_of(key: bytes | None) -> int:
    """The customer id a key names (canonical decimal, 1 .. 2^31-1); raises UnknownKey."""
    if key is None:
        raise UnknownKey("no key")
    if not 1 <= len(key) <= 10 or not key.isdigit() or key.startswith(b"0"):
        raise UnknownKey("not a customer id in decimal")
    customer = int(key)
    if customer > INT32_MAX:
        raise UnknownKey("beyond a 32-bit customer id")
    return customer


@dataclass(frozen=True, slots=True)
class Foreign:
    """A message whose key names no customer: its position, key, value, and why."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str


@dataclass(slots=True)
class Held:
    published: dict[int, bytes] = field(default_factory=dict)  # customer -> its entry's bytes
    foreign: list[Foreign] = field(default_factory=list)  # last value of each foreign key, not a tombstone


def held(records: Iterable[Record]) -> Held:
    """What the topic holds, as compaction will leave it. Never raises."""
    out = Held()
    foreign: dict[bytes, Foreign] = {}
    for partition, offset, key, value in records:
        try:
            customer = customer_of(key)
        except UnknownKey as exc:
            if key is None:  # no key, so nothing compacts it away: each is reported
                if value is not None:
                    out.foreign.append(Foreign(partition, offset, None, value, str(exc)))
            elif value is None:
                foreign.pop(key, None)  # already tombstoned
            else:
                foreign[key] = Foreign(partition, offset, key, value, str(exc))
            continue
        if value is None:
            out.published.pop(customer, None)
        else:
            out.published[customer] = value
    out.foreign += foreign.values()
    return out
