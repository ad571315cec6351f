"""Ingest benchmark: the tailer beside kcat, same file, same broker, same run.

    python -m bench ingest [--lines N] [--repeat R] [--scale] [--profile] [--format record|classic]

Generates N realistic JSON lines (deploy/haproxy/haproxy.cfg's format; --format classic: the
earlier line, with quoted numbers, which takes the slower path), then pushes the file
to a fresh topic with `kcat -P -l` (pinned to CPU 0) and with `meterstream tail` (pinned to
CPU 0) to another fresh topic; the broker is kept on CPU 1 meanwhile. Prints lines/s of both,
their ratio, the CPU time each used (lines per CPU-second: less sensitive to other load on a
shared machine than wall time) and the tailer's peak RSS with its RSS at each quarter of the
file. --repeat R runs each measurement R times (fresh topics each time) and prints the medians.
--scale runs it at 100k, 1M and 5M lines (the cost should grow linearly, RSS
stay flat). --profile also runs the tailer under cProfile and prints where its time goes.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    WORK,
    cpu_seconds,
    create_topics,
    delete_topics,
    fresh_topics,
    need,
    peak_rss_mib,
    pin_broker,
    rss_mib,
    run_async,
    services,
    unpin_broker,
)
from meterstream.ingest.checkpoint import CheckpointStore

PATHS = ["v1/fetch_key", "v1/objects", "graphql", "rpc/GetObj", "v1/health", "v1/checkpoint"]


def generate(path: Path, lines: int, form: str = "record") -> None:
    """``lines`` lines of requests as HAProxy logs them: ``record``, the line
    deploy/haproxy/haproxy.cfg writes (LogRecord's JSON); ``classic``, the earlier line (quoted
    numbers, ``ts`` in seconds, the hex fingerprint), which ingest still reads."""
    if path.exists() and path.stat().st_size > 0 and path.read_bytes().count(b"\n") == lines:
        return
    rng = random.Random(7)
    fps = [rng.getrandbits(32) for _ in range(2000)]
    start = 1_795_600_000_000
    with open(path, "w") as out:
        for i in range(lines):
            ts = start + i * 3
            status = rng.choices([200, 200, 200, 204, 304, 401, 403, 429, 500, 503], k=1)[0]
            tr = rng.randint(0, 40)
            request_id = f"0A000001:{i % 65536:04X}_0A000002:1F90_{ts // 1000:08X}_{i:06X}:{1234:04X}"
            fp = fps[i % len(fps)]
            traffic, event = (1, 0) if status < 400 else (3, 11)
            sent, path_ = rng.randint(120, 9000), rng.choice(PATHS)[:10]
            tc, ta = rng.randint(0, 2), tr + rng.randint(0, 3)
            if form == "classic":
                out.write(
                    f'{{"ts":{ts // 1000}.{ts % 1000:03d},"request_id":"{request_id}",'
                    f'"client_ip":"10.{i % 200}.{i % 7}.{i % 250}",'
                    f'"api_key_fp":"{fp:08x}","service_type":"{1 + i % 3}","network":"{i % 4}",'
                    f'"server_id":"{16 + i % 5}","fe_type":"2","traffic_type":"{traffic}",'
                    f'"event_type":"{event}","key_metadata":"S","status":{status},'
                    f'"bytes_sent":"{sent}","path":"{path_}",'
                    f'"TR":0,"Tw":0,"Tc":{tc},"Tr":{tr},"Ta":{ta},'
                    f'"backend_id":"3","termination_state":"----","config_hex":"00000000"}}\n'
                )
                continue
            # as HAProxy's log-format writes it: the fingerprint as its int32, the customer the
            # vault map names (none for an unknown key), "/" escaped by json(utf8s)
            customer = "null" if status == 401 else str(1000 + i % len(fps))
            out.write(
                f'{{"ts":{ts},"request_id":"{request_id}","client_ip":"10.{i % 200}.{i % 7}.{i % 250}",'
                f'"api_key_fp":{fp - (1 << 32) if fp >= 1 << 31 else fp},"service_type":{1 + i % 3},'
                f'"network":{i % 4},"server_id":{16 + i % 5},"fe_type":2,"traffic_type":{traffic},'
                f'"event_type":{event},"key_metadata":"S","status":{status},"bytes_sent":{sent},'
                f'"path":"{path_.replace("/", chr(92) + "/")}","TR":0,"Tw":0,"Tc":{tc},"Tr":{tr},"Ta":{ta},'
                f'"backend_id":3,"termination_state":"----","config_hex":"00000000","customer_id":{customer}}}\n'
            )


@dataclass
class Run:
    rate: float  # lines/s, wall time from process start to the last line acknowledged
    cpu_s: float  # CPU seconds the process used (user + system)
    steady: float = 0.0  # tail: lines/s once the first round is acknowledged
    peak_rss: float = 0.0  # tail: MiB
    rss: tuple[float, ...] = ()  # tail: MiB when a quarter, half, three quarters, all of the file is acknowledged


def kcat(bootstrap: str, topic: str, path: Path, lines: int) -> Run:
    exe = need("kcat", "kcat")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(["taskset", "-c", "0", exe, "-P", "-b", bootstrap, "-t", topic, "-l",
                    "-X", "acks=all", "-X", "enable.idempotence=true", "-X", "linger.ms=5",
                    str(path)], check=True)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return Run(lines / elapsed, cpu)


def tailer(bootstrap: str, topic_prefix: str, path: Path, lines: int, profile: bool) -> Run:
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
    peak, quarters = 0.0, list[float]()
    while True:
        time.sleep(0.05)
        peak = max(peak, peak_rss_mib(proc.pid))
        streams = store.load().streams if checkpoint.exists() else {}
        offset = max((e.offset for e in streams.values()), default=0)
        if offset and first is None:
            first = (time.perf_counter(), offset)
        while len(quarters) < 4 and offset >= size * (len(quarters) + 1) / 4:
            quarters.append(rss_mib(proc.pid))
        if offset >= size:
            break
        if proc.poll() is not None:
            raise RuntimeError(f"the tailer exited with {proc.returncode}")
    done = time.perf_counter()
    cpu = cpu_seconds(proc.pid)
    proc.terminate()
    proc.wait(60)
    assert first is not None
    steady = lines * (size - first[1]) / size / max(done - first[0], 1e-9)
    return Run(lines / (done - started), cpu, steady, peak, tuple(quarters))


def measure(bootstrap: str, path: Path, lines: int, profile: bool) -> tuple[Run, Run]:
    """kcat and the tailer, each on fresh topics, the broker kept off their core."""
    kcat_topic, = run_async(fresh_topics(bootstrap, "kcat"))
    prefix = kcat_topic.replace(".kcat.", ".tail.") + "."
    tail_topics = [prefix + "haproxy.logs", prefix + "haproxy.logs.rejected"]
    run_async(create_topics(bootstrap, tail_topics))
    try:
        return kcat(bootstrap, kcat_topic, path, lines), tailer(bootstrap, prefix, path, lines, profile)
    finally:
        run_async(delete_topics(bootstrap, [kcat_topic, *tail_topics]))


def median_run(runs: list[Run]) -> Run:
    def med(values: list[float]) -> float:
        return statistics.median(values)

    return Run(med([r.rate for r in runs]), med([r.cpu_s for r in runs]), med([r.steady for r in runs]),
               med([r.peak_rss for r in runs]),
               tuple(med([r.rss[i] for r in runs if len(r.rss) > i]) for i in range(min(len(r.rss) for r in runs))))


def report(lines: int, k: Run, t: Run, label: str = "") -> None:
    print(f"kcat -P -l          {k.rate:>10,.0f} lines/s{label}  ({k.cpu_s:.2f} CPU s: "
          f"{lines / max(k.cpu_s, 1e-9):,.0f} lines per CPU-second)")
    print(f"meterstream tail    {t.rate:>10,.0f} lines/s{label} (from process start; "
          f"{t.steady:,.0f} once the first round is acknowledged)  ({t.cpu_s:.2f} CPU s: "
          f"{lines / max(t.cpu_s, 1e-9):,.0f} lines per CPU-second)")
    print(f"ratio tail/kcat     {t.rate / k.rate:>10.2f}")
    print(f"tail peak RSS       {t.peak_rss:>10.0f} MiB (RSS at 1/4, 1/2, 3/4, all of the file acknowledged: "
          f"{', '.join(f'{r:.0f}' for r in t.rss)} MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each measurement; medians printed")
    parser.add_argument("--scale", action="store_true", help="at 100k, 1M and 5M lines")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--format", choices=["record", "classic"], default="record",
                        help="the lines: record (what deploy/haproxy/haproxy.cfg writes) or classic (the "
                             "earlier line: quoted numbers, ts in seconds, the hex fingerprint)")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    dev = services()
    bootstrap = dev.kafka.bootstrap
    sizes = [100_000, 1_000_000, 5_000_000] if args.scale else [args.lines]
    results: list[tuple[int, Run, Run]] = []
    for lines in sizes:
        path = WORK / f"haproxy-{args.format}-{lines}.log"
        generate(path, lines, args.format)
        print(f"# {lines:,} lines, {path.stat().st_size / 2**20:.0f} MiB: {path}")
        runs: list[tuple[Run, Run]] = []
        pin_broker(dev, 1)
        try:
            for i in range(args.repeat):
                runs.append(measure(bootstrap, path, lines, args.profile))
                if args.repeat > 1:
                    report(lines, *runs[-1], label=f" [run {i + 1}]")
        finally:
            unpin_broker(dev)
        k, t = median_run([k for k, _ in runs]), median_run([t for _, t in runs])
        if args.repeat > 1:
            print(f"# medians of {args.repeat} runs")
        report(lines, k, t)
        results.append((lines, k, t))
    if args.scale:
        print("# cost against size (medians)")
        print(f"{'lines':>10}  {'tail lines/s':>12}  {'steady':>10}  {'per CPU-s':>10}  {'kcat lines/s':>12}  "
              f"{'ratio':>5}  {'peak RSS MiB':>12}")
        for lines, k, t in results:
            print(f"{lines:>10,}  {t.rate:>12,.0f}  {t.steady:>10,.0f}  {lines / max(t.cpu_s, 1e-9):>10,.0f}  "
                  f"{k.rate:>12,.0f}  {t.rate / k.rate:>5.2f}  {t.peak_rss:>12.0f}")
    if args.profile:
        import pstats

        pstats.Stats(str(WORK / "tail.prof")).sort_stats("tottime").print_stats(18)


if __name__ == "__main__":
    main()
