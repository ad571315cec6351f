"""Constrained scalar types the wire models and the SQL schema agree on."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, StrictInt

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


def _nonzero(value: int) -> int:
    if value == 0:
        raise ValueError("an API-key fingerprint is never 0")
    return value


# customers.customer_id: random 32-bit, > 0 (SPEC §1 decision 3)
CustomerId = Annotated[int, Field(gt=0, le=INT32_MAX)]
# customer 0 is the `unauthenticated` bucket of usage and resolved records
CustomerRef = Annotated[int, Field(ge=0, le=INT32_MAX)]
# api_keys.api_key_fp: first 4 bytes of the key's HMAC as a signed big-endian int32, never 0
Fingerprint = Annotated[int, Field(ge=INT32_MIN, le=INT32_MAX), AfterValidator(_nonzero)]
# api_keys.api_key_hash: lower-case hex HMAC-SHA256
KeyHash = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
# Money is integer micro-dollars on the wire; never a float (SPEC §3)
Micros = Annotated[StrictInt, Field(ge=0)]
Count = Annotated[StrictInt, Field(ge=0)]
# Epoch milliseconds (event time)
EpochMs = Annotated[int, Field(ge=0)]
# HAProxy timers: milliseconds, -1 when the stage was not reached
Timer = Annotated[int, Field(ge=-1)]
