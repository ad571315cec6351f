"""Who may send to the syslog receiver, and the UDP senders it keeps track of.

``AllowList``: the sender networks of ``syslog.allowed_networks`` (IPv4 and IPv6 CIDRs; an
IPv4 sender reaching an IPv6 dual-stack socket as ``::ffff:a.b.c.d`` is judged as IPv4).

``Senders``: the UDP senders (address, port) seen recently, each with its allow-list verdict
(so a datagram costs one dictionary lookup, not a network match) and when it was last seen. It is
bounded: at most ``max_entries`` (the least recently seen is forgotten first) and a sender
silent for ``idle_s`` is forgotten. Positions do not depend on it (docs/ingest.md).
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from dataclasses import dataclass

from meterstream.ingest import metrics

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: list[str]) -> list[Network]:
    """The networks of ``cidrs``; ValueError names one that is not a network (host bits set
    included: ``10.0.0.1/8`` is refused as the likely typo it is)."""
    return [ipaddress.ip_network(cidr.strip()) for cidr in cidrs]


class AllowList:
    def __init__(self, cidrs: list[str]) -> None:
        networks = parse_networks(cidrs)
        self.v4 = [n for n in networks if n.version == 4]
        self.v6 = [n for n in networks if n.version == 6]

    def allows(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        networks = self.v4 if address.version == 4 else self.v6
        return any(address in network for network in networks)


@dataclass(slots=True)
class Sender:
    allowed: bool
    last_seen: float


class Senders:
    def __init__(self, allow: AllowList, max_entries: int, idle_s: float) -> None:
        self.allow = allow
        self.max_entries = max_entries
        self.idle_s = idle_s
        self._senders: OrderedDict[tuple[str, int], Sender] = OrderedDict()  # least recently seen first

    def __len__(self) -> int:
        return len(self._senders)

    def seen(self, peer: tuple[str, int], now: float | None = None) -> tuple[Sender, bool]:
        """The sender of a datagram, and whether it is new (not tracked until now)."""
        now = time.monotonic() if now is None else now
        sender = self._senders.get(peer)
        new = sender is None
        if sender is None:
            sender = self._senders[peer] = Sender(self.allow.allows(peer[0]), now)
            while len(self._senders) > self.max_entries:
                self._senders.popitem(last=False)
                metrics.SYSLOG_UDP_SENDERS_FORGOTTEN.labels("limit").inc()
        else:
            self._senders.move_to_end(peer)
            sender.last_seen = now
        return sender, new

    def expire(self, now: float | None = None) -> int:
        """Forget the senders silent for ``idle_s``; returns how many."""
        now = time.monotonic() if now is None else now
        forgotten = 0
        while self._senders:
            peer, sender = next(iter(self._senders.items()))
            if now - sender.last_seen < self.idle_s:
                break
            del self._senders[peer]
            forgotten += 1
        if forgotten:
            metrics.SYSLOG_UDP_SENDERS_FORGOTTEN.labels("idle").inc(forgotten)
        return forgotten


class Throttle:
    """At most one event per ``interval_s`` (for log lines about refused senders)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last = float("-inf")
        self.suppressed = 0

    def ready(self) -> bool:
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            return True
        self.suppressed += 1
        return False

    def take_suppressed(self) -> int:
        count, self.suppressed = self.suppressed, 0
        return count


def show(peer: tuple[str, int]) -> str:
    """``host:port``, with brackets around an IPv6 address."""
    host, port = peer[0], peer[1]
    if host.startswith("::ffff:") and "." in host:  # an IPv4 sender on a dual-stack socket
        host = host[7:]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
