"""Entries of MA_VAULT, the desired load-balancer state, on ``vault.updates`` (docs/sinks.md)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from meterstream.schemas.enums import Tier, VaultStatus
from meterstream.schemas.types import CustomerId, KeyHash, Rps, Text
from meterstream.schemas.wire import WireModel

ServiceName = Literal["seal", "grpc", "graphql"]


class ServiceEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    tier: Tier
    guaranteed_rps: Rps
    burst_rps: Rps | None = None
    enabled: bool = True


class SealKeyEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: Text = Field(min_length=1, max_length=100)  # seal_keys.seal_key_id
    package_ids: list[Annotated[Text, Field(max_length=100)]] = []  # seal_key_packages.package_id


class VaultEntry(WireModel):
    """``customer:<id>`` in MA_VAULT."""

    customer_id: CustomerId
    api_keys: list[KeyHash] = []
    services: dict[ServiceName, ServiceEntry] = {}
    seal_keys: list[SealKeyEntry] = []
    status: VaultStatus = VaultStatus.ACTIVE
