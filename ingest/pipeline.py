"""From raw lines to Kafka messages: parse, or build the dead letter. Shared by the tailer and
the syslog receiver."""

from __future__ import annotations

from meterstream.ingest import metrics
from meterstream.ingest.parser import Parser, Rejected
from meterstream.producer import Message
from meterstream.schemas import topics
from meterstream.schemas.records import RejectedLine, SourcePosition
from meterstream.schemas.wire import encode
from meterstream.settings import Settings


class Encoder:
    def __init__(self, settings: Settings) -> None:
        self.logs_topic = settings.topic(topics.HAPROXY_LOGS)
        self.rejected_topic = settings.topic(topics.HAPROXY_LOGS_REJECTED)
        self.keep = settings.produce.dead_letter_raw_bytes
        self.parser = Parser.from_settings(settings)

    def line(self, data: bytes, position: SourcePosition, source: str, too_long: int = 0) -> Message:
        if too_long:
            return self.rejected(data, position, source, "line_too_long",
                                 f"{too_long} bytes, more than the configured maximum", too_long)
        result = self.parser.encoded(data, position)
        if isinstance(result, Rejected):
            return self.rejected(data, position, source, result.reason, result.detail)
        return Message(self.logs_topic, result.key, result.value, result.record.ts)

    def rejected(self, data: bytes, position: SourcePosition | None, source: str, reason: str,
                 detail: str, total: int | None = None) -> Message:
        metrics.REJECTED.labels(reason).inc()
        dead = RejectedLine.of(data, source=source, position=position, reason=reason, detail=detail,
                               keep=self.keep, total_bytes=total)
        return Message(self.rejected_topic, topics.key_of(dead), encode(dead), dead.at)
