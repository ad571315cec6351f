"""End-to-end benchmark: the whole pipeline on this machine.

    python -m bench.e2e [--rates 1000,2000,4000,8000] [--step-s 20] [--breaches 5]

1. Sustained rate: HAProxy log lines (deploy/haproxy/haproxy.cfg's JSON format, the sample
   customers' keys, the customer HAProxy's map names) are appended to a file at a fixed rate
   while `meterstream tail`, `meterstream worker` and `meterstream sink-postgres` run; for
   each rate, the backlog (records on haproxy.logs not yet committed by the worker, and not
   yet stored by the sink) is sampled every second over the step. A rate is kept up with when
   neither backlog grows: the slope of each (least squares over the samples) stays within 1 %
   of the rate (or 20 records/s).
2. Breach to 403: the closed loop with a real HAProxy (meterstream/dev/closed_loop.py, which
   tests/test_closed_loop.py runs too), timed from the request that reaches the spend cap to
   HAProxy's first 403, several times, each on topics and a database of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import tempfile
import threading
import time
import uuid
from pathlib import Path

import asyncpg

from bench.common import WORK, fresh_db, services
from meterstream import settings as settings_mod
from meterstream.dev import sample
from meterstream.dev.closed_loop import ClosedLoop
from meterstream.dev.databases import drop_database, dsn_of, migrated_database
from meterstream.dev.endpoints import Services
from meterstream.dev.processes import Process
from meterstream.dev.topics import group_lag
from meterstream.kafka import delete_topics_with_prefix, end_offsets, ensure_topics
from meterstream.meter.config_sync import ConfigSync
from meterstream.schemas.apikeys import fingerprint_of_hash, key_hash

# the record's line, as deploy/haproxy/haproxy.cfg's log-format writes it
LINE = ('{{"ts":{ms},"request_id":"{rid}","client_ip":"192.0.2.7","api_key_fp":{fp},'
        '"service_type":1,"network":1,"server_id":17,"fe_type":2,"traffic_type":1,'
        '"event_type":0,"key_metadata":"S","status":200,"bytes_sent":1234,"path":"v1\\/fetch_k",'
        '"TR":0,"Tw":0,"Tc":1,"Tr":3,"Ta":5,"backend_id":3,"termination_state":"----",'
        '"config_hex":"00000000","customer_id":{cid}}}\n')


def writer(path: Path, rate: int, seconds: float, fps: list[tuple[int, int]], tag: str) -> int:
    """Appends ``rate`` lines a second for ``seconds``, in 20 slices a second."""
    n = 0
    started = time.monotonic()
    with open(path, "a", buffering=1 << 20) as out:
        while (elapsed := time.monotonic() - started) < seconds:
            due = int(rate * elapsed) - n
            if due > 0:
                ms = int(time.time() * 1000)
                out.write("".join(LINE.format(ms=ms, rid=f"{tag}-{n + i}", fp=fps[(n + i) % len(fps)][0],
                                              cid=fps[(n + i) % len(fps)][1]) for i in range(due)))
                out.flush()
                n += due
            time.sleep(0.05)
    return n


async def backlog(settings: settings_mod.Settings, dsn: str) -> tuple[int, int]:
    """(records on haproxy.logs the worker has not committed, records the sink has not stored)."""
    topic = settings.topic("haproxy.logs")
    ends = await end_offsets(settings, topic)
    worker = await group_lag(settings, f"{settings.kafka.topic_prefix}{settings.worker.app_id}", [topic])
    conn = await asyncpg.connect(dsn)
    try:
        stored = {r["partition"]: r["next_offset"] for r in await conn.fetch(
            "SELECT partition, next_offset FROM sink_offsets WHERE topic = $1", topic)}
    finally:
        await conn.close()
    return sum(worker.values()), sum(max(end - stored.get(p, 0), 0) for p, end in ends.items())


def slope(points: list[tuple[float, int]]) -> float:
    """Least-squares slope of (time, backlog) samples: records per second the backlog grows."""
    n = len(points)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in points) / n
    mb = sum(b for _, b in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (b - mb) for t, b in points) / var if var else 0.0


async def sustained(dev, rates: list[int], step_s: float) -> None:  # noqa: ANN001
    admin_dsn = dsn_of(dev.postgres.dsn, "postgres")
    dsn = await fresh_db(admin_dsn)
    name = dsn.rsplit("/", 1)[1]
    settings = settings_mod.load(None, kafka={"bootstrap": dev.kafka.bootstrap,
                                              "topic_prefix": f"bench.e{uuid.uuid4().hex[:6]}."},
                                 postgres={"dsn": dsn})
    conn = await asyncpg.connect(dsn)
    await sample.load(conn, settings)
    await conn.close()
    await ensure_topics(settings, partitions=4)
    await ConfigSync(settings).publish_once()
    assert settings.keys.key_secret_b64 is not None  # development mode: the built-in key
    secret = base64.b64decode(settings.keys.key_secret_b64.get_secret_value())
    keys = [("SacmeSealDemoKey00000000000000001", 184467441), ("SinitechSealDemoKey00000000000001", 1299827003)]
    fps = [(fingerprint_of_hash(key_hash(secret, k)), c) for k, c in keys]
    work = WORK / "e2e"
    work.mkdir(parents=True, exist_ok=True)
    log = work / f"haproxy-{name}.log"
    log.touch()
    env = {"MS_KAFKA__BOOTSTRAP": settings.kafka.bootstrap, "MS_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
           "MS_POSTGRES__DSN": dsn}
    procs = [Process(["tail", str(log), "--checkpoint", str(work / f"{name}.cp")], env, work / "tail.log"),
             Process(["worker"], env, work / "worker.log"),
             Process(["sink-postgres"], env, work / "sink.log")]
    try:
        for p in procs:
            p.start()
        await asyncio.sleep(12)  # the worker joins its group
        print(f"{'lines/s':>8} {'worker backlog start -> end (slope/s)':>38} "
              f"{'sink backlog start -> end (slope/s)':>36}  verdict")
        kept = 0
        for rate in rates:
            thread = threading.Thread(target=writer, args=(log, rate, step_s, fps, f"r{rate}"))
            thread.start()
            await asyncio.sleep(step_s * 0.2)  # the tail's first rounds
            samples: list[tuple[float, tuple[int, int]]] = []
            ends = time.monotonic() + step_s * 0.75
            while time.monotonic() < ends:
                samples.append((time.monotonic(), await backlog(settings, dsn)))
                await asyncio.sleep(1.0)
            thread.join()
            slopes = [slope([(t, b[i]) for t, b in samples]) for i in (0, 1)]
            growing = any(s > max(rate * 0.01, 20) for s in slopes)
            (w0, s0), (w1, s1) = samples[0][1], samples[-1][1]
            print(f"{rate:>8} {w0:>12} -> {w1:<10} ({slopes[0]:>+8.0f}) {s0:>12} -> {s1:<10} ({slopes[1]:>+8.0f})  "
                  f"{'falls behind' if growing else 'keeps up'}")
            if growing:
                break
            kept = rate
            for _ in range(60):  # drain before the next step
                if max(await backlog(settings, dsn)) == 0:
                    break
                await asyncio.sleep(1)
        print(f"sustained: the pipeline keeps up with {kept:,} requests/s (tail + worker + sink, one process each)")
    finally:
        for p in procs:
            if p.running():
                p.terminate()
        await delete_topics_with_prefix(settings)
        await drop_database(admin_dsn, name)


async def breach_to_403(services: Services, times: int) -> None:
    """The closed loop ``times`` times, each on a fresh database and topic prefix."""
    work = WORK / "e2e"
    work.mkdir(parents=True, exist_ok=True)
    latencies = []
    for _ in range(times):
        database = await migrated_database(services.pg_admin_dsn, prefix="bench_loop")
        dsn = services.dsn(database)
        conn = await asyncpg.connect(dsn)
        workdir = Path(tempfile.mkdtemp(prefix="loop-", dir=work))
        try:
            async with ClosedLoop(services.kafka_bootstrap, conn, dsn, workdir) as loop:
                latencies.append(await loop.breach())
                await loop.stop_bystander()
                for p in reversed(loop.procs):
                    p.terminate()
        except Exception:
            print(f"# the closed-loop run failed; its logs are in {workdir}")
            raise
        finally:
            await conn.close()
            await drop_database(services.pg_admin_dsn, database)
    latencies.sort()
    print(f"breach -> first 403 over {times} closed-loop runs: median {latencies[len(latencies) // 2]:.2f} s, "
          f"max {latencies[-1]:.2f} s (goal <= 5 s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="2000,5000,10000,20000,30000,40000")
    parser.add_argument("--step-s", type=float, default=20.0)
    parser.add_argument("--breaches", type=int, default=3)
    args = parser.parse_args()
    dev = services()
    asyncio.run(sustained(dev, [int(r) for r in args.rates.split(",")], args.step_s))
    asyncio.run(breach_to_403(Services.of(dev), args.breaches))


if __name__ == "__main__":
    main()
