"""Payloads of the Postgres notifications (LISTEN/NOTIFY) the processes act on.

Any database login may ``NOTIFY`` any channel with any text, so a payload is an input like a
Kafka value: it is validated here, and a payload that is not one of these is counted and
ignored by its listener, never trusted.

- ``meterstream_config`` (migration 0003, on customers, service_instances, api_keys): the row
  that changed, by key. ``sync-config`` re-reads that row; the vault only rebuilds.
- ``meterstream_vault`` (migration 0005, on limit_events, seal_keys, seal_key_packages): the
  table that changed; the vault rebuilds.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from meterstream.schemas.enums import ServiceType
from meterstream.schemas.types import CustomerId, Fingerprint
from meterstream.schemas.wire import WireError

CONFIG_CHANNEL = "meterstream_config"
VAULT_CHANNEL = "meterstream_vault"
# a NOTIFY payload is at most 8000 bytes; a longer text cannot be one of ours
MAX_PAYLOAD = 8000


class _Change(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ApiKeyChanged(_Change):
    table: Literal["api_keys"]
    api_key_fp: Fingerprint


class InstanceChanged(_Change):
    table: Literal["service_instances"]
    customer_id: CustomerId
    service_type: ServiceType


class CustomerChanged(_Change):
    table: Literal["customers"]
    customer_id: CustomerId


ConfigChange = Annotated[ApiKeyChanged | InstanceChanged | CustomerChanged, Field(discriminator="table")]
VaultChange = Literal["limit_events", "seal_keys", "seal_key_packages"]

_CONFIG = TypeAdapter(ConfigChange)
_VAULT = TypeAdapter(VaultChange)


def config_change(payload: str) -> ApiKeyChanged | InstanceChanged | CustomerChanged:
    """The row a ``meterstream_config`` payload names; raises WireError otherwise."""
    if len(payload) > MAX_PAYLOAD:
        raise WireError("ConfigChange", "", f"longer than {MAX_PAYLOAD} characters")
    try:
        return _CONFIG.validate_json(payload)
    except ValidationError as exc:
        raise _error("ConfigChange", exc) from None


def vault_change(payload: str) -> str:
    """The table a ``meterstream_vault`` payload names; raises WireError otherwise."""
    try:
        return _VAULT.validate_python(payload)
    except ValidationError as exc:
        raise _error("VaultChange", exc) from None


def _error(model: str, exc: ValidationError) -> WireError:
    first = exc.errors(include_url=False, include_input=False)[0]
    return WireError(model, ".".join(str(part) for part in first["loc"]), first["msg"])
