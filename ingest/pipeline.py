"""From raw lines to Kafka messages: parse, or build the dead letter. Shared by the tailer and
the syslog receiver."""

from __future__ import annotations

from typing import cast

from meterstream.ingest import metrics
from meterstream.ingest.parser import Parser, Rejected
from meterstream.producer import Message, Refused
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
        self.rejected_count = 0  # dead letters made so far (a round's records: its lines less these)
        self._fast = None if self.parser.fast is None else self.parser.fast.encoded

    def line(self, data: bytes, position: SourcePosition, source: str, too_long: int = 0) -> Message:
        return self.line_at(data, position.stream, position.offset, source, too_long)

    def line_at(self, data: bytes, stream: str, offset: int, source: str, too_long: int = 0,
                fast_tried: bool = False) -> Message:
        """The message of the line at ``offset`` in ``stream`` (the fast path builds no
        SourcePosition object: the record's position is validated inside its JSON).
        ``fast_tried``: the fast path has deferred this line already."""
        if too_long:
            return self.rejected(data, SourcePosition(stream=stream, offset=offset), source, "line_too_long",
                                 f"{too_long} bytes, more than the configured maximum", too_long)
        if self._fast is not None and not fast_tried:  # a bare JSON line, the common case
            done = self._fast(data, stream, offset)
            if done is not None:
                return Message(self.logs_topic, *done)
            fast_tried = True
        result = self.parser.encoded_at(data, stream, offset, fast_tried)
        if isinstance(result, Rejected):
            return self.rejected(data, SourcePosition(stream=stream, offset=offset), source, result.reason,
                                 result.detail)
        return Message(self.logs_topic, result.key, result.value, result.ts)

    def lines(self, lines: list[bytes], stream: str, offset: int, source: str) -> list[Message]:
        """``line_at`` of consecutive lines (each followed by its newline) from ``offset`` on."""
        topic = self.logs_topic
        if self.parser.fast is None:
            out: list[Message | None] = [None] * len(lines)
        else:
            out = [None if fast is None else Message(topic, *fast)
                   for fast in self.parser.fast.encoded_lines(lines, stream, offset)]
        if None in out:  # what the fast path deferred, at its offset (the common case has none)
            for i, data in enumerate(lines):
                if out[i] is None:
                    out[i] = self.line_at(data, stream, offset, source, fast_tried=self.parser.fast is not None)
                offset += len(data) + 1
        return cast(list[Message], out)

    def unpublishable(self, refused: Refused) -> Message:
        """The dead letter of a message Kafka refused for good (too large for the topic...)."""
        m = refused.message
        return self.rejected(m.value or b"", None, f"ingest:{m.topic}", "unpublishable",
                             f"Kafka refused it: {refused.error}")

    def rejected(self, data: bytes, position: SourcePosition | None, source: str, reason: str,
                 detail: str, total: int | None = None) -> Message:
        metrics.REJECTED.labels(reason).inc()
        self.rejected_count += 1
        dead = RejectedLine.of(data, source=source, position=position, reason=reason, detail=detail,
                               keep=self.keep, total_bytes=total)
        return Message(self.rejected_topic, topics.key_of(dead), encode(dead), dead.at)
