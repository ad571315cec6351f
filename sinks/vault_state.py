"""MA_VAULT from Postgres (docs/sinks.md): one entry per customer, with its key hashes, services,
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

A row that makes no valid entry (a ``service_instances.config`` that is not InstanceConfig, a
seal key without an id: rows older than migration 0006) is skipped and listed in
``VaultState.skipped``; the rest of the vault is built as usual. A skipped service instance
makes its keys ``suspended`` in the map, as a missing instance does.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import asyncpg

from meterstream.pg import Row
from meterstream.schemas.enums import LimitKind, ServiceType, Tier, VaultStatus
from meterstream.schemas.tiers import effective_limits
from meterstream.schemas.vault import SealKeyEntry, ServiceEntry, ServiceName, VaultEntry
from meterstream.schemas.wire import WireError, validate

OPENING = {LimitKind.SPEND_CAP_REACHED, LimitKind.BALANCE_EXHAUSTED, LimitKind.RATE_EXCEEDED}
SERVICE_NAMES: dict[ServiceType, ServiceName] = {ServiceType.SEAL: "seal", ServiceType.GRPC: "grpc",
                                               ServiceType.GRAPHQL: "graphql"}


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
         COALESCE(NULLIF(regexp_replace(split_part(window_label, ':', 2), '[^0-9]', '', 'g'), ''), '0')::numeric DESC,
         kind IN ('spend_cleared', 'balance_restored', 'rate_cleared') DESC
"""


@dataclass(frozen=True, slots=True)
class SkippedRow:
    """A row that makes no valid vault entry: its table, its key (never a secret) and why."""

    table: str
    key: str
    error: str


@dataclass(frozen=True)
class VaultState:
    entries: list[VaultEntry]  # one per customer, by customer id
    map_lines: list[str]  # the HAProxy map: one line per active API key, by key hash
    skipped: list[SkippedRow] = field(default_factory=list)


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
    skipped: list[SkippedRow] = []
    hashes: dict[int, list[str]] = defaultdict(list)
    for row in keys:
        hashes[row["customer_id"]].append(row["api_key_hash"].strip())
    services: dict[int, dict[str, ServiceEntry]] = defaultdict(dict)
    for row in instances:
        try:
            name, entry = service_entry(row)
        except WireError as exc:
            skipped.append(SkippedRow("service_instances", f"{row['customer_id']}:{row['service_type']}", str(exc)))
            continue
        services[row["customer_id"]][name] = entry
    seal_keys: dict[int, list[SealKeyEntry]] = defaultdict(list)
    for row in seals:
        try:
            seal_keys[row["customer_id"]].append(seal_key_entry(row))
        except WireError as exc:
            skipped.append(SkippedRow("seal_keys", f"{row['customer_id']}:{row['seal_key_id'][:100]!r}", str(exc)))
    open_breaches: dict[int, set[LimitKind]] = defaultdict(set)
    for row in latest:
        kind = LimitKind(row["kind"])
        if kind in OPENING:
            open_breaches[row["customer_id"]].add(kind)
    entries = []
    for c in customers:
        customer = c["customer_id"]
        try:
            entries.append(validate(VaultEntry, {
                "customer_id": customer, "api_keys": sorted(hashes[customer]), "services": services[customer],
                "seal_keys": seal_keys[customer], "status": status_of(c["status"], open_breaches[customer])}))
        except WireError as exc:  # its keys are then unknown to the map
            skipped.append(SkippedRow("customers", str(customer), str(exc)))
    by_id = {e.customer_id: e for e in entries}
    lines = []
    for row in keys:
        owner = by_id.get(row["customer_id"])
        if owner is None:
            continue
        service = owner.services.get(SERVICE_NAMES[ServiceType(row["service_type"])])
        lines.append(f"{row['api_key_hash'].strip()} {map_value(owner.customer_id, service, owner.status)}")
    return VaultState(entries, lines, skipped)


def service_entry(row: Row) -> tuple[str, ServiceEntry]:
    """(service name, entry) of a service_instances row; raises WireError."""
    try:
        name, tier = SERVICE_NAMES[ServiceType(row["service_type"])], Tier(row["tier"])
    except (ValueError, KeyError):
        raise WireError("service_instances", "service_type", "not a known service and tier") from None
    limits = effective_limits(tier, row["config"])
    return name, validate(ServiceEntry, {"tier": tier, "guaranteed_rps": limits.guaranteed_rps,
                                         "burst_rps": limits.burst_rps, "enabled": row["enabled"]})


def seal_key_entry(row: Row) -> SealKeyEntry:
    """The entry of a seal_keys row with its packages; raises WireError."""
    return validate(SealKeyEntry, {"id": row["seal_key_id"], "package_ids": list(row["packages"] or ())})
