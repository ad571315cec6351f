"""`meterstream schemas export DIR`: one JSON Schema per topic value; docs/schemas/ holds them,
linked from docs/wire.md (real messages are checked against them in tests/test_pipeline_run.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import jsonschema

from meterstream.dev.processes import meterstream_exe
from meterstream.schemas.json_schemas import export
from meterstream.schemas.topics import TOPICS
from tests.helpers import ROOT


def test_the_command_writes_one_schema_per_topic(tmp_path: Path) -> None:
    result = subprocess.run([meterstream_exe(), "schemas", "export", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"{t}.schema.json" for t in TOPICS)
    for topic, spec in TOPICS.items():
        schema = json.loads((tmp_path / "out" / f"{topic}.schema.json").read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["$id"] == f"{topic}.schema.json"
        assert schema["additionalProperties"] is False
        assert ("tombstone" in schema["description"]) == spec.compacted


def test_committed_schemas_are_the_export(tmp_path: Path) -> None:
    for path in export(tmp_path):
        assert (ROOT / "docs" / "schemas" / path.name).read_text() == path.read_text(), \
            f"docs/schemas/{path.name} is stale: meterstream schemas export docs/schemas"
    wire = (ROOT / "docs" / "wire.md").read_text()
    for topic in TOPICS:
        assert f"(schemas/{topic}.schema.json)" in wire, topic
