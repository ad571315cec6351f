"""faust-streaming against the project's Kafka broker (docs/dev-services.md: a 4.x broker
must give faust what it needs): an agent, a table, exactly_once, and recovery from the changelog."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from meterstream import settings as settings_mod
from meterstream.dev.processes import wait_for
from meterstream.kafka import delete_topics_with_prefix
from meterstream.kafka_clients import client_kwargs
from tests.conftest import Services
from tests.helpers import ROOT

pytestmark = pytest.mark.services


def worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "faust", "-A", "tests.faust_probe_app", "worker",
                                 "-l", "warn"], cwd=ROOT, env={**os.environ, **env}, stdout=out,
                                stderr=subprocess.STDOUT)


def counts(path: Path) -> dict:
    try:
        return orjson.loads(path.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return {}


async def test_agent_table_exactly_once_and_recovery(
    services: Services, new_topic, tmp_path: Path  # noqa: ANN001
) -> None:
    topic = await new_topic("faust_src", partitions=2)
    producer = AIOKafkaProducer(**client_kwargs(services.kafka))
    await producer.start()
    try:
        for i in range(30):
            await producer.send_and_wait(topic, b"x", key=b"k%d" % (i % 3))
    finally:
        await producer.stop()
    out = tmp_path / "counts.json"
    app = f"probe-{uuid.uuid4().hex[:8]}"
    env = {"PROBE_APP": app, "PROBE_BOOTSTRAP": services.kafka_bootstrap,
           "PROBE_TOPIC": topic, "PROBE_OUT": str(out), "PROBE_DATADIR": str(tmp_path / "data")}
    proc = worker(env, tmp_path / "worker.log")
    try:
        wait_for(lambda: counts(out) == {"k0": 10, "k1": 10, "k2": 10}, 90, "the agent's counts")
    finally:
        proc.terminate()
        assert proc.wait(60) == 0
    out.unlink()
    # a new process rebuilds the table from its changelog and does not count again
    proc = worker(env, tmp_path / "worker.log")
    try:
        wait_for(lambda: counts(out) == {"k0": 10, "k1": 10, "k2": 10}, 90, "the recovered table")
        time.sleep(3)  # recovered, and the records are not processed a second time
        assert counts(out) == {"k0": 10, "k1": 10, "k2": 10}
    finally:
        proc.terminate()
        proc.wait(60)
        # the app's own topics (its changelog, its assignor's): named after the app
        await delete_topics_with_prefix(settings_mod.load(None, kafka={**services.kafka.model_dump(),
                                                                        "topic_prefix": f"{app}-"}))
