"""`meterstream tail`: follows HAProxy log files into haproxy.logs, nothing lost, nothing doubled.

Each round reads up to ``round_lines`` lines from the followed files (rotated files first),
turns them into LogRecords or dead letters, and hands them to the RoundProducer. The next round
is read and parsed while the previous one is in flight, but sent only once it is acknowledged.
The checkpoint advances past a round's lines only after Kafka acknowledged all of them, so a
crash can only repeat lines, with the same request ids (docs/ingest.md).
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass, field

from meterstream import logs
from meterstream.ingest import metrics
from meterstream.ingest.checkpoint import Checkpoint, CheckpointStore
from meterstream.ingest.files import FileSet, FollowedFile, Line, Lines, path_text
from meterstream.ingest.pipeline import Encoder
from meterstream.ingest.progress import ImportProgress
from meterstream.producer import Message, RoundProducer, Stopped
from meterstream.settings import Settings

log = logs.get(__name__)
YIELD_EVERY = 500  # lines parsed between turns of the event loop (about 4 ms): the round in flight goes on
FORGET_AFTER_MS = 7 * 24 * 3600 * 1000
GAUGE_INTERVAL_S = 0.5


@dataclass
class Round:
    messages: list[Message] = field(default_factory=list)
    # stream -> (offset just past the round's last line, path)
    ends: dict[str, tuple[int, str]] = field(default_factory=dict)
    records: int = 0
    complete: set[str] = field(default_factory=set)  # compressed files' streams read to their end


class Tailer:
    def __init__(self, settings: Settings, once: bool = False, progress: ImportProgress | None = None) -> None:
        self.settings = settings
        self.once = once  # stop when every followed file is read and acknowledged
        self.progress = progress
        self._sizes: dict[str, tuple[int, int]] = {}  # stream -> (bytes read, size) for the progress
        self._lines_sent = 0
        t = settings.tail
        if not t.paths:
            raise ValueError("no files to follow: give paths (MS_TAIL__PATHS or FILES)")
        self.store = CheckpointStore(t.checkpoint_path)
        self.checkpoint: Checkpoint = self.store.load()
        self.files = FileSet(
            patterns=list(t.paths), exclude=list(t.exclude), host=t.host or socket.gethostname(),
            max_line_bytes=t.max_line_bytes, keep_raw_bytes=settings.produce.dead_letter_raw_bytes,
            rotate_grace_s=t.rotate_grace_s,
            resume={s: e.offset for s, e in self.checkpoint.streams.items()},
            complete={s for s, e in self.checkpoint.streams.items() if e.complete},
        )
        self.encoder = Encoder(settings)
        self.producer = RoundProducer(settings, "ingest", metrics.PRODUCE_LATENCY, metrics.PRODUCE_FAILURES)
        self.stop_requested = asyncio.Event()
        self._continuations: list[FollowedFile] = []
        self._unsaved_since: float | None = None  # first advance not yet written

    def health(self) -> tuple[bool, dict[str, object]]:
        failure = self.producer.failure
        return failure.healthy(), {"files": len(self.files.files), "kafka_failing_s": round(failure.seconds(), 1)}

    # -- one round ---------------------------------------------------------------------------
    async def _read_round(self) -> Round:
        self._continuations += self.files.poll()
        if not self._sizes:
            self._show_progress()  # where this run starts: the rates count what it reads
        batch = Round()
        budget_lines, budget_bytes = self.settings.tail.round_lines, self.settings.tail.round_bytes
        sources = [*self._continuations, *self.files.ordered()]
        messages = batch.messages
        read_bytes = 0
        rejected_before = self.encoder.rejected_count
        for followed in sources:
            # runs of lines, not lines: the file's end and the budgets once per run
            start = followed.offset
            for item in self.files.read_runs(followed, budget_bytes, budget_lines):
                if type(item) is Lines:
                    offset, data = item.offset, item.data
                    for i in range(0, len(data), YIELD_EVERY):
                        part = data[i:i + YIELD_EVERY]
                        messages += self.encoder.lines(part, item.stream, offset, item.path)
                        offset += sum(map(len, part)) + len(part)
                        # the round in flight goes on meanwhile: its batches, acks and next
                        # batches each need a turn of the loop
                        await asyncio.sleep(0)
                    budget_lines -= len(data)
                else:
                    assert isinstance(item, Line)
                    messages.append(self.encoder.line_at(item.data, item.stream, item.offset, item.path,
                                                         item.too_long))
                    budget_lines -= 1
                batch.ends[item.stream] = (item.end, item.path)
            budget_bytes -= followed.offset - start
            read_bytes += followed.offset - start
            if followed.content is not None and followed.content.broken is None and followed.stream in batch.ends \
                    and followed.at_end():
                batch.complete.add(followed.stream)
            if budget_lines <= 0 or budget_bytes <= 0:
                break
        for copy in [c for c in self._continuations if c.offset >= c.size()]:
            self._continuations.remove(copy)
            # read to its end as the rest of its original's stream: checkpoint its own identity
            # with this round, so that a copy also followed by name is not read twice
            assert copy.own_stream is not None
            batch.ends[copy.own_stream] = (copy.offset, copy.path)
            copy.close()
        batch.records = len(messages) - (self.encoder.rejected_count - rejected_before)
        metrics.LINES_READ.labels("file").inc(len(batch.messages))
        metrics.BYTES_READ.labels("file").inc(read_bytes)
        return batch

    async def _deliver(self, batch: Round) -> None:
        await self.producer.deliver(batch.messages, self.encoder.unpublishable)
        metrics.RECORDS_PRODUCED.inc(batch.records)
        for stream, (end, path) in batch.ends.items():
            current = self.checkpoint.offset(stream)
            complete = stream in batch.complete
            self.files.acknowledged(stream, end, complete)
            if current is None or end > current or complete:
                self.checkpoint.advance(stream, max(end, current or 0), path, complete)
                self._unsaved_since = self._unsaved_since or time.monotonic()
        self._save_checkpoint_when_due()
        self._lines_sent += len(batch.messages)
        self._show_progress()

    def _show_progress(self) -> None:
        if self.progress is None:
            return
        for followed in self.files.files.values():
            self._sizes[followed.stream] = followed.progress()
        if not self._sizes:
            return
        self.progress.update(sum(d for d, _ in self._sizes.values()), sum(t for _, t in self._sizes.values()),
                             self._lines_sent)

    def _save_checkpoint_when_due(self) -> None:
        interval = self.settings.tail.checkpoint_interval_s
        written = self.checkpoint.written_at
        if self._unsaved_since is not None and (written is None or time.monotonic() - written >= interval):
            self._save_checkpoint()

    def _save_checkpoint(self) -> None:
        self.checkpoint.forget_older_than({f.stream for f in self.files.files.values()}, FORGET_AFTER_MS)
        self.store.save(self.checkpoint)
        self._unsaved_since = None

    def _update_gauges(self) -> None:
        acknowledged = {s: e.offset for s, e in self.checkpoint.streams.items()}
        for path, behind in self.files.behind_bytes(acknowledged).items():
            metrics.BEHIND.labels(path_text(path)).set(behind)
        unsaved = self._unsaved_since
        metrics.CHECKPOINT_AGE.set(0 if unsaved is None else time.monotonic() - unsaved)

    async def _gauges_forever(self) -> None:
        """Live gauges, also while a round waits on an absent broker."""
        while True:
            self._update_gauges()
            await asyncio.sleep(GAUGE_INTERVAL_S)

    # -- the loop ----------------------------------------------------------------------------
    async def run(self) -> None:
        in_flight: asyncio.Task[None] | None = None
        gauges = asyncio.create_task(self._gauges_forever())
        try:
            while not self.stop_requested.is_set():
                batch = await self._read_round()
                if in_flight is not None:
                    await in_flight  # order: the previous round is acknowledged before this one goes
                    in_flight = None
                for closed in self.files.close_finished():
                    log.info("finished rotated file", path=closed.path, stream=closed.stream)
                    if closed.path not in {f.path for f in self.files.files.values()}:
                        metrics.BEHIND.remove(path_text(closed.path))
                if batch.messages or batch.ends:
                    in_flight = asyncio.create_task(self._deliver(batch))
                    continue
                self._save_checkpoint_when_due()  # idle: the last round's advance must not wait
                if self.once and not self._continuations:
                    break
                try:
                    await asyncio.wait_for(self.stop_requested.wait(), self.settings.tail.poll_interval_s)
                except TimeoutError:
                    pass
            if in_flight is not None:
                await asyncio.wait_for(in_flight, self.settings.produce.send_timeout_s)
        except (Stopped, TimeoutError):
            log.warning("stopping with a round not acknowledged: it will be read again at the next start")
        finally:
            gauges.cancel()
            if in_flight is not None and not in_flight.done():
                in_flight.cancel()
            await self.producer.stop()
            self._save_checkpoint()
            if self.progress is not None:
                self._show_progress()
                self.progress.close()
            self.files.close()
            log.info("tailer stopped", checkpoint=str(self.store.path))

    def request_stop(self) -> None:
        self.stop_requested.set()
        # a round waiting on an absent broker gives up after stop_timeout_s
        asyncio.get_running_loop().call_later(self.settings.produce.stop_timeout_s, self.producer.stopping.set)
