"""Frames of one syslog TCP connection (RFC 6587 §3.4), from the bytes as they arrive.

No I/O here: ``feed`` bytes (``feed_eof`` at the end), then take the complete ``frames()``.
The framing is decided **per frame**, by RFC 6587's grammar, not by the first character alone:

- octet counting (§3.4.1): ``SYSLOG-FRAME = MSG-LEN SP SYSLOG-MSG``, ``MSG-LEN = NONZERO-DIGIT
  *DIGIT``, and a SYSLOG-MSG starts with its PRI, ``<`` (RFC 5424 §6). A frame is read as
  octet-counted only when it starts with a non-zero digit, at most ``MAX_LEN_DIGITS`` digits,
  one space and ``<``;
- anything else is non-transparent framing (§3.4.2): the message ends at LF (a CR before it is
  dropped). So a raw httplog line (``10.0.0.1:5555 [...``: digits, then ``.``) is a line, and
  one odd frame cannot make the rest of the connection unreadable.

One LF right after an octet-counted frame is taken as its trailer (some senders add one).
A message longer than ``max_len`` is returned cut to its first ``keep`` bytes with
``too_long`` set and its whole size; the rest is skipped as it arrives (an octet-counted one by
its count, a line up to its LF), so the connection goes on and memory stays within about
``max_len`` plus one fed chunk. A partial last message at the end of the stream is returned
as it is (the parser rejects it if it is cut).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

MAX_LEN_DIGITS = 9  # MSG-LEN below 10^9; a longer run of digits is not a frame header
_LF, _CR, _SP, _LT = 0x0A, 0x0D, 0x20, 0x3C
_NEED_MORE = -1
_LINE = 0


@dataclass(slots=True)
class Frame:
    data: bytes
    size: int  # bytes of the whole message (more than len(data) when too long)
    too_long: bool = False
    octet_counted: bool = False


class FrameReader:
    def __init__(self, max_len: int, keep: int) -> None:
        self.max_len = max_len
        self.keep = min(keep, max_len)
        self._buf = bytearray()
        self._eof = False
        self._scanned = 0  # bytes after the frame start already searched for LF
        self._skip_octets = 0  # of an over-long octet-counted frame, still to discard
        self._long: Frame | None = None  # an over-long line, skipped up to its LF
        self._after_octets = False

    def feed(self, data: bytes) -> None:
        self._buf += data

    def feed_eof(self) -> None:
        self._eof = True

    def buffered(self) -> int:
        return len(self._buf)

    def frames(self) -> Iterator[Frame]:
        buf, pos = self._buf, 0
        try:
            while True:
                if self._skip_octets:
                    n = min(self._skip_octets, len(buf) - pos)
                    pos += n
                    self._skip_octets -= n
                    if self._skip_octets:
                        return
                if self._long is not None:
                    end = buf.find(b"\n", pos)
                    if end < 0:
                        self._long.size += len(buf) - pos
                        pos = len(buf)
                        if self._eof:
                            yield self._long
                            self._long = None
                        return
                    self._long.size += end - pos
                    pos = end + 1
                    yield self._long
                    self._long = None
                    continue
                if pos >= len(buf):
                    return
                if self._after_octets:
                    self._after_octets = False
                    if buf[pos] == _LF:
                        pos += 1
                        continue
                header = _octet_header(buf, pos, self._eof)
                if header == _NEED_MORE:
                    return
                if header:
                    frame, pos = self._octet_counted(buf, pos, header)
                    if frame is None:
                        return
                    yield frame
                    continue
                frame, pos = self._line(buf, pos)
                if frame is not None:
                    yield frame
                elif self._long is None:
                    return
        finally:
            if pos:
                del buf[:pos]

    def _octet_counted(self, buf: bytearray, pos: int, header: int) -> tuple[Frame | None, int]:
        length = int(buf[pos:pos + header - 1])
        start = pos + header
        available = len(buf) - start
        if length <= self.max_len:
            if available >= length:
                self._after_octets = True
                return Frame(bytes(buf[start:start + length]), length, octet_counted=True), start + length
            if self._eof:  # cut short by the end of the stream: what came
                return Frame(bytes(buf[start:]), available, octet_counted=True), len(buf)
            return None, pos
        if available < self.keep and not self._eof:
            return None, pos
        kept = bytes(buf[start:start + self.keep])
        self._skip_octets = length - len(kept)
        self._after_octets = True
        return Frame(kept, length, too_long=True, octet_counted=True), start + len(kept)

    def _line(self, buf: bytearray, pos: int) -> tuple[Frame | None, int]:
        end = buf.find(b"\n", pos + self._scanned)
        if end >= 0:
            self._scanned = 0
            stop = end - 1 if end > pos and buf[end - 1] == _CR else end
            if stop - pos > self.max_len:
                return Frame(bytes(buf[pos:pos + self.keep]), end - pos, too_long=True), end + 1
            return Frame(bytes(buf[pos:stop]), stop - pos), end + 1
        pending = len(buf) - pos
        if pending > self.max_len + 1:  # longer than any line can be, even with its CR
            self._scanned = 0
            self._long = Frame(bytes(buf[pos:pos + self.keep]), 0, too_long=True)
            return None, pos  # frames() goes on skipping it
        if self._eof:
            self._scanned = 0
            stop = len(buf) - 1 if buf[-1] == _CR else len(buf)
            return Frame(bytes(buf[pos:stop]), stop - pos), len(buf)
        self._scanned = pending
        return None, pos


def _octet_header(buf: bytearray, pos: int, eof: bool) -> int:
    """The length of an octet-counting header (MSG-LEN SP) at ``pos`` followed by ``<``;
    _LINE (0) when the frame is not octet-counted; _NEED_MORE when more bytes must come."""
    if not 0x31 <= buf[pos] <= 0x39:
        return _LINE
    i, end = pos + 1, min(len(buf), pos + MAX_LEN_DIGITS)
    while i < end and 0x30 <= buf[i] <= 0x39:
        i += 1
    if i >= len(buf):  # digits up to what has come so far
        return _LINE if eof else _NEED_MORE
    if buf[i] != _SP:  # includes a digit beyond MAX_LEN_DIGITS
        return _LINE
    if i + 1 >= len(buf):
        return _LINE if eof else _NEED_MORE
    return i + 1 - pos if buf[i + 1] == _LT else _LINE
