"""``meter.resolved``: log records a worker forwards to the partition of their customer, packed
many to a message (docs/wire.md, docs/metering.md "One pass").

A worker meters the records of a ``haproxy.logs`` partition whose customer belongs to that
partition itself; a record that resolves to a customer of another partition (HAProxy named no
customer, or another one than the configuration says) is forwarded here, to the customer's
partition, with its resolution and its upstream offset. One message carries the records of one
processed batch for one destination partition, up to a size bound; a message with no records
carries only the source partition's progress in event time, so that time moves on at the
destination when few records are forwarded.

The value is built by ``pack`` and read by ``unpack``: nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from meterstream.schemas.enums import UnauthReason
from meterstream.schemas.records import LogRecord
from meterstream.schemas.types import INT32_MAX, CustomerRef, EpochMs, Offset
from meterstream.schemas.wire import WireModel, decode, encode


class Forwarded(BaseModel):
    """One record, resolved: its customer (0 when unauthenticated, with the reason) and its
    offset in the ``haproxy.logs`` partition it was read from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    customer_id: CustomerRef
    unauth: UnauthReason | None = None
    offset: Offset
    record: LogRecord

    @model_validator(mode="after")
    def _customer_or_reason(self) -> Forwarded:
        if (self.customer_id == 0) != (self.unauth is not None):
            raise ValueError("customer_id is 0 exactly when unauth names the reason")
        return self


class ResolvedBatch(WireModel):
    """Records of one ``haproxy.logs`` partition for one ``meter.resolved`` partition.

    v2: v1 was one resolved record per message (the two-agent worker); v1 is not read."""

    SCHEMA_VERSION: ClassVar[int] = 2
    v: int = 2
    partition: int = Field(ge=0, le=INT32_MAX, description="the haproxy.logs partition the records come from")
    progress: EpochMs | None = Field(
        default=None, description="the highest event time the source partition had reached when this was sent")
    idle: bool = Field(default=False, description="the source partition had nothing more to read when this was sent")
    records: list[Forwarded] = Field(default_factory=list)


# the fixed part of a message around its records (with room for the numbers)
_ENVELOPE = len(b'{"v":2,"partition":2147483647,"progress":4102444799999,"idle":false,"records":[]}')


def _frame(partition: int, progress: int | None, idle: bool, items: list[bytes]) -> bytes:
    head = b'{"v":2,"partition":%d,"progress":%s,"idle":%s,"records":[' % (
        partition, b"null" if progress is None else b"%d" % progress, b"true" if idle else b"false")
    return head + b",".join(items) + b"]}"


def pack(partition: int, progress: int | None, records: Iterable[tuple[int, UnauthReason | None, int, LogRecord]],
         max_bytes: int, idle: bool = False) -> list[bytes]:
    """The messages that carry ``records`` (customer, reason, upstream offset, record), in
    order, each at most ``max_bytes``; a single message with no records when there are none.
    ``idle`` (the source had nothing more to read) is said by the last message only."""
    out: list[bytes] = []
    items: list[bytes] = []
    size = _ENVELOPE
    for customer, unauth, offset, record in records:
        item = b'{"customer_id":%d,"unauth":%s,"offset":%d,"record":%s}' % (
            customer, b"null" if unauth is None else orjson.dumps(unauth.value), offset, encode(record))
        if len(item) + 1 + _ENVELOPE > max_bytes:
            raise ValueError(f"a record of {len(item)} bytes does not fit a message of {max_bytes}")
        if items and size + len(item) + 1 > max_bytes:
            out.append(_frame(partition, progress, False, items))
            items, size = [], _ENVELOPE
        items.append(item)
        size += len(item) + 1
    if items or not out:
        out.append(_frame(partition, progress, idle, items))
    return out


def unpack(payload: bytes) -> ResolvedBatch:
    """Reads a message of ``meter.resolved``; raises WireError naming the first bad field."""
    return decode(ResolvedBatch, payload)
