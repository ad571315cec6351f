"""A minimal faust-streaming app for tests/test_faust_broker.py: an agent counting records
per key into a table (exactly_once), written to a JSON file every half second."""

import os
from pathlib import Path

import faust
import orjson

from meterstream import settings as settings_mod
from meterstream.kafka_clients import faust_credentials

app = faust.App(
    os.environ["PROBE_APP"], broker=f"kafka://{os.environ['PROBE_BOOTSTRAP']}", store="memory://",
    broker_credentials=faust_credentials(settings_mod.load(None).kafka),  # MS_KAFKA__*: TLS, SASL
    processing_guarantee="exactly_once", topic_partitions=2, web_enabled=False,
    datadir=os.environ["PROBE_DATADIR"],
)
source = app.topic(os.environ["PROBE_TOPIC"], key_serializer="raw", value_serializer="raw", partitions=2)
counts = app.Table("counts", default=int, partitions=2)


@app.agent(source)
async def count(stream):  # noqa: ANN001, ANN201
    async for key, _value in stream.items():
        counts[key.decode()] += 1


@app.timer(0.5)
async def report() -> None:
    out = Path(os.environ["PROBE_OUT"])
    out.with_suffix(".tmp").write_bytes(orjson.dumps(dict(counts.items())))
    out.with_suffix(".tmp").rename(out)
