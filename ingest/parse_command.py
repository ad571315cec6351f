"""`meterstream parse [FILE...]`: how operators check a log format, without Kafka.

One JSON object per input line, in input order: the LogRecord's fields, or
{"rejected": reason, "detail": ..., "raw": line}. Positions (and so derived request ids) are
those of the input named as given, not the tailer's file identities. The configuration's
`parse` section applies, as in `tail` and `syslog`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import BinaryIO

import orjson

from meterstream.ingest.parser import Parser, Rejected
from meterstream.schemas.records import SourcePosition


def lines_with_offsets(stream: BinaryIO) -> Iterator[tuple[int, bytes]]:
    offset = 0
    for line in stream:
        yield offset, line
        offset += len(line)


def render(parser: Parser, raw: bytes, source: str, offset: int) -> bytes:
    result = parser.parse(raw, SourcePosition(stream=source, offset=offset))
    if isinstance(result, Rejected):
        text = raw.rstrip(b"\r\n").decode("utf-8", errors="backslashreplace")
        return orjson.dumps({"rejected": result.reason, "detail": result.detail, "raw": text})
    return orjson.dumps(result.model_dump(mode="json", exclude={"v"}))


def run(paths: Iterable[str], out: BinaryIO, parser: Parser) -> tuple[int, int]:
    """Writes one object per line to ``out``; returns (records, rejected)."""
    counts = [0, 0]
    for path in list(paths) or ["-"]:
        handle = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
        try:
            for offset, raw in lines_with_offsets(handle):
                rendered = render(parser, raw, "stdin" if path == "-" else path, offset)
                counts[rendered.startswith(b'{"rejected"')] += 1
                out.write(rendered + b"\n")
        finally:
            if handle is not sys.stdin.buffer:
                handle.close()
    return counts[0], counts[1]
