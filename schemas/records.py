"""Log records on ``haproxy.logs`` and dead letters on ``haproxy.logs.rejected`` (docs/ingest.md,
docs/wire.md), and the billing rule, defined here once."""

from __future__ import annotations

import base64
import time
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from meterstream.schemas.enums import (
    VALID_EVENT_TYPES,
    FeType,
    Network,
    ServiceType,
    TrafficType,
)
from meterstream.schemas.types import (
    INT32_MAX,
    JSON_SAFE_MAX,
    CustomerId,
    EpochMs,
    Fingerprint,
    Offset,
    Text,
    Timer,
)
from meterstream.schemas.wire import WireModel

PATH_PREFIX_LEN = 10
# The traffic types a request is charged for, with a status of 200-399
CHARGEABLE_TRAFFIC = frozenset((TrafficType.GUARANTEED, TrafficType.BURST))


def is_billable(traffic_type: int, status: int) -> bool:
    """The one definition of a billable request: traffic type guaranteed or burst,
    and HTTP status 200-399. Usage windows, spend caps and balances all count with it."""
    return traffic_type in CHARGEABLE_TRAFFIC and 200 <= status <= 399


def _event_type(code: int) -> int:
    if code not in VALID_EVENT_TYPES:
        raise ValueError(f"event_type {code} is not a known code")
    return code


class SourcePosition(BaseModel):
    """Where a record comes from in an ordered, replayable stream.

    ``stream`` identifies one ordered source (for the tailer: host, device, inode and a
    fingerprint of the file's first bytes); ``offset`` is the byte offset of the line in it.
    Positions only grow along one stream, which is what downstream deduplication relies on.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    stream: Text = Field(min_length=1, max_length=256)
    offset: Offset


class LogRecord(WireModel):
    """One HAProxy request. Field names are the JSON log line's (docs/ingest.md).

    v2 added ``customer_id`` (HAProxy's hint); v1 values, which lack it, are still read."""

    SCHEMA_VERSION: ClassVar[int] = 2
    READS_ALSO: ClassVar[frozenset[int]] = frozenset({1})
    v: int = 2
    ts: EpochMs = Field(description="request time, epoch milliseconds")
    request_id: Text = Field(min_length=1, max_length=128)
    client_ip: Text = Field(max_length=64)
    api_key_fp: Fingerprint | None = None
    service_type: ServiceType | None = None
    network: Network | None = None
    server_id: int | None = Field(default=None, ge=0, le=32767)
    fe_type: FeType | None = None
    traffic_type: TrafficType = TrafficType.NA
    event_type: Annotated[int, AfterValidator(_event_type)] = 0
    key_metadata: Text | None = Field(default=None, max_length=64)
    status: int = Field(ge=-1, le=999, description="HTTP status; -1 when none was sent")
    bytes_sent: int = Field(ge=0, le=JSON_SAFE_MAX,
                            description="bytes of the response (8 PiB at most: exact in every JSON reader)")
    path: Text = Field(default="", max_length=PATH_PREFIX_LEN)
    TR: Timer = -1
    Tw: Timer = -1
    Tc: Timer = -1
    Tr: Timer = -1
    Ta: Timer = -1
    backend_id: int | None = Field(default=None, ge=0, le=INT32_MAX)
    termination_state: Text = Field(default="", max_length=4)
    config_hex: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]*$", max_length=64)
    customer_id: CustomerId | None = Field(
        default=None, description="the customer HAProxy matched the key to (its vault map): a hint that keys "
                                  "the record to its customer's partition; the worker resolves the key itself")
    src: SourcePosition

    @property
    def is_billable(self) -> bool:
        return is_billable(self.traffic_type, self.status)


class RejectedLine(WireModel):
    """A line that did not become a LogRecord: never dropped silently (docs/ingest.md)."""

    source: Text = Field(min_length=1, max_length=1024, description="file path or syslog peer")
    position: SourcePosition | None = None
    reason: str = Field(min_length=1, pattern=r"^[a-z][a-z0-9_]*$", description="machine code")
    detail: Text = Field(default="", max_length=1000)
    raw: Text = Field(description="the line, as text or base64 (raw_encoding)")
    raw_encoding: Literal["utf-8", "base64"] = "utf-8"
    raw_bytes: int = Field(ge=0, description="length of the whole line in bytes")
    raw_truncated: bool = False
    at: EpochMs = Field(description="when ingest rejected it, epoch milliseconds")

    @classmethod
    def of(cls, raw: bytes, *, source: str, position: SourcePosition | None, reason: str, detail: str,
           keep: int, total_bytes: int | None = None) -> RejectedLine:
        """The dead letter of ``raw``: its first ``keep`` bytes as text, or base64 when they
        are not UTF-8 or hold a NUL (every stage that refuses input builds it here). Never
        raises for any input: source and detail are cut and cleaned of NULs."""
        total = len(raw) if total_bytes is None else total_bytes
        kept = raw[:keep]
        try:
            text: str | None = kept.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        encoding: Literal["utf-8", "base64"] = "utf-8"
        if text is None or "\x00" in text:
            text, encoding = base64.b64encode(kept).decode(), "base64"
        return cls(source=_clean(source, 1024) or "-", position=position, reason=reason, detail=_clean(detail, 500),
                   raw=text, raw_encoding=encoding, raw_bytes=total, raw_truncated=len(kept) < total,
                   at=time.time_ns() // 1_000_000)


def _clean(text: str, length: int) -> str:
    """Text every consumer can store: no NUL, and valid UTF-8 (a file name that is not UTF-8
    arrives from the OS with surrogate escapes, which no JSON writer accepts)."""
    cut = text[:length].replace("\x00", "\ufffd")
    if cut.isascii():
        return cut
    try:  # the OS's bytes back, shown as \xNN where they are not UTF-8
        data = cut.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that was not a byte
        data = cut.encode("utf-8", "backslashreplace")
    return data.decode("utf-8", "backslashreplace")[:length]
