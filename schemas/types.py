"""Constrained scalar types the wire models and the SQL schema agree on."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, StrictInt

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
# the largest integer every JSON reader holds exactly (a double's 53-bit mantissa)
JSON_SAFE_MAX = 2**53 - 1
# event times the pipeline accepts: 2000-01-01 .. 2100-01-01 UTC (exclusive). Every table,
# calendar and datetime conversion holds these; a value outside is an input error, not a time.
EPOCH_MS_MIN = 946_684_800_000
EPOCH_MS_MAX = 4_102_444_800_000 - 1


def _nonzero(value: int) -> int:
    if value == 0:
        raise ValueError("an API-key fingerprint is never 0")
    return value


# customers.customer_id: random 32-bit, > 0 (docs/schema.md)
CustomerId = Annotated[int, Field(gt=0, le=INT32_MAX)]
# customer 0 is the `unauthenticated` bucket of usage and resolved records
CustomerRef = Annotated[int, Field(ge=0, le=INT32_MAX)]
# api_keys.api_key_fp: first 4 bytes of the key's HMAC as a signed big-endian int32, never 0
Fingerprint = Annotated[int, Field(ge=INT32_MIN, le=INT32_MAX), AfterValidator(_nonzero)]
# api_keys.api_key_hash: lower-case hex HMAC-SHA256
KeyHash = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
# Money is integer micro-dollars on the wire; never a float (docs/metering.md)
Micros = Annotated[StrictInt, Field(ge=0, le=INT64_MAX)]
# a total of a usage window or an hour (BIGINT columns); the meter saturates at the bound
Count = Annotated[StrictInt, Field(ge=0, le=INT64_MAX)]
# Epoch milliseconds (event time), within EPOCH_MS_MIN..EPOCH_MS_MAX
EpochMs = Annotated[int, Field(ge=EPOCH_MS_MIN, le=EPOCH_MS_MAX)]
# HAProxy timers: milliseconds, -1 when the stage was not reached (INTEGER columns)
Timer = Annotated[int, Field(ge=-1, le=INT32_MAX)]
# a Kafka or file offset (BIGINT columns)
Offset = Annotated[int, Field(ge=0, le=INT64_MAX)]
# requests per second of a service instance (service_instances.config overrides, the vault's
# map, the meter's allowances): a whole number within INTEGER, so that twice it (a burst)
# still fits any 64-bit counter
RPS_MAX = INT32_MAX
Rps = Annotated[StrictInt, Field(ge=0, le=RPS_MAX)]

# text that every consumer can store: no NUL character (Postgres TEXT refuses it); a pattern,
# so pydantic-core checks it in Rust, in linear time
Text = Annotated[str, Field(pattern=r"^[^\x00]*$")]
