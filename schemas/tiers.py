"""The tier catalogue (docs/metering.md) and per-instance overrides (service_instances.config)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from meterstream.schemas.enums import Tier
from meterstream.schemas.types import RPS_MAX, Rps
from meterstream.schemas.wire import WireError, decode, validate

# keys of service_instances.config that override the catalogue
OVERRIDE_KEYS = ("guaranteed_rps", "burst_rps")


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


class InstanceConfig(BaseModel):
    """``service_instances.config`` (JSONB): the overrides of the catalogue, each a whole number
    of requests per second within ``RPS_MAX`` (the table's CHECK ``service_instances_rps_in_range``,
    migration 0006, says the same). Other keys are the operators' and are ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    guaranteed_rps: Rps | None = None
    burst_rps: Rps | None = None


def instance_config(config: str | bytes | Mapping[str, Any] | InstanceConfig | None) -> InstanceConfig:
    """The overrides of a ``config`` column (its JSON text, or already parsed); raises
    WireError naming the offending key, never with its value."""
    if isinstance(config, InstanceConfig):
        return config
    try:
        if isinstance(config, str | bytes):
            return decode(InstanceConfig, config)
        return validate(InstanceConfig, {} if config is None else config)
    except WireError as exc:
        if exc.field in OVERRIDE_KEYS:
            raise WireError("service_instances.config", exc.field,
                            f"must be a non-negative integer up to {RPS_MAX}") from None
        raise WireError("service_instances.config", exc.field, exc.message) from None


def effective_limits(tier: Tier, config: str | bytes | Mapping[str, Any] | InstanceConfig | None = None) -> TierLimits:
    """The limits of one service instance: the catalogue, overridden by its config.

    Enterprise has no catalogue entry: its config must name guaranteed_rps (burst optional).
    Raises WireError (a ValueError) for a config outside InstanceConfig.
    """
    overrides = instance_config(config)
    base = CATALOGUE.get(tier)
    if base is None:
        if overrides.guaranteed_rps is None:
            raise WireError("service_instances.config", "guaranteed_rps",
                            f"tier {tier.value} needs config.guaranteed_rps")
        return TierLimits(overrides.guaranteed_rps, overrides.burst_rps, None)
    return TierLimits(
        guaranteed_rps=base.guaranteed_rps if overrides.guaranteed_rps is None else overrides.guaranteed_rps,
        burst_rps=base.burst_rps if overrides.burst_rps is None else overrides.burst_rps,
        base_monthly_cents=base.base_monthly_cents,
    )
