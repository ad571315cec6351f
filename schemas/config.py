"""Configuration state published from Postgres to the compacted ``meter.*`` topics (docs/wire.md)."""

from __future__ import annotations

from pydantic import model_validator

from meterstream.schemas import money
from meterstream.schemas.enums import ApiKeyStatus, CustomerStatus, ServiceType, SpendWindow, Tier
from meterstream.schemas.types import CustomerId, Fingerprint, KeyHash, Micros, Rps
from meterstream.schemas.wire import WireModel


class ApiKeyState(WireModel):
    """``meter.apikeys``, keyed by api_key_fp; a deleted key is a tombstone."""

    api_key_fp: Fingerprint
    api_key_hash: KeyHash
    customer_id: CustomerId
    service_type: ServiceType
    status: ApiKeyStatus = ApiKeyStatus.ACTIVE


class InstanceState(WireModel):
    """``meter.instances``, keyed by ``customer_id:service_type``."""

    customer_id: CustomerId
    service_type: ServiceType
    tier: Tier
    enabled: bool = True
    guaranteed_rps: Rps | None = None  # override of the tier (service_instances.config)
    burst_rps: Rps | None = None  # override of the tier

    @model_validator(mode="after")
    def _enterprise_has_limits(self) -> InstanceState:
        if self.tier is Tier.ENTERPRISE and self.guaranteed_rps is None:
            raise ValueError("an enterprise instance names its guaranteed_rps")
        return self


class CustomerState(WireModel):
    """``meter.customers``, keyed by customer_id. Money in micro-dollars."""

    customer_id: CustomerId
    status: CustomerStatus = CustomerStatus.ACTIVE
    spend_cap_micros: Micros = money.cents_to_micros(money.SPEND_CAP_DEFAULT_CENTS)
    spend_window: SpendWindow = SpendWindow.ROLLING_30D
    balance_micros: Micros = 0
    committed_charges_micros: Micros = 0

    @model_validator(mode="after")
    def _cap_in_range(self) -> CustomerState:
        low = money.cents_to_micros(money.SPEND_CAP_MIN_CENTS)
        high = money.cents_to_micros(money.SPEND_CAP_MAX_CENTS)
        if not low <= self.spend_cap_micros <= high:
            raise ValueError(f"spend_cap_micros must be within {low} - {high}")
        return self
