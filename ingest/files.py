"""Following log files by name while they rotate (the tailer's file side; no Kafka here).

A file's identity is its device and inode plus a hash of its first line (so a reused inode is
a new file). Rotation by rename: the renamed file is drained to its end (and a grace period
for late writes) before it is closed, and its successor is read after it. Rotation by
copytruncate: the original's first line changes; the lines not yet read are recovered from
the copy (a file beside it with the same first line), then the truncated file is read anew.
A compressed file (gzip, zstd, bzip2, xz: ingest/compressed.py) is read as its content; it is
the same stream as the file it was compressed from (the same first line), so its lines keep
their positions and what was read of that file is not read again.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from meterstream import logs
from meterstream.ingest.compressed import Decompressed, compression_of

log = logs.get(__name__)

HEAD_BYTES = 1024
READ_CHUNK = 1024 * 1024


def head_hash(fd: int) -> str | None:
    """Hash of the first line (or first HEAD_BYTES); None while the first line is incomplete."""
    return hash_of_head(os.pread(fd, HEAD_BYTES, 0), complete=False)


def hash_of_head(head: bytes, complete: bool) -> str | None:
    """``head_hash`` of a content's first HEAD_BYTES; ``complete``: the content ends there (a
    finished compressed file), so a first line without newline is its whole first line."""
    newline = head.find(b"\n")
    if newline >= 0:
        head = head[: newline + 1]
    elif len(head) < HEAD_BYTES and not (complete and head):
        return None
    return hashlib.blake2b(head, digest_size=8).hexdigest()


def path_text(path: str) -> str:
    """A path as UTF-8 text for checkpoints, metric labels and dead letters: a name that is not
    UTF-8 reaches Python with surrogate escapes, which no JSON or Prometheus writer accepts;
    its bytes show as \\xNN."""
    if path.isascii():
        return path
    try:
        return os.fsencode(path).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return path.encode("utf-8", "backslashreplace").decode()


@dataclass(slots=True)
class Line:
    stream: str  # identity of the file the line belongs to
    path: str
    offset: int  # of the line's first byte
    end: int  # offset just past its newline
    data: bytes  # without the newline; the first bytes only when too_long
    too_long: int = 0  # the whole line's length when it exceeded the maximum


@dataclass(slots=True)
class Lines:
    """Consecutive complete lines of one file, each within the maximum, without their newlines."""

    stream: str
    path: str
    offset: int  # of the first line's first byte
    end: int  # just past the last line's newline
    data: list[bytes]


@dataclass
class FollowedFile:
    path: str
    fd: int
    dev: int
    ino: int
    head: str
    stream: str
    offset: int
    rotated_at: float | None = None
    # inside a line longer than the maximum: (start offset, first bytes kept)
    overlong: tuple[int, bytes] | None = None
    # a copytruncate copy is read as the rest of its original's stream; this is its own identity
    own_stream: str | None = None
    # a compressed file: its content, read forward (offsets are offsets in the content)
    content: Decompressed | None = None

    def size(self) -> int:
        """Bytes there are to read (of a compressed file: decompressed so far)."""
        return os.fstat(self.fd).st_size if self.content is None else self.content.end

    def pread(self, size: int, offset: int) -> bytes:
        return os.pread(self.fd, size, offset) if self.content is None else self.content.pread(size, offset)

    def ended(self) -> bool:
        """A compressed file whose content is complete: it cannot grow."""
        return self.content is not None and self.content.ended

    def at_end(self) -> bool:
        """Read to its end (a compressed file: to the end of its content, or of what could be
        decompressed before damage; the cut line there is not a line)."""
        if self.content is None:
            return self.offset >= self.size()
        done = self.content.ended or self.content.broken is not None
        return done and self.offset >= self.content.end - (0 if self.content.ended else self.content.cut_bytes())

    def progress(self) -> tuple[int, int]:
        """(bytes of the file read, its size), of a compressed file in compressed bytes."""
        if self.content is None:
            return min(self.offset, self.size()), self.size()
        raw = self.content.raw_size()
        return (raw if self.at_end() else min(self.content.raw_pos, raw)), raw

    def close(self) -> None:
        os.close(self.fd)


@dataclass
class FileSet:
    patterns: list[str]
    exclude: list[str]
    host: str
    max_line_bytes: int
    keep_raw_bytes: int
    rotate_grace_s: float
    # stream identity -> offset to resume from (the checkpoint; then what Kafka acknowledged)
    resume: dict[str, int] = field(default_factory=dict)
    # streams of compressed files read to their end: not decompressed again
    complete: set[str] = field(default_factory=set)
    files: dict[tuple[int, int, str], FollowedFile] = field(default_factory=dict)
    # compressed files left for later (the file they were compressed from is still being
    # read): (dev, ino) -> (size, mtime) when looked at, so that they are not decompressed
    # at every poll
    deferred: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)

    def acknowledged(self, stream: str, offset: int, complete: bool = False) -> None:
        """Kafka acknowledged ``stream`` up to ``offset`` (``complete``: a compressed file's
        whole content): where a file of that stream resumes if it is opened again."""
        self.resume[stream] = max(offset, self.resume.get(stream, 0))
        if complete:
            self.complete.add(stream)

    def identity(self, dev: int, ino: int, head: str) -> str:
        return f"{self.host}:{dev}:{ino}:{head}"

    # -- discovery and rotation --------------------------------------------------------------
    def _excluded(self, name: str) -> bool:
        return any(fnmatch.fnmatch(name, pattern) for pattern in self.exclude)

    def _matching_paths(self) -> list[str]:
        paths: set[str] = set()
        for pattern in self.patterns:
            for path in glob.glob(pattern) if glob.has_magic(pattern) else [pattern]:
                name = os.path.basename(path)
                if not self._excluded(name) and os.path.isfile(path):
                    paths.add(os.path.abspath(path))
        return sorted(paths)

    def poll(self) -> list[FollowedFile]:
        """Notice new, rotated and truncated files. Returns the copies found for truncated
        files, each positioned where its original was left."""
        now = time.monotonic()
        seen: set[tuple[int, int, str]] = set()
        continuations: list[FollowedFile] = []
        for followed in list(self.files.values()):
            if followed.rotated_at is None and self._replaced_content(followed):
                continuations += self._truncated(followed)
        by_inode = {(f.dev, f.ino): f for f in self.files.values() if os.fstat(f.fd).st_nlink > 0}
        for path in self._matching_paths():
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            known = by_inode.get((st.st_dev, st.st_ino))
            if known is not None:
                known.path = path
                seen.add((known.dev, known.ino, known.head))
                continue
            opened = self._open(path)
            if opened is not None:
                seen.add((opened.dev, opened.ino, opened.head))
        for key, followed in list(self.files.items()):
            if key not in seen and followed.rotated_at is None:
                followed.rotated_at = now  # renamed away or deleted: drain it, then close
        return continuations

    def _open(self, path: str) -> FollowedFile | None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        st = os.fstat(fd)
        kind = compression_of(fd)
        if kind is not None:
            return self._open_compressed(path, fd, st, kind)
        head = head_hash(fd)
        if head is None:  # no complete first line yet: look again next poll
            os.close(fd)
            return None
        key = (st.st_dev, st.st_ino, head)
        if (known := self._already_followed(key, fd)) is not None:
            return known
        stream = self.identity(*key)
        followed = FollowedFile(path, fd, st.st_dev, st.st_ino, head, stream,
                                offset=min(self.resume.get(stream, 0), st.st_size))
        self.files[key] = followed
        return followed

    def _already_followed(self, key: tuple[int, int, str], fd: int) -> FollowedFile | None:
        """The file followed under this identity, if any (the new descriptor to it is closed)."""
        known = self.files.get(key)
        if known is not None:
            os.close(fd)
        return known

    def _open_compressed(self, path: str, fd: int, st: os.stat_result, kind: str) -> FollowedFile | None:
        """A compressed file, as the stream of the file it was compressed from when that one is
        known (same host and first line: the checkpoint, or what this run read), else as the
        stream of its content; read from where that stream was acknowledged."""
        looked = (st.st_size, st.st_mtime_ns)
        if self.deferred.get((st.st_dev, st.st_ino)) == looked:
            os.close(fd)
            return None
        content = Decompressed(fd, kind, path)
        first = content.first_bytes(HEAD_BYTES)
        head = hash_of_head(first, complete=content.ended)
        if head is None or (content.ended and not first):  # no first line yet, or nothing in it
            self.deferred[(st.st_dev, st.st_ino)] = looked
            os.close(fd)
            return None
        key = (st.st_dev, st.st_ino, head)
        if (known := self._already_followed(key, fd)) is not None:
            return known
        same = f":{head}"
        if any(f.head == head for f in self.files.values()):
            # its original (or another copy) is being read: this one waits until it is gone
            self.deferred[(st.st_dev, st.st_ino)] = looked
            os.close(fd)
            return None
        self.deferred.pop((st.st_dev, st.st_ino), None)
        streams = [s for s in self.resume if s.endswith(same) and s.startswith(f"{self.host}:")]
        # else a stream named by its content alone (a compressed file does not change): a copy
        # of the archive, or another run without this checkpoint, gives its lines the same positions
        stream = max(streams, key=lambda s: self.resume[s]) if streams else f"{self.host}:z:{head}"
        offset = self.resume.get(stream, 0)
        if stream in self.complete:
            content.finish_at(offset)
        followed = FollowedFile(path, fd, st.st_dev, st.st_ino, head, stream, offset=offset, content=content)
        self.files[key] = followed
        log.info("reading a compressed file", path=path_text(path), format=kind, stream=stream, offset=offset,
                 already_read=stream in self.complete)
        return followed

    def _replaced_content(self, followed: FollowedFile) -> bool:
        """Truncated (shorter than what was read) or rewritten (another first line)."""
        if followed.content is not None:
            return False  # compressed: written once, never rewritten in place
        if followed.size() < followed.offset:
            return True
        return head_hash(followed.fd) not in (followed.head, None)

    def _truncated(self, followed: FollowedFile) -> list[FollowedFile]:
        """copytruncate: find the copy to finish the old content from; restart the file."""
        found = []
        directory, base = os.path.split(followed.path)
        for name in sorted(os.listdir(directory or ".")):
            candidate = os.path.join(directory, name)
            if candidate == followed.path or not name.startswith(base):
                continue
            if self._excluded(name):
                continue
            try:
                fd = os.open(candidate, os.O_RDONLY)
            except OSError:
                continue
            st = os.fstat(fd)
            if head_hash(fd) == followed.head and st.st_size >= followed.offset:
                own = self.identity(st.st_dev, st.st_ino, followed.head)
                copy = FollowedFile(candidate, fd, followed.dev, followed.ino, followed.head,
                                    followed.stream, followed.offset, rotated_at=0.0, own_stream=own)
                # if the copy is followed by name too, it is read already
                self.resume[own] = st.st_size
                found.append(copy)
                log.info("copytruncate: reading the rest of the file from its copy",
                         path=followed.path, copy=candidate, offset=followed.offset)
                break
            os.close(fd)
        del self.files[(followed.dev, followed.ino, followed.head)]
        followed.close()
        return found

    # -- reading -----------------------------------------------------------------------------
    def ordered(self) -> list[FollowedFile]:
        """Rotated files first (finish the old file before the new one), then by path."""
        return sorted(self.files.values(), key=lambda f: (f.rotated_at is None, f.rotated_at or 0, f.path))

    def read(self, followed: FollowedFile, budget: int) -> Iterator[Line]:
        """Complete lines from the file's offset, up to about ``budget`` bytes; advances it
        line by line (a consumer that stops after a line resumes after it)."""
        for item in self.read_runs(followed, budget, sys.maxsize):
            if type(item) is Line:
                yield item
                continue
            assert isinstance(item, Lines)
            start = item.offset
            for data in item.data:
                end = start + len(data) + 1
                followed.offset = end
                yield Line(item.stream, item.path, start, end, data)
                start = end

    def read_runs(self, followed: FollowedFile, budget: int, max_lines: int) -> Iterator[Line | Lines]:
        """``read`` by runs: consecutive ordinary lines come as one Lines (the tailer's way:
        nothing per line here), a line longer than the maximum or the unended last line of a
        rotated file as a Line. At most ``max_lines`` lines and about ``budget`` bytes (the line
        that reaches it included); the offset is advanced past each item before it is given."""
        while budget > 0 and max_lines > 0:
            chunk = followed.pread(max(READ_CHUNK, self.max_line_bytes + 1), followed.offset)
            if not chunk:
                return
            if followed.overlong is not None:
                newline = chunk.find(b"\n")
                if newline < 0:
                    followed.offset += len(chunk)
                    budget -= len(chunk)
                    continue
                start, kept = followed.overlong
                end = followed.offset + newline + 1
                followed.overlong = None
                followed.offset = end
                budget -= newline + 1
                max_lines -= 1
                yield Line(followed.stream, followed.path, start, end, kept, too_long=end - start - 1)
                continue
            last = chunk.rfind(b"\n")
            if last < 0:
                if len(chunk) > self.max_line_bytes:
                    followed.overlong = (followed.offset, chunk[: self.keep_raw_bytes])
                    followed.offset += len(chunk)
                    budget -= len(chunk)
                    continue
                if followed.ended() or (followed.rotated_at is not None and self._grace_over(followed)):
                    # the writer is gone: a last line without newline is still a line
                    end = followed.offset + len(chunk)
                    yield Line(followed.stream, followed.path, followed.offset, end, chunk)
                    followed.offset = end
                return  # a partial last line: wait for the rest
            parts = chunk[: last + 1].split(b"\n")
            parts.pop()
            if len(parts) > max_lines:
                del parts[max_lines:]
            size = sum(map(len, parts)) + len(parts)
            if size > budget:  # up to the line that reaches the budget
                size, count = 0, 0
                for data in parts:
                    size += len(data) + 1
                    count += 1
                    if size >= budget:
                        break
                del parts[count:]
            budget -= size
            max_lines -= len(parts)
            stream, path, start = followed.stream, followed.path, followed.offset
            if max(map(len, parts)) <= self.max_line_bytes:
                followed.offset = start + size
                yield Lines(stream, path, start, start + size, parts)
                continue
            run: list[bytes] = []
            run_start = start
            for data in parts:
                end = start + len(data) + 1
                if len(data) > self.max_line_bytes:
                    if run:
                        followed.offset = start
                        yield Lines(stream, path, run_start, start, run)
                        run = []
                    followed.offset = end
                    yield Line(stream, path, start, end, data[: self.keep_raw_bytes], too_long=len(data))
                    run_start = end
                else:
                    run.append(data)
                start = end
            if run:
                followed.offset = start
                yield Lines(stream, path, run_start, start, run)

    def _grace_over(self, followed: FollowedFile) -> bool:
        return followed.rotated_at is not None and time.monotonic() - followed.rotated_at >= self.rotate_grace_s

    def close_finished(self) -> list[FollowedFile]:
        """Close rotated files read to their end once the grace period is over."""
        closed = []
        for key, followed in list(self.files.items()):
            if followed.rotated_at is not None and self._grace_over(followed) \
                    and followed.at_end() and followed.overlong is None:
                followed.close()
                del self.files[key]
                closed.append(followed)
        if closed:
            self.deferred.clear()  # a compressed copy of a closed file may be read now
        return closed

    def behind_bytes(self, acknowledged: dict[str, int]) -> dict[str, int]:
        """Bytes of each file not yet acknowledged by Kafka (``acknowledged``: stream -> offset)."""
        return {f.path: (max(0, f.size() - acknowledged.get(f.stream, 0)) if f.content is None
                         else f.progress()[1] - f.progress()[0]) for f in self.files.values()}

    def close(self) -> None:
        for followed in self.files.values():
            followed.close()
        self.files.clear()
