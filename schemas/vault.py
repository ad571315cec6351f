"""Entries of MA_VAULT, the desired load-balancer state, on ``vault.updates`` (SPEC §7)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from meterstream.schemas.enums import Tier, VaultStatus
from meterstream.schemas.types import CustomerId, KeyHash
from meterstream.schemas.wire import WireModel

ServiceName = Literal["seal", "grpc", "graphql"]


class ServiceEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    tier: Tier
    guaranteed_rps: int = Field(ge=0)
    burst_rps: int | None = Field(default=None, ge=0)
    enabled: bool = True


class SealKeyEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    package_ids: list[str] = []


class VaultEntry(WireModel):
    """``customer:<id>`` in MA_VAULT."""

    customer_id: CustomerId
    api_keys: list[KeyHash] = []
    services: dict[ServiceName, ServiceEntry] = {}
    seal_keys: list[SealKeyEntry] = []
    status: VaultStatus = VaultStatus.ACTIVE
