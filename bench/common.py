"""What the benchmarks alone need: CPU pinning, CPU time and memory of a process, fast
producing. Services, topics, databases and processes come from the dev harness
(meterstream/dev, docs/dev-services.md)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterable
from pathlib import Path

from aiokafka import AIOKafkaProducer

from meterstream.dev import databases, topics
from meterstream.dev.services import DevServices
from meterstream.dev.services.system import ensure_debian, read_pid
from meterstream.kafka_clients import client_kwargs
from meterstream.settings import KafkaSettings

ROOT = Path(__file__).resolve().parent.parent
WORK = Path(os.environ.get("MS_BENCH_DIR", "/tmp/meterstream-bench"))


def kafka_kwargs(bootstrap: str) -> dict:
    """An aiokafka client's connection arguments for the benchmarks' broker (the dev broker's
    plaintext listener, as the references such as kcat use it), as every client gets them."""
    return client_kwargs(KafkaSettings(bootstrap=bootstrap))


def services() -> DevServices:
    dev = DevServices.default()
    for line in dev.up():
        print(f"# {line}")
    return dev


def need(tool: str, package: str) -> str:
    if shutil.which(tool) is None:
        ensure_debian(package)
    return shutil.which(tool) or tool


async def fresh_topics(bootstrap: str, *names: str, partitions: int = 4) -> list[str]:
    """Topics ``bench.<name>.<suffix>``, the suffix new for each call."""
    suffix = uuid.uuid4().hex[:8]
    return await topics.create_topics(KafkaSettings(bootstrap=bootstrap),
                                      [f"bench.{name}.{suffix}" for name in names], partitions)


async def create_topics(bootstrap: str, names: list[str], partitions: int = 4) -> list[str]:
    return await topics.create_topics(KafkaSettings(bootstrap=bootstrap), names, partitions)


async def delete_topics(bootstrap: str, names: list[str]) -> None:
    await topics.delete_topics(KafkaSettings(bootstrap=bootstrap), names)


def pin_broker(dev: DevServices, cpu: int) -> None:
    """Keep the broker off the core the measured process runs on (when we started it)."""
    pid = read_pid(dev.kafka.pidfile)
    if pid is not None and shutil.which("taskset"):
        subprocess.run(["taskset", "-a", "-p", "-c", str(cpu), str(pid)], capture_output=True)


def unpin_broker(dev: DevServices) -> None:
    pid = read_pid(dev.kafka.pidfile)
    if pid is not None and shutil.which("taskset"):
        subprocess.run(["taskset", "-a", "-p", "-c", f"0-{(os.cpu_count() or 1) - 1}", str(pid)], capture_output=True)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a running process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    """VmRSS: the resident set of a running process now."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib(pid: int) -> float:
    """VmHWM: the peak resident set of a running process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def produce_all(bootstrap: str, messages: Iterable[tuple[str, bytes | None, bytes]]) -> int:
    """Sends (topic, key, value) messages fast (acks=all), waiting for all; returns how many."""
    producer = AIOKafkaProducer(**kafka_kwargs(bootstrap), acks="all", linger_ms=20, max_batch_size=900_000)
    await producer.start()
    sent = 0
    try:
        pending = []
        for topic, key, value in messages:
            pending.append(await producer.send(topic, value, key=key))
            sent += 1
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent


async def fresh_db(admin_dsn: str) -> str:
    """A new, migrated database; returns its DSN."""
    return databases.dsn_of(admin_dsn, await databases.migrated_database(admin_dsn, prefix="bench"))


def run_async(coro):  # noqa: ANN001, ANN201
    return asyncio.run(coro)
