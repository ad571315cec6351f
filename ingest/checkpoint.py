"""The tailer's durable checkpoint: for each file identity, the offset up to which every line
has been acknowledged by Kafka.

Written atomically (meterstream/atomic_file.py: a temporary file created with O_EXCL |
O_NOFOLLOW, fsync, rename, fsync of the directory), mode 0600, with a SHA-256 of the
content inside, and the previous generation kept beside it. A file that is empty, truncated,
NUL-filled or otherwise corrupt (power loss) fails its checksum: the previous generation is
used, else nothing. Either way the tailer can only go back, never skip: going back repeats
lines, which carry the same request ids, and downstream drops the repeats.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from meterstream import logs
from meterstream.atomic_file import write_atomically
from meterstream.ingest.files import path_text

log = logs.get(__name__)
FORMAT = 1
CHECKPOINT_MODE = 0o600


@dataclass
class StreamCheckpoint:
    offset: int
    path: str
    updated_ms: int
    complete: bool = False  # a compressed file read to its end (not decompressed again)


@dataclass
class Checkpoint:
    streams: dict[str, StreamCheckpoint] = field(default_factory=dict)
    written_at: float | None = None  # monotonic time of the last write, for checkpoint age

    def offset(self, stream: str) -> int | None:
        entry = self.streams.get(stream)
        return None if entry is None else entry.offset

    def advance(self, stream: str, offset: int, path: str, complete: bool = False) -> None:
        entry = self.streams.get(stream)
        if entry is not None and offset < entry.offset:
            raise ValueError(f"checkpoint of {stream} would go back from {entry.offset} to {offset}")
        self.streams[stream] = StreamCheckpoint(offset, path, int(time.time() * 1000), complete)

    def forget_older_than(self, keep: set[str], max_age_ms: int) -> None:
        """Drop entries of files no longer followed, once they are old."""
        now = int(time.time() * 1000)
        for stream in [s for s, e in self.streams.items() if s not in keep and now - e.updated_ms > max_age_ms]:
            del self.streams[stream]


class CheckpointStore:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.previous = self.path.with_name(self.path.name + ".prev")

    def load(self) -> Checkpoint:
        for candidate in (self.path, self.previous):
            checkpoint = self._read(candidate)
            if checkpoint is not None:
                if candidate is self.previous:
                    log.warning("checkpoint corrupt or missing, using the previous generation",
                                path=str(self.path))
                return checkpoint
        if self.path.exists() or self.previous.exists():
            log.warning("no valid checkpoint: every file is read from its start (repeats are "
                        "deduplicated downstream by request_id)", path=str(self.path))
        return Checkpoint()

    def _read(self, path: Path) -> Checkpoint | None:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            doc = orjson.loads(raw)
            body = doc["body"]
            if doc["format"] != FORMAT or doc["sha256"] != _digest(body):
                raise ValueError("checksum mismatch")
            streams = {
                stream: StreamCheckpoint(int(e["offset"]), str(e["path"]), int(e["updated_ms"]),
                                         bool(e.get("complete", False)))
                for stream, e in orjson.loads(body).items()
            }
        except (ValueError, KeyError, TypeError) as exc:
            log.error("checkpoint file is corrupt", path=str(path), error=str(exc)[:200], size=len(raw))
            return None
        return Checkpoint(streams)

    def save(self, checkpoint: Checkpoint) -> None:
        body = orjson.dumps(
            {s: {"offset": e.offset, "path": path_text(e.path), "updated_ms": e.updated_ms,
                 **({"complete": True} if e.complete else {})}
             for s, e in checkpoint.streams.items()},
            option=orjson.OPT_SORT_KEYS,
        ).decode()
        payload = orjson.dumps({"format": FORMAT, "sha256": _digest(body), "body": body})
        self.path.parent.mkdir(parents=True, exist_ok=True)

        def keep_previous() -> None:
            if self.path.exists() and self._read(self.path) is not None:
                os.replace(self.path, self.previous)

        # a temporary file created with O_EXCL | O_NOFOLLOW, flushed, renamed; the directory flushed
        write_atomically(self.path, payload, CHECKPOINT_MODE, before_replace=keep_previous)
        checkpoint.written_at = time.monotonic()


def _digest(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()
