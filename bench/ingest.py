"""Ingest benchmark (issue 4): the tailer beside kcat, same file, same broker, same run.

    python -m bench.ingest [--lines N] [--profile]

Generates N realistic JSON lines (deploy/haproxy/haproxy.cfg's format), then pushes the file
to a fresh topic with `meterstream tail` (pinned to CPU 0) and with `kcat -P -l` (pinned to
CPU 0) to another fresh topic; the broker is kept on CPU 1 meanwhile. Prints lines/s of both,
their ratio and the tailer's peak RSS. --profile also runs the tailer under cProfile and prints
where its time goes.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from bench.common import (
    WORK,
    delete_topics,
    fresh_topics,
    need,
    peak_rss_mib,
    pin_broker,
    run_async,
    services,
    unpin_broker,
)
from meterstream.ingest.checkpoint import CheckpointStore

PATHS = ["v1/fetch_key", "v1/objects", "graphql", "rpc/GetObj", "v1/health", "v1/checkpoint"]


def generate(path: Path, lines: int) -> None:
    if path.exists() and path.stat().st_size > 0 and path.read_bytes().count(b"\n") == lines:
        return
    rng = random.Random(7)
    fps = [f"{rng.getrandbits(32):08x}" for _ in range(2000)]
    start = 1_795_600_000_000
    with open(path, "w") as out:
        for i in range(lines):
            ts = start + i * 3
            status = rng.choices([200, 200, 200, 204, 304, 401, 403, 429, 500, 503], k=1)[0]
            tr = rng.randint(0, 40)
            out.write(
                f'{{"ts":{ts // 1000}.{ts % 1000:03d},"request_id":"0A000001:{i % 65536:04X}_0A000002:1F90_'
                f'{ts // 1000:08X}_{i:06X}:{1234:04X}","client_ip":"10.{i % 200}.{i % 7}.{i % 250}",'
                f'"api_key_fp":"{fps[i % len(fps)]}","service_type":"{1 + i % 3}","network":"{i % 4}",'
                f'"server_id":"{16 + i % 5}","fe_type":"2","traffic_type":"{1 if status < 400 else 3}",'
                f'"event_type":"{0 if status < 400 else 11}","key_metadata":"S","status":{status},'
                f'"bytes_sent":"{rng.randint(120, 9000)}","path":"{rng.choice(PATHS)[:10]}",'
                f'"TR":0,"Tw":0,"Tc":{rng.randint(0, 2)},"Tr":{tr},"Ta":{tr + rng.randint(0, 3)},'
                f'"backend_id":"3","termination_state":"----","config_hex":"00000000"}}\n'
            )


def kcat(bootstrap: str, topic: str, path: Path, lines: int) -> float:
    exe = need("kcat", "kcat")
    started = time.perf_counter()
    subprocess.run(["taskset", "-c", "0", exe, "-P", "-b", bootstrap, "-t", topic, "-l",
                    "-X", "acks=all", "-X", "enable.idempotence=true", "-X", "linger.ms=5",
                    str(path)], check=True)
    return lines / (time.perf_counter() - started)


def tailer(bootstrap: str, topic_prefix: str, path: Path, lines: int, profile: bool) -> tuple[float, float, float]:
    """(lines/s from start, lines/s from the first acknowledged round, peak RSS MiB)"""
    checkpoint = WORK / f"cp-{os.getpid()}-{time.monotonic_ns()}"
    store = CheckpointStore(checkpoint)
    cmd = [sys.executable]
    if profile:
        cmd += ["-m", "cProfile", "-o", str(WORK / "tail.prof")]
    cmd += ["-m", "meterstream.cli", "--log-level", "warning", "tail", str(path),
            "--checkpoint", str(checkpoint), "--http-port", "0"]
    env = {**os.environ, "MS_KAFKA__BOOTSTRAP": bootstrap, "MS_KAFKA__TOPIC_PREFIX": topic_prefix,
           "MS_TAIL__CHECKPOINT_INTERVAL_S": "0.2"}
    size = path.stat().st_size
    started = time.perf_counter()
    proc = subprocess.Popen(["taskset", "-c", "0", *cmd], env=env)
    first: tuple[float, int] | None = None  # (time, offset) of the first acknowledged round
    peak = 0.0
    while True:
        time.sleep(0.05)
        peak = max(peak, peak_rss_mib(proc.pid))
        streams = store.load().streams if checkpoint.exists() else {}
        offset = max((e.offset for e in streams.values()), default=0)
        if offset and first is None:
            first = (time.perf_counter(), offset)
        if offset >= size:
            break
        if proc.poll() is not None:
            raise RuntimeError(f"the tailer exited with {proc.returncode}")
    done = time.perf_counter()
    proc.terminate()
    proc.wait(60)
    assert first is not None
    steady = lines * (size - first[1]) / size / max(done - first[0], 1e-9)
    return lines / (done - started), steady, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    dev = services()
    bootstrap = dev.kafka.bootstrap
    path = WORK / f"haproxy-{args.lines}.log"
    generate(path, args.lines)
    print(f"# {args.lines:,} lines, {path.stat().st_size / 2**20:.0f} MiB: {path}")
    kcat_topic, = run_async(fresh_topics(bootstrap, "kcat"))
    prefix = kcat_topic.replace(".kcat.", ".tail.") + "."
    tail_topics = [prefix + "haproxy.logs", prefix + "haproxy.logs.rejected"]
    run_async(_create(bootstrap, tail_topics))
    pin_broker(dev, 1)
    try:
        kcat_rate = kcat(bootstrap, kcat_topic, path, args.lines)
        tail_rate, tail_steady, rss = tailer(bootstrap, prefix, path, args.lines, args.profile)
    finally:
        unpin_broker(dev)
        run_async(delete_topics(bootstrap, [kcat_topic, *tail_topics]))
    print(f"kcat -P -l          {kcat_rate:>10,.0f} lines/s")
    print(f"meterstream tail    {tail_rate:>10,.0f} lines/s (from process start; "
          f"{tail_steady:,.0f} once the first round is acknowledged)")
    print(f"ratio tail/kcat     {tail_rate / kcat_rate:>10.2f}")
    print(f"tail peak RSS       {rss:>10.0f} MiB")
    if args.profile:
        import pstats

        pstats.Stats(str(WORK / "tail.prof")).sort_stats("tottime").print_stats(18)


async def _create(bootstrap: str, topics: list[str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, 4, 1) for t in topics])
    finally:
        await admin.close()


if __name__ == "__main__":
    main()
