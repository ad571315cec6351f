"""Builds the RejectedLine of a line that did not become a LogRecord."""

from __future__ import annotations

import base64
import time

from meterstream.schemas.records import RejectedLine, SourcePosition


def rejected_line(raw: bytes, *, source: str, position: SourcePosition | None, reason: str,
                  detail: str, keep: int, total_bytes: int | None = None) -> RejectedLine:
    """The line's first ``keep`` bytes as text, or base64 when they are not UTF-8."""
    total = len(raw) if total_bytes is None else total_bytes
    kept = raw[:keep]
    try:
        text, encoding = kept.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(kept).decode(), "base64"
    return RejectedLine(
        source=source, position=position, reason=reason, detail=detail[:500], raw=text,
        raw_encoding=encoding, raw_bytes=total, raw_truncated=len(kept) < total,
        at=int(time.time() * 1000),
    )
