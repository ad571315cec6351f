"""`meterstream tail` against the real broker: bad input, SIGTERM, rotation, kill -9, broker away."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import threading
import time
from pathlib import Path

import orjson
import pytest

from meterstream.dev.processes import Process, wait_for
from meterstream.dev.topics import consume
from meterstream.ingest.checkpoint import CheckpointStore
from meterstream.settings import Settings
from tests.conftest import Services
from tests.helpers import json_line, own_services_or_skip

pytestmark = pytest.mark.services


def tail(settings: Settings, tmp_path: Path, *paths: Path, **env: str) -> Process:
    return Process(
        ["tail", *map(str, paths), "--checkpoint", str(tmp_path / "checkpoint")],
        {"MS_KAFKA__BOOTSTRAP": settings.kafka.bootstrap,
         "MS_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
         "MS_TAIL__ROTATE_GRACE_S": "0.5", "MS_TAIL__POLL_INTERVAL_S": "0.05", **env},
        tmp_path / "tail.log",
    )


def ids(messages: list) -> list[str]:
    return [value["request_id"] for _, value in messages]


async def test_bad_input_goes_to_dead_letters_and_sigterm_checkpoints(
    ms_topics: Settings, tmp_path: Path
) -> None:
    log = tmp_path / "haproxy.log"
    big = b"{" + b"x" * (1024 * 1024) + b"}"
    parts = [json_line(0).encode(), b"\x00\x01\x02garbage\x7f", b"\xc3\x28 not utf-8", big, b"",
             json_line(1).encode()]
    log.write_bytes(b"\n".join(parts) + b"\n")
    offsets = [sum(len(p) + 1 for p in parts[:i]) for i in range(len(parts))]
    proc = tail(ms_topics, tmp_path, log).start()
    try:
        records = await consume(ms_topics.kafka, ms_topics.topic("haproxy.logs"), expect=2)
        dead = await consume(ms_topics.kafka, ms_topics.topic("haproxy.logs.rejected"), expect=4)
        assert sorted(ids(records)) == ["t-000000000", "t-000000001"]
        by_offset = {v["position"]["offset"]: v for _, v in dead}
        assert sorted(by_offset) == offsets[1:5]
        assert {v["source"] for v in by_offset.values()} == {str(log)}
        assert by_offset[offsets[1]]["reason"] == "unknown_format"
        # a NUL cannot be stored as text: such a line is kept as base64 (RejectedLine.of)
        assert (by_offset[offsets[1]]["raw"], by_offset[offsets[1]]["raw_encoding"]) == (
            base64.b64encode(b"\x00\x01\x02garbage\x7f").decode(), "base64")
        assert by_offset[offsets[2]]["reason"] == "invalid_utf8"
        assert by_offset[offsets[2]]["raw_encoding"] == "base64"
        too_long = by_offset[offsets[3]]
        assert (too_long["reason"], too_long["raw_bytes"], too_long["raw_truncated"]) == (
            "line_too_long", len(big), True)
        assert len(too_long["raw"]) == ms_topics.produce.dead_letter_raw_bytes
        assert by_offset[offsets[4]]["reason"] == "empty_line"
        assert all(k == str(log).encode() for k, _ in dead)

        assert proc.metric("meterstream_ingest_rejected_total", 'reason="line_too_long"') == 1
        assert proc.metric("meterstream_ingest_rejected_total", 'reason="invalid_utf8"') == 1
        assert proc.metric("meterstream_ingest_records_produced_total") == 2
        assert proc.metric("meterstream_ingest_lines_read_total", 'input="file"') == 6
        assert proc.metric("meterstream_ingest_behind_bytes", f'path="{log}"') == 0
        status, body = proc.get("/healthz")
        assert status == 200 and orjson.loads(body)["healthy"] is True
        # a partial last line is not sent until it is complete
        with open(log, "ab") as f:
            f.write(json_line(2).encode()[:50])
        time.sleep(1)
        assert proc.metric("meterstream_ingest_records_produced_total") == 2
        with open(log, "ab") as f:
            f.write(json_line(2).encode()[50:] + b"\n")
        wait_for(lambda: proc.metric("meterstream_ingest_records_produced_total") == 3, 10, "line 2")
        # a round acknowledged soon after a checkpoint write is not written at once; once the
        # tailer is idle, it still is within the interval (1 s), without a stop
        store = CheckpointStore(tmp_path / "checkpoint")
        wait_for(lambda: [e.offset for e in store.load().streams.values()] == [log.stat().st_size], 3, "cp")
        with open(log, "ab") as f:
            f.write(json_line(3).encode() + b"\n")
        wait_for(lambda: proc.metric("meterstream_ingest_records_produced_total") == 4, 10, "line 3")
        with open(log, "ab") as f:
            f.write(json_line(4).encode() + b"\n")
        wait_for(lambda: proc.metric("meterstream_ingest_records_produced_total") == 5, 10, "line 4")
        wait_for(lambda: [e.offset for e in store.load().streams.values()] == [log.stat().st_size],
                 3, "the checkpoint of the last round, without a stop")
        assert proc.metric("meterstream_ingest_checkpoint_age_seconds") < 3
    finally:
        assert proc.terminate() == 0
    checkpoint = CheckpointStore(tmp_path / "checkpoint").load()
    assert [e.offset for e in checkpoint.streams.values()] == [log.stat().st_size]
    assert all(sec not in (tmp_path / "tail.log").read_text() for sec in ("bWV0ZXJzdHJlYW0", "hunter2"))


async def test_rotation_by_rename_and_copytruncate_loses_and_doubles_nothing(
    ms_topics: Settings, tmp_path: Path
) -> None:
    log = tmp_path / "app.log"
    log.write_text(json_line(0) + "\n")  # the writer starts once the tailer follows the file
    total, rotations = 24_000, ["rename", "copytruncate"] * 3
    lock = threading.Lock()

    def writer() -> None:
        out = open(log, "ab")  # noqa: SIM115 - reopened at each rename rotation
        per_phase = total // (len(rotations) + 1)
        i = 1
        for phase, how in enumerate([*rotations, None]):
            while i < per_phase * (phase + 1) or (how is None and i < total):
                with lock:
                    out.write(json_line(i).encode() + b"\n")
                    out.flush()
                i += 1
                if i % 200 == 0:
                    time.sleep(0.02)
            if how == "rename":
                os.rename(log, tmp_path / "app.log.1")
                for _ in range(50):  # late writes to the renamed file, before the writer reopens
                    out.write(json_line(i).encode() + b"\n")
                    i += 1
                out.flush()
                out.close()
                out = open(log, "ab")  # noqa: SIM115
            elif how == "copytruncate":
                # copytruncate loses what is written between the copy and the truncation
                # (logrotate documents it); hold the writer for that instant, as the test's
                # subject is the tailer, not that window
                with lock:
                    shutil.copyfile(log, tmp_path / "app.log.1")
                    os.truncate(log, 0)
        out.close()

    proc = tail(ms_topics, tmp_path, log).start()
    thread = threading.Thread(target=writer)
    try:
        # a file renamed away before the tailer first saw it is not followed by its name
        wait_for(lambda: proc.metric("meterstream_ingest_records_produced_total") == 1, 30, "following")
        thread.start()
        thread.join(120)
        messages = await consume(ms_topics.kafka, ms_topics.topic("haproxy.logs"), expect=total)
    finally:
        assert proc.terminate() == 0
    got = ids(messages)
    assert len(got) == total, f"{len(got)} records for {total} lines"
    assert set(got) == {f"t-{i:09d}" for i in range(total)}
    dead = await consume(ms_topics.kafka, ms_topics.topic("haproxy.logs.rejected"), quiet_s=1)
    assert dead == []


async def test_kill_9_repeats_lines_but_loses_none(ms_topics: Settings, tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    total = 150_000
    with open(log, "w") as f:
        f.writelines(json_line(i) + "\n" for i in range(total))
    size = log.stat().st_size
    store = CheckpointStore(tmp_path / "checkpoint")
    # paced (small rounds, each lingering 50 ms, checkpoints every 0.2 s) so that a kill
    # certainly lands mid-file: unpaced, the rest of the file can pass within one
    # checkpoint interval
    proc = tail(ms_topics, tmp_path, log, MS_TAIL__ROUND_LINES="2000", MS_PRODUCE__LINGER_MS="50",
                MS_TAIL__CHECKPOINT_INTERVAL_S="0.2").start()
    progress = []
    for kill in range(2):
        # kill -9 once the checkpoint shows progress, before the end of the file
        # (wait_for calls the predicate before the loop moves on)
        wait_for(lambda: (store.load().streams or {}) != {} and
                 max(e.offset for e in store.load().streams.values()) > size * (kill + 1) / 4, 60,  # noqa: B023
                 "checkpoint progress")
        proc.kill9()
        progress.append(max(e.offset for e in store.load().streams.values()))
        assert progress[-1] < size, "killed too late: the file was already done"
        proc.start()
    messages = await consume(ms_topics.kafka, ms_topics.topic("haproxy.logs"),
                             until=lambda got: len({v["request_id"] for _, v in got}) >= total)
    assert proc.terminate() == 0
    got = ids(messages)
    assert set(got) == {f"t-{i:09d}" for i in range(total)}
    assert len(got) >= total
    # the repeated lines are the same records: same id, same source position
    first_by_id: dict[str, dict] = {}
    for _, v in messages:
        assert first_by_id.setdefault(v["request_id"], v) == v
    assert max(e.offset for e in store.load().streams.values()) == size


@pytest.mark.slow
async def test_broker_away_for_30_seconds_loses_nothing(
    ms_topics: Settings, tmp_path: Path, services: Services
) -> None:
    broker = own_services_or_skip("stops the broker").kafka
    log = tmp_path / "app.log"
    log.write_text("".join(json_line(i) + "\n" for i in range(1000)))
    proc = tail(ms_topics, tmp_path, log, MS_PRODUCE__SEND_TIMEOUT_S="5",
                MS_PRODUCE__RETRY_BACKOFF_MAX_S="2").start()
    try:
        wait_for(lambda: proc.metric("meterstream_ingest_records_produced_total") == 1000, 30, "first lines")
        await asyncio.to_thread(broker.stop)
        try:
            written = 1000
            started = time.monotonic()
            while time.monotonic() - started < 30:
                with open(log, "a") as f:
                    f.writelines(json_line(i) + "\n" for i in range(written, written + 500))
                written += 500
                time.sleep(0.5)
            assert proc.running()
            # back-pressure: the tailer stopped reading, the file is ahead of it
            assert proc.metric("meterstream_ingest_behind_bytes", f'path="{log}"') > 0
            assert proc.metric("meterstream_ingest_produce_failures_total") >= 1
            assert proc.metric("meterstream_ingest_records_produced_total") < written
        finally:
            await asyncio.to_thread(broker.start)  # its readiness check runs its own loop
        messages = await consume(ms_topics.kafka, ms_topics.topic("haproxy.logs"),
                                 until=lambda got: len({v["request_id"] for _, v in got}) >= written)
        assert set(ids(messages)) == {f"t-{i:09d}" for i in range(written)}
    finally:
        assert proc.terminate() == 0


async def test_once_stops_when_caught_up(ms_topics: Settings, tmp_path: Path) -> None:
    log = tmp_path / "archive.log"
    log.write_text("".join(json_line(i) + "\n" for i in range(3000)))
    proc = tail(ms_topics, tmp_path, log)
    proc.args.insert(1, "--once")
    proc.start()
    assert proc.proc is not None and proc.proc.wait(60) == 0
    messages = await consume(ms_topics.kafka, ms_topics.topic("haproxy.logs"), expect=3000)
    assert sorted(ids(messages)) == [f"t-{i:09d}" for i in range(3000)]
    assert [e.offset for e in CheckpointStore(tmp_path / "checkpoint").load().streams.values()] == [log.stat().st_size]


async def test_poison_lines_are_dead_letters_and_the_tailer_goes_on(ms_topics: Settings, tmp_path: Path) -> None:
    """Poison values: values out of every range, between good lines, through the real tailer.
    Before, a 24-digit %B parsed and then failed to encode outside the parser's guard: the
    tailer died, and died again at each start, its checkpoint never past the line."""
    from tests.test_parser import HTTPLOG

    def json_with(i: int, old: str, new: str) -> str:
        line = json_line(i, "p")
        assert old in line
        return line.replace(old, new)

    fe_plain = HTTPLOG.replace(" api ", " fe_plain~ ").replace("{cba0c270|1|1|16|2|1|0|S|0a1f}",
                                                                "{api.example.com|4DB6772D}")
    poison = {  # line -> the field its dead letter names
        HTTPLOG.replace(" 1532 ", " 123456789012345678901234 "): "bytes_sent",
        json_with(1, '"bytes_sent":"101"', '"bytes_sent":18446744073709551616'): "bytes_sent",
        json_with(2, '"TR":0', '"TR":3000000000'): "TR",
        json_with(3, '"ts":1795600000.003', '"ts":99999999999999999'): "ts",
        json_with(4, '"request_id":"p-000000004"', '"request_id":"p-\\u0000-4"'): "request_id",
        json_with(5, '"status":200', '"status":1000'): "status",
    }
    good = [json_line(0), json_line(1), fe_plain, json_line(2)]
    lines = [good[0], *list(poison)[:3], good[1], good[2], *list(poison)[3:], good[3]]
    log = tmp_path / "haproxy.log"
    log.write_text("".join(line + "\n" for line in lines))
    offsets = {line: sum(len(x.encode()) + 1 for x in lines[:i]) for i, line in enumerate(lines)}
    # a file whose name is not UTF-8 (the OS hands it over with surrogate escapes)
    odd = tmp_path / os.fsdecode(b"odd-\xff.log")
    odd.write_text("not a log line\n" + json_line(9) + "\n")
    proc = tail(ms_topics, tmp_path, log, odd,
                MS_PARSE__REQUEST_CAPTURES='{"fe_plain": ["host", "api_key_fp"]}').start()
    try:
        records = await consume(ms_topics.kafka, ms_topics.topic("haproxy.logs"), expect=5)
        dead = await consume(ms_topics.kafka, ms_topics.topic("haproxy.logs.rejected"),
                             expect=len(poison) + 1)
        assert proc.running()
        assert sorted(v["request_id"] for _, v in records if v["request_id"].startswith("t-")) == [
            "t-000000000", "t-000000001", "t-000000002", "t-000000009"]
        assert [v["api_key_fp"] for _, v in records if v["request_id"].startswith("ms-")] == [
            int.from_bytes(bytes.fromhex("4DB6772D"), "big", signed=True)]  # by the frontend's layout
        by_offset = {v["position"]["offset"]: v for _, v in dead if v["source"] == str(log)}
        assert sorted(by_offset) == sorted(offsets[line] for line in poison)
        for line, field in poison.items():
            letter = by_offset[offsets[line]]
            assert letter["reason"] == "invalid_field" and letter["detail"].startswith(f"{field}:"), letter
            assert letter["raw"] == line
        assert [v["source"] for _, v in dead if v["source"] != str(log)] == [str(tmp_path / "odd-\\xff.log")]
        assert proc.metric("meterstream_ingest_rejected_total", 'reason="invalid_field"') == len(poison)
        # the checkpoint passes the poison lines, and the tailer goes on
        store = CheckpointStore(tmp_path / "checkpoint")
        wait_for(lambda: sorted(e.offset for e in store.load().streams.values()) ==
                 sorted([log.stat().st_size, odd.stat().st_size]), 10, "the checkpoint past the poison lines")
        with open(log, "a") as f:
            f.write(json_line(3) + "\n")
        wait_for(lambda: proc.metric("meterstream_ingest_records_produced_total") == 6, 10, "a line after them")
    finally:
        assert proc.terminate() == 0
