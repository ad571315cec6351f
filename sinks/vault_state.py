"""MA_VAULT from Postgres (SPEC §7): one entry per customer, with its key hashes, services,
seal keys and status. The status rule is pure (``status_of``); the rest reads tables.

Status, in this order:
- ``suspended``: ``customers.status`` is not ``active``, or the customer's latest spend event
  is ``spend_cap_reached`` (not yet ``spend_cleared``), or its latest balance event is
  ``balance_exhausted`` (not yet ``balance_restored``);
- ``throttled``: the latest rate event of one of its (service, region) is ``rate_exceeded``
  (not yet ``rate_cleared``);
- ``active`` otherwise.

"Latest" orders a family's events by event time, then by their crossing number (the last
part of the window label), then a recovery after a crossing at the same instant (a cap
raised at the very watermark of the crossing).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from meterstream.schemas.enums import LimitKind, ServiceType, Tier, VaultStatus
from meterstream.schemas.tiers import effective_limits
from meterstream.schemas.vault import SealKeyEntry, ServiceEntry, VaultEntry

OPENING = {LimitKind.SPEND_CAP_REACHED, LimitKind.BALANCE_EXHAUSTED, LimitKind.RATE_EXCEEDED}
SERVICE_NAMES = {ServiceType.SEAL: "seal", ServiceType.GRPC: "grpc", ServiceType.GRAPHQL: "graphql"}


def status_of(customer_status: str, open_breaches: set[LimitKind]) -> VaultStatus:
    if customer_status != "active":
        return VaultStatus.SUSPENDED
    if open_breaches & {LimitKind.SPEND_CAP_REACHED, LimitKind.BALANCE_EXHAUSTED}:
        return VaultStatus.SUSPENDED
    if LimitKind.RATE_EXCEEDED in open_breaches:
        return VaultStatus.THROTTLED
    return VaultStatus.ACTIVE


_LATEST_SQL = """
SELECT DISTINCT ON (customer_id, family, service_type, region_id) customer_id, kind
FROM (SELECT customer_id, kind, service_type, region_id, at, window_label,
             CASE WHEN kind IN ('spend_cap_reached', 'spend_cleared') THEN 'spend'
                  WHEN kind IN ('balance_exhausted', 'balance_restored') THEN 'balance'
                  ELSE 'rate' END AS family
      FROM limit_events
      WHERE kind IN ('spend_cap_reached', 'spend_cleared', 'balance_exhausted', 'balance_restored',
                     'rate_exceeded', 'rate_cleared') AND customer_id > 0) e
ORDER BY customer_id, family, service_type, region_id, at DESC,
         COALESCE(NULLIF(regexp_replace(split_part(window_label, ':', 2), '[^0-9]', '', 'g'), ''), '0')::bigint DESC,
         kind IN ('spend_cleared', 'balance_restored', 'rate_cleared') DESC
"""


@dataclass(frozen=True)
class VaultState:
    entries: list[VaultEntry]  # one per customer, by customer id
    map_lines: list[str]  # the HAProxy map: one line per active API key, by key hash


def map_value(customer_id: int, service: ServiceEntry | None, status: VaultStatus) -> str:
    """``customer_id,tier,guaranteed_rps,burst_enabled,status`` (deploy/haproxy/haproxy.cfg
    denies on the 5th field). A key whose service instance is missing or disabled is
    ``suspended``: the customer has not got that service."""
    if service is None or not service.enabled:
        tier, guaranteed, burst = (service.tier.value, service.guaranteed_rps, service.burst_rps) if service \
            else ("none", 0, None)
        return f"{customer_id},{tier},{guaranteed},{int(bool(burst))},{VaultStatus.SUSPENDED.value}"
    return (f"{customer_id},{service.tier.value},{service.guaranteed_rps},{int(bool(service.burst_rps))},"
            f"{status.value}")


async def build(conn: asyncpg.Connection) -> VaultState:
    """Every customer's entry, ordered by customer id, read in one snapshot."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        customers = await conn.fetch("SELECT customer_id, status FROM customers ORDER BY customer_id")
        keys = await conn.fetch("SELECT customer_id, api_key_hash, service_type FROM api_keys "
                                "WHERE status = 'active' ORDER BY api_key_hash")
        instances = await conn.fetch("SELECT customer_id, service_type, tier, enabled, config::text AS config "
                                     "FROM service_instances")
        seals = await conn.fetch(
            """SELECT k.customer_id, k.seal_key_id,
                      array_remove(array_agg(p.package_id ORDER BY p.package_id), NULL) AS packages
               FROM seal_keys k LEFT JOIN seal_key_packages p USING (seal_key_id)
               WHERE k.enabled GROUP BY k.customer_id, k.seal_key_id ORDER BY k.customer_id, k.seal_key_id""")
        latest = await conn.fetch(_LATEST_SQL)
    hashes: dict[int, list[str]] = defaultdict(list)
    for row in keys:
        hashes[row["customer_id"]].append(row["api_key_hash"].strip())
    services: dict[int, dict[str, ServiceEntry]] = defaultdict(dict)
    for row in instances:
        services[row["customer_id"]][SERVICE_NAMES[ServiceType(row["service_type"])]] = _service(row)
    seal_keys: dict[int, list[SealKeyEntry]] = defaultdict(list)
    for row in seals:
        seal_keys[row["customer_id"]].append(SealKeyEntry(id=row["seal_key_id"], package_ids=list(row["packages"])))
    open_breaches: dict[int, set[LimitKind]] = defaultdict(set)
    for row in latest:
        kind = LimitKind(row["kind"])
        if kind in OPENING:
            open_breaches[row["customer_id"]].add(kind)
    entries = [VaultEntry(customer_id=c["customer_id"], api_keys=sorted(hashes[c["customer_id"]]),
                          services=services[c["customer_id"]], seal_keys=seal_keys[c["customer_id"]],
                          status=status_of(c["status"], open_breaches[c["customer_id"]]))
               for c in customers]
    by_id = {e.customer_id: e for e in entries}
    lines = []
    for row in keys:
        entry = by_id[row["customer_id"]]
        service = entry.services.get(SERVICE_NAMES[ServiceType(row["service_type"])])
        lines.append(f"{row['api_key_hash'].strip()} {map_value(entry.customer_id, service, entry.status)}")
    return VaultState(entries, lines)


def _service(row: Any) -> ServiceEntry:
    config = orjson.loads(row["config"])
    limits = effective_limits(Tier(row["tier"]), config)
    return ServiceEntry(tier=Tier(row["tier"]), guaranteed_rps=limits.guaranteed_rps, burst_rps=limits.burst_rps,
                        enabled=row["enabled"])
