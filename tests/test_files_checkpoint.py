"""The tailer's file side (ingest/files.py) and checkpoint (ingest/checkpoint.py): real files,
no Kafka."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from meterstream.ingest.checkpoint import Checkpoint, CheckpointStore
from meterstream.ingest.files import FileSet


def fileset(*patterns: Path, resume: dict[str, int] | None = None, max_line: int = 1024,
            grace: float = 0.0) -> FileSet:
    return FileSet(patterns=[str(p) for p in patterns], exclude=["*.gz"], host="h",
                   max_line_bytes=max_line, keep_raw_bytes=64, rotate_grace_s=grace,
                   resume=resume or {})


def read_all(fs: FileSet) -> list[tuple[str, int, bytes, int]]:
    out = []
    for copy in fs.poll():
        out += [(ln.stream, ln.offset, ln.data, ln.too_long) for ln in fs.read(copy, 1 << 30)]
    for f in fs.ordered():
        out += [(ln.stream, ln.offset, ln.data, ln.too_long) for ln in fs.read(f, 1 << 30)]
    fs.close_finished()
    return out


def lines(out: list[tuple[str, int, bytes, int]]) -> list[bytes]:
    return [data for _, _, data, _ in out]


def test_partial_last_line_waits(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"one\ntw")
    fs = fileset(log)
    assert lines(read_all(fs)) == [b"one"]
    assert lines(read_all(fs)) == []
    with open(log, "ab") as f:
        f.write(b"o\nthree\n")
    assert lines(read_all(fs)) == [b"two", b"three"]


def test_offsets_and_identity(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"first\nsecond\n")
    fs = fileset(log)
    out = read_all(fs)
    st = os.stat(log)
    assert [(o, d) for _, o, d, _ in out] == [(0, b"first"), (6, b"second")]
    assert {s for s, *_ in out} == {f"h:{st.st_dev}:{st.st_ino}:" + out[0][0].rsplit(":", 1)[1]}


def test_budget_stops_between_lines_without_repeating(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"".join(b"line %d\n" % i for i in range(100)))
    fs = fileset(log)
    fs.poll()
    (f,) = fs.ordered()
    got = []
    for _ in range(100):
        for ln in fs.read(f, 1 << 30):
            got.append(ln.data)
            break  # the consumer stops after one line every time
    assert got == [b"line %d" % i for i in range(100)]


def test_resume_from_checkpoint(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"a\nb\nc\n")
    stream = read_all(fileset(log))[0][0]
    assert lines(read_all(fileset(log, resume={stream: 4}))) == [b"c"]


def test_rename_rotation_finishes_old_file_first(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"old 1\n")
    fs = fileset(log, grace=0.2)
    assert lines(read_all(fs)) == [b"old 1"]
    writer = open(log, "ab")  # noqa: SIM115 - the writer keeps its descriptor across the rename
    writer.write(b"old 2\n")
    writer.flush()
    os.rename(log, tmp_path / "a.log.1")
    writer.write(b"old 3 (late write to the renamed file)\n")
    writer.flush()
    log.write_bytes(b"new 1\n")
    assert lines(read_all(fs)) == [b"old 2", b"old 3 (late write to the renamed file)", b"new 1"]
    writer.write(b"old 4\n")
    writer.close()
    assert lines(read_all(fs)) == [b"old 4"]
    import time

    time.sleep(0.25)
    read_all(fs)
    assert [f.path for f in fs.files.values()] == [str(log)]


def test_copytruncate_reads_the_rest_from_the_copy(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"l1\nl2\n")
    fs = fileset(log)
    assert lines(read_all(fs)) == [b"l1", b"l2"]
    with open(log, "ab") as f:
        f.write(b"l3\nl4\n")  # written, not yet read when logrotate copies and truncates
    shutil.copyfile(log, tmp_path / "a.log.1")
    with open(log, "r+b") as f:
        f.truncate(0)
    with open(log, "ab") as f:
        f.write(b"n1\nn2 longer than before so that the size passes the old offset\n")
    out = read_all(fs)
    assert lines(out) == [b"l3", b"l4", b"n1", b"n2 longer than before so that the size passes the old offset"]
    # the rest of the copy is read as the original's stream, at the original's offsets
    assert out[0][0] == out[1][0] != out[2][0]
    assert [o for _, o, _, _ in out[:2]] == [6, 9]
    assert lines(read_all(fs)) == []


def test_copy_followed_by_glob_is_not_read_twice(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"l1\n")
    fs = fileset(tmp_path / "a.log*")
    assert lines(read_all(fs)) == [b"l1"]
    with open(log, "ab") as f:
        f.write(b"l2\n")
    shutil.copyfile(log, tmp_path / "a.log.1")
    with open(log, "r+b") as f:
        f.truncate(0)
    with open(log, "ab") as f:
        f.write(b"n1\n")
    assert sorted(lines(read_all(fs)) + lines(read_all(fs))) == [b"l2", b"n1"]


def test_inode_reuse_is_a_new_file(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"first file\n")
    stream = read_all(fileset(log))[0][0]
    log.unlink()
    log.write_bytes(b"second file, maybe the same inode\n")
    # even if the inode number is the same, the first line differs: a new stream from 0
    out = read_all(fileset(log, resume={stream: 11}))
    assert lines(out) == [b"second file, maybe the same inode"]
    assert out[0][0] != stream


def test_overlong_lines_are_reported_not_split(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    big = b"x" * (3 * 1024 * 1024)
    log.write_bytes(b"ok 1\n" + big + b"\nok 2\n" + b"y" * 2000 + b"\nok 3\n")
    out = read_all(fileset(log, max_line=1024))
    assert [d[:4] for _, _, d, _ in out] == [b"ok 1", b"x" * 4, b"ok 2", b"y" * 4, b"ok 3"]
    assert [t for *_, t in out] == [0, len(big), 0, 2000, 0]
    assert len(out[1][2]) == 64  # only the first bytes are kept
    assert out[2][1] == 5 + len(big) + 1


def test_rotated_file_last_line_without_newline_after_grace(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"a\nb-without-newline")
    fs = fileset(log, grace=0.0)
    assert lines(read_all(fs)) == [b"a"]
    os.rename(log, tmp_path / "a.log.1")
    assert lines(read_all(fs)) == [b"b-without-newline"]


# -- checkpoint ------------------------------------------------------------------------------

def saved(tmp_path: Path, offset: int) -> CheckpointStore:
    store = CheckpointStore(tmp_path / "cp")
    cp = Checkpoint()
    cp.advance("s", offset, "/log")
    store.save(cp)
    return store


def test_checkpoint_round_trip_and_never_back(tmp_path: Path) -> None:
    store = saved(tmp_path, 100)
    cp = store.load()
    assert cp.offset("s") == 100
    with pytest.raises(ValueError, match="go back"):
        cp.advance("s", 50, "/log")


@pytest.mark.parametrize("damage", ["empty", "truncated", "nul", "garbage", "bad_checksum"])
def test_corrupt_checkpoint_falls_back_never_forward(tmp_path: Path, damage: str) -> None:
    store = saved(tmp_path, 100)
    cp = store.load()
    cp.advance("s", 200, "/log")
    store.save(cp)  # 200 is current, 100 the previous generation
    raw = store.path.read_bytes()
    store.path.write_bytes({
        "empty": b"",
        "truncated": raw[: len(raw) // 2],
        "nul": b"\0" * len(raw),
        "garbage": os.urandom(64),
        "bad_checksum": raw.replace(b'\\"offset\\":200', b'\\"offset\\":900'),
    }[damage])
    assert store.load().offset("s") == 100


def test_both_generations_corrupt_means_start_over(tmp_path: Path) -> None:
    store = saved(tmp_path, 100)
    store.save(store.load())
    store.path.write_bytes(b"\0" * 10)
    store.previous.write_bytes(b"")
    assert store.load().offset("s") is None


def test_runs_of_lines_budgets_and_overlong_lines(tmp_path: Path) -> None:
    """read_runs (the tailer's way): ordinary lines come as runs, a line over the maximum on
    its own between them; at most max_lines lines, the budget's last line included, the offset
    past each item; what read gives line by line is the same."""
    from meterstream.ingest.files import Line, Lines

    log = tmp_path / "a.log"
    body = [b"a1", b"a2", b"x" * 2000, b"a3", b"a4", b"a5"]
    log.write_bytes(b"".join(line + b"\n" for line in body))
    fs = fileset(log)
    fs.poll()
    (f,) = fs.ordered()
    items = list(fs.read_runs(f, 1 << 30, 1 << 30))
    assert [type(i) for i in items] == [Lines, Line, Lines]
    assert items[0].data == [b"a1", b"a2"] and (items[0].offset, items[0].end) == (0, 6)
    assert items[1].too_long == 2000 and items[1].data == b"x" * 64 and (items[1].offset, items[1].end) == (6, 2007)
    assert items[2].data == [b"a3", b"a4", b"a5"] and (items[2].offset, items[2].end) == (2007, 2016)
    assert f.offset == 2016
    # a line budget, then a byte budget (the line that reaches it included): no line twice or lost
    fs2 = fileset(log)
    fs2.poll()
    (g,) = fs2.ordered()
    first = list(fs2.read_runs(g, 1 << 30, 1))
    assert [i.data for i in first] == [[b"a1"]] and g.offset == 3
    second = list(fs2.read_runs(g, 2, 1 << 30))
    assert [i.data for i in second] == [[b"a2"]] and g.offset == 6
    rest = list(fs2.read_runs(g, 1 << 30, 1 << 30))
    assert [i.data if isinstance(i, Lines) else i.too_long for i in rest] == [2000, [b"a3", b"a4", b"a5"]]
    assert [(o, d, t) for _, o, d, t in read_all(fileset(log))] == [
        (0, b"a1", 0), (3, b"a2", 0), (6, b"x" * 64, 2000), (2007, b"a3", 0), (2010, b"a4", 0), (2013, b"a5", 0)]
