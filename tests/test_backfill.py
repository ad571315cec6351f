"""`meterstream tail --once` as an import of archived, rotated logs (plain, gzip, zstd, bzip2,
xz), through the real process and the real broker: everything once, a second run sends
nothing, positions and so request ids stable across runs and across compression, and its
progress (log lines, or a bar on a terminal)."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import pty
import select
import subprocess
import time
from pathlib import Path

import orjson
import pytest
import zstandard

from meterstream.dev.processes import meterstream_exe
from meterstream.kafka import end_offsets, read_to_end
from meterstream.schemas import topics
from meterstream.settings import Settings
from tests.helpers import json_line

pytestmark = [pytest.mark.services]


def httplog_line(i: int) -> str:
    """A stock httplog line: no request id in it, so its id is derived from its position."""
    return (f"192.0.2.{i % 250}:{10000 + i} [25/Nov/2026:07:08:{i % 60:02d}.{i % 1000:03d}] api~ "
            f'api_servers/<NOSRV> 0/-1/-1/-1/0 503 212 - - SC-- 1/1/0/0/0 0/0 "GET /v1/fetch_key/{i} HTTP/1.1"')


def text(lines: range, tag: str, httplog: bool = False) -> bytes:
    return "".join((httplog_line(i) if httplog else json_line(i, tag)) + "\n" for i in lines).encode()


def env_of(settings: Settings, **extra: str) -> dict[str, str]:
    return {**os.environ, "MS_KAFKA__BOOTSTRAP": settings.kafka.bootstrap,
            "MS_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix, **extra}


def import_once(settings: Settings, pattern: str, checkpoint: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([meterstream_exe(), "--log-format", "json", "tail", "--once", pattern,
                             "--checkpoint", str(checkpoint)], env=env_of(settings, **extra),
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


async def sent(settings: Settings) -> int:
    return sum((await end_offsets(settings, settings.topic(topics.HAPROXY_LOGS))).values())


async def records(settings: Settings) -> list[dict]:
    return [orjson.loads(v) for _, v in await read_to_end(settings, settings.topic(topics.HAPROXY_LOGS))
            if v is not None]


async def test_import_of_rotations_plain_and_compressed(ms_topics: Settings, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "haproxy.log").write_bytes(text(range(0, 1000), "cur"))
    (logs / "haproxy.log.1").write_bytes(text(range(0, 1000), "r1"))
    with gzip.open(logs / "haproxy.log.2.gz", "wb") as f:
        f.write(text(range(0, 3000), "r2"))
    # two gzip members, as `cat a.gz b.gz` makes: one content
    (logs / "haproxy.log.3.gz").write_bytes(gzip.compress(text(range(0, 700), "r3"))
                                            + gzip.compress(text(range(700, 1500), "r3")))
    (logs / "haproxy.log.4.zst").write_bytes(zstandard.ZstdCompressor().compress(text(range(0, 2000), "r4")))
    (logs / "haproxy.log.5.bz2").write_bytes(bz2.compress(text(range(0, 400), "r5")))
    (logs / "haproxy.log.6.xz").write_bytes(lzma.compress(text(range(0, 300), "r6")))
    total = 1000 + 1000 + 3000 + 1500 + 2000 + 400 + 300

    import_once(ms_topics, str(logs / "haproxy.log*"), tmp_path / "cp")
    got = await records(ms_topics)
    ids = [r["request_id"] for r in got]
    assert len(ids) == total and len(set(ids)) == total
    for tag, count in (("cur", 1000), ("r1", 1000), ("r2", 3000), ("r3", 1500), ("r4", 2000), ("r5", 400),
                       ("r6", 300)):
        assert sum(1 for i in ids if i.startswith(f"{tag}-")) == count, tag
    # positions are offsets in the content, line after line
    r2 = sorted((r["src"]["offset"], r["request_id"]) for r in got if r["request_id"].startswith("r2-"))
    assert r2[0][0] == 0 and r2[1][0] == len(json_line(0, "r2")) + 1
    assert [rid for _, rid in r2] == [f"r2-{i:09d}" for i in range(3000)]

    # a second run sends nothing (and decompresses nothing: the checkpoint says those are read)
    second = import_once(ms_topics, str(logs / "haproxy.log*"), tmp_path / "cp")
    assert await sent(ms_topics) == total
    assert second.stderr.count('"already_read": true') == 5


async def test_positions_are_stable_across_runs_and_copies(ms_topics: Settings, tmp_path: Path) -> None:
    """httplog lines carry no request id: theirs is derived from the line's position. A
    compressed file's lines have the same positions, so the same ids, in every run, even one
    without the checkpoint, and in a copy of the archive (another inode)."""
    archive = tmp_path / "a" / "haproxy.log.2.gz"
    archive.parent.mkdir()
    archive.write_bytes(gzip.compress(text(range(500), "", httplog=True)))
    import_once(ms_topics, str(archive), tmp_path / "cp-1")
    first = {(r["src"]["stream"], r["src"]["offset"], r["request_id"]) for r in await records(ms_topics)}
    assert len(first) == 500 and all(rid.startswith("ms-") for _, _, rid in first)
    copy = tmp_path / "b" / "restored.gz"
    copy.parent.mkdir()
    copy.write_bytes(archive.read_bytes())
    import_once(ms_topics, str(copy), tmp_path / "cp-2")  # a fresh checkpoint: sent again...
    every = [(r["src"]["stream"], r["src"]["offset"], r["request_id"]) for r in await records(ms_topics)]
    assert len(every) == 1000 and set(every) == first  # ...with the same positions and ids


async def test_a_file_compressed_after_a_partial_read_goes_on_where_it_was(ms_topics: Settings,
                                                                           tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "haproxy.log"
    log.write_bytes(text(range(0, 600), "p"))
    import_once(ms_topics, str(logs / "haproxy.log*"), tmp_path / "cp")
    assert await sent(ms_topics) == 600
    # HAProxy writes 400 more lines; logrotate renames the file, then compresses it
    with open(log, "ab") as f:
        f.write(text(range(600, 1000), "p"))
    rotated = logs / "haproxy.log.1.gz"
    rotated.write_bytes(gzip.compress(log.read_bytes()))
    log.unlink()
    (logs / "haproxy.log").write_bytes(text(range(0, 10), "new"))
    result = import_once(ms_topics, str(logs / "haproxy.log*"), tmp_path / "cp")
    got = await records(ms_topics)
    ids = [r["request_id"] for r in got]
    assert len(ids) == 1010 and len(set(ids)) == 1010
    tail_of_old = [r for r in got if r["request_id"].startswith("p-")]
    assert len({r["src"]["stream"] for r in tail_of_old}) == 1, "the compressed file is the same stream"
    assert '"offset": ' in result.stderr and '"already_read": false' in result.stderr


async def test_a_compressed_file_still_being_written_is_read_as_far_as_it_goes(ms_topics: Settings,
                                                                               tmp_path: Path) -> None:
    whole = gzip.compress(text(range(2000), "w"), compresslevel=1)
    archive = tmp_path / "haproxy.log.2.gz"
    archive.write_bytes(whole[: len(whole) // 2])  # logrotate has written half of it
    import_once(ms_topics, str(archive), tmp_path / "cp")
    part = await sent(ms_topics)
    assert 0 < part < 2000
    archive.write_bytes(whole)
    import_once(ms_topics, str(archive), tmp_path / "cp")
    ids = [r["request_id"] for r in await records(ms_topics)]
    assert len(ids) == 2000 and len(set(ids)) == 2000


async def test_a_corrupt_archive_is_read_up_to_the_damage(ms_topics: Settings, tmp_path: Path) -> None:
    whole = bytearray(gzip.compress(text(range(3000), "c"), compresslevel=1))
    whole[len(whole) // 2: len(whole) // 2 + 64] = b"\xff" * 64
    (tmp_path / "haproxy.log.9.gz").write_bytes(bytes(whole))
    result = import_once(ms_topics, str(tmp_path / "haproxy.log.9.gz"), tmp_path / "cp")
    assert "compressed file is corrupt" in result.stderr
    got = await sent(ms_topics)
    assert 0 < got < 3000


async def test_progress_as_log_lines_when_not_on_a_terminal(ms_topics: Settings, tmp_path: Path) -> None:
    with gzip.open(tmp_path / "haproxy.log.2.gz", "wb") as f:
        f.write(text(range(60_000), "g"))
    result = import_once(ms_topics, str(tmp_path / "haproxy.log*"), tmp_path / "cp",
                         MS_TAIL__PROGRESS_INTERVAL_S="0.05", MS_TAIL__ROUND_LINES="5000")
    events = [orjson.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    progress = [e for e in events if e["event"] == "import progress"]
    assert progress, "no progress line"
    assert all(e["bytes_total"] == (tmp_path / "haproxy.log.2.gz").stat().st_size for e in progress)
    assert [e["lines"] for e in progress] == sorted(e["lines"] for e in progress)
    done = next(e for e in events if e["event"] == "import finished")
    assert done["lines"] == 60_000 and done["percent"] == 100.0 and done["lines_per_s"] > 0


async def test_progress_bar_on_a_terminal(ms_topics: Settings, tmp_path: Path) -> None:
    with gzip.open(tmp_path / "haproxy.log.2.gz", "wb") as f:
        f.write(text(range(40_000), "b"))
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([meterstream_exe(), "tail", "--once", str(tmp_path / "haproxy.log*"), "--checkpoint",
                             str(tmp_path / "cp")], env={**env_of(ms_topics, MS_TAIL__ROUND_LINES="5000"),
                                                         "TERM": "xterm", "COLUMNS": "160"},
                            stdin=terminal, stdout=terminal, stderr=terminal)
    os.close(terminal)
    screen = b""
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:
                    break  # the process closed the terminal
                if not chunk:
                    break
                screen += chunk
            elif proc.poll() is not None:
                break
        assert proc.wait(60) == 0
    finally:
        os.close(controller)
        if proc.poll() is None:
            proc.kill()
    shown = screen.decode(errors="replace")
    assert "import" in shown and "lines/s" in shown and "ETA" in shown
    assert "40,000 lines" in shown  # the last state of the bar
    assert "kB" in shown or "MB" in shown  # bytes read, as rich shows them
    assert await sent(ms_topics) == 40_000
