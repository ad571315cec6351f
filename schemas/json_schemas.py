"""JSON Schemas of the topic values, for consumers outside this code base
(`meterstream schemas export DIR`; docs/wire.md links the exported files in docs/schemas/).

One schema per topic, from the topic's pydantic model as it writes values (serialization
mode): unknown fields are refused (``additionalProperties: false``), as the models refuse them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from meterstream.schemas.topics import TOPICS

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def file_name(topic: str) -> str:
    return f"{topic}.schema.json"


def topic_schema(topic: str) -> dict[str, Any]:
    spec = TOPICS[topic]
    schema = spec.value.model_json_schema(mode="serialization")
    about = f"The value of a message on the Kafka topic {topic} (key: {spec.key})."
    if spec.compacted:
        about += " The topic is compacted: a message without a value (a tombstone) deletes its key."
    model_doc = schema.pop("description", "")
    return {"$schema": DIALECT, "$id": file_name(topic), "title": f"{topic}: {schema.pop('title')}",
            "description": f"{about} {model_doc}".strip(), **schema}


def render(topic: str) -> str:
    return json.dumps(topic_schema(topic), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def export(directory: Path) -> list[Path]:
    """Writes one schema per topic into ``directory`` (created if need be); returns the files."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for topic in TOPICS:
        path = directory / file_name(topic)
        path.write_text(render(topic))
        written.append(path)
    return written
