"""The tier catalogue (SPEC §3) and per-instance overrides (service_instances.config)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meterstream.schemas.enums import Tier


@dataclass(frozen=True, slots=True)
class TierLimits:
    guaranteed_rps: int  # per region
    burst_rps: int | None  # None: no burst allowance
    base_monthly_cents: int | None  # None: custom (enterprise)


CATALOGUE: dict[Tier, TierLimits] = {
    Tier.STARTER: TierLimits(guaranteed_rps=100, burst_rps=None, base_monthly_cents=2_000),
    Tier.PRO: TierLimits(guaranteed_rps=1_000, burst_rps=2_000, base_monthly_cents=4_000),
}
PRO_BURST_ADDON_CENTS = 1_000

# keys of service_instances.config that override the catalogue
OVERRIDE_KEYS = ("guaranteed_rps", "burst_rps")


def effective_limits(tier: Tier, config: dict[str, Any] | None = None) -> TierLimits:
    """The limits of one service instance: the catalogue, overridden by its config.

    Enterprise has no catalogue entry: its config must name guaranteed_rps (burst optional).
    """
    config = config or {}
    for key in OVERRIDE_KEYS:
        value = config.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ValueError(f"service_instances.config.{key} must be a non-negative integer")
    base = CATALOGUE.get(tier)
    if base is None:
        if config.get("guaranteed_rps") is None:
            raise ValueError(f"tier {tier.value} needs config.guaranteed_rps")
        return TierLimits(config["guaranteed_rps"], config.get("burst_rps"), None)
    return TierLimits(
        guaranteed_rps=config.get("guaranteed_rps", base.guaranteed_rps),
        burst_rps=config.get("burst_rps", base.burst_rps),
        base_monthly_cents=base.base_monthly_cents,
    )
