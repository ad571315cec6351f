"""Compressed logs (gzip, zstd, bzip2, xz) read as the text they hold, for `tail` (an import of
archived rotations: docs/ingest.md "Compressed rotations").

A file is compressed when its first bytes are a format's magic number (not its name). Offsets
of lines are offsets in the decompressed content, which is the same whatever run reads it and
the same as in the file it was compressed from: a line's position, and so its derived request
id, does not change when logrotate compresses its file. Reading goes forward: the tailer only
moves on, so what lies before the last position asked for is dropped, and memory stays at one
read's worth whatever the file's size.
"""

from __future__ import annotations

import bz2
import lzma
import os
import zlib
from typing import Protocol

import zstandard

from meterstream import logs

log = logs.get(__name__)

RAW_CHUNK = 256 * 1024
FEED = 16 * 1024  # compressed bytes given to the decompressor at once: damage loses at most this
MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
)
ERRORS = (zlib.error, zstandard.ZstdError, OSError, EOFError, lzma.LZMAError, ValueError)


class Decompressor(Protocol):
    eof: bool
    unused_data: bytes

    def decompress(self, data: bytes) -> bytes: ...


def compression_of(fd: int) -> str | None:
    """The format of an open file by its magic number; None for a plain file."""
    head = os.pread(fd, 6, 0)
    return next((kind for magic, kind in MAGIC if head.startswith(magic)), None)


def _decompressor(kind: str) -> Decompressor:
    if kind == "gzip":
        return zlib.decompressobj(wbits=31)  # type: ignore[return-value]
    if kind == "zstd":
        return zstandard.ZstdDecompressor().decompressobj()  # type: ignore[return-value]
    if kind == "bzip2":
        return bz2.BZ2Decompressor()  # type: ignore[return-value]
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ)  # type: ignore[return-value]


class Decompressed:
    """The decompressed content of a compressed file, read forward by ``pread``. Several
    members (gzip) or frames (zstd, xz, bzip2 streams) one after the other are one content.
    A file still being written (logrotate compressing it) is read as far as it goes, and
    ``ended`` stays False until its last member is complete."""

    def __init__(self, fd: int, kind: str, path: str) -> None:
        self.fd, self.kind, self.path = fd, kind, path
        self.raw_pos = 0  # compressed bytes consumed
        self.buf = bytearray()
        self.buf_start = 0  # offset in the content of buf[0]
        self._d: Decompressor | None = None
        self._in_member = False
        self.ended = False  # the content is complete: the file ends with a complete member
        self.broken: str | None = None  # why the rest cannot be read (corrupt data)

    @property
    def end(self) -> int:
        """Bytes of content decompressed so far (all of it once ``ended``)."""
        return self.buf_start + len(self.buf)

    def raw_size(self) -> int:
        return os.fstat(self.fd).st_size

    def finish_at(self, offset: int) -> None:
        """The content is known to end at ``offset`` (read whole by an earlier run): nothing
        is decompressed."""
        self.buf, self.buf_start = bytearray(), offset
        self.raw_pos = self.raw_size()
        self._d, self._in_member, self.ended = None, False, True

    def _more(self) -> bool:
        """Decompresses one more chunk of the file; False when there is nothing more (yet)."""
        if self.ended or self.broken is not None:
            return False
        raw = os.pread(self.fd, RAW_CHUNK, self.raw_pos)
        if not raw:
            self.ended = not self._in_member
            return False
        try:
            for piece in range(0, len(raw), FEED):
                data = raw[piece:piece + FEED]
                while data:
                    if self._d is None or self._d.eof:
                        self._d = _decompressor(self.kind)
                    self.buf += self._d.decompress(data)
                    self._in_member = not self._d.eof
                    data = self._d.unused_data if self._d.eof else b""
                self.raw_pos += min(FEED, len(raw) - piece)
        except ERRORS as exc:
            self.broken = f"{type(exc).__name__}: {exc}"
            log.error("compressed file is corrupt: read up to the damage", path=self.path, kind=self.kind,
                      content_offset=self.end, error=self.broken[:200])
            return False
        return True

    def cut_bytes(self) -> int:
        """Bytes after the last newline of what is decompressed: of a damaged file, the line
        the damage cut, which is never read."""
        return len(self.buf) - (self.buf.rfind(b"\n") + 1)

    def first_bytes(self, size: int) -> bytes:
        while len(self.buf) < size and self.buf_start == 0 and self._more():
            pass
        return bytes(self.buf[:size]) if self.buf_start == 0 else b""

    def pread(self, size: int, offset: int) -> bytes:
        """Up to ``size`` bytes of content from ``offset``; offsets only go forward (an offset
        before the last one asked for starts the file over)."""
        if offset < self.buf_start:
            log.warning("compressed file read again from its start", path=self.path, offset=offset)
            self.raw_pos, self.buf, self.buf_start, self._d, self._in_member = 0, bytearray(), 0, None, False
            self.ended, self.broken = False, None
        while True:
            drop = min(offset - self.buf_start, len(self.buf))
            if drop > 0:
                del self.buf[:drop]
                self.buf_start += drop
            if self.end >= offset + size or not self._more():
                break
        start = offset - self.buf_start
        return bytes(self.buf[start:start + size]) if start >= 0 else b""
