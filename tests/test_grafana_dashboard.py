"""deploy/grafana: meterstream.json is the output of its generator (deploy/grafana/dashboard.py,
grafanalib), and every query in it parses (promtool check rules on a rule file made of them)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import yaml

from meterstream.dev.processes import require
from tests.helpers import ROOT

GRAFANA = ROOT / "deploy" / "grafana"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("meterstream_dashboard", GRAFANA / "dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def committed_queries() -> list[str]:
    board = json.loads((GRAFANA / "meterstream.json").read_text())
    return [target["expr"] for panel in board["panels"] for target in panel["targets"]]


def test_committed_json_is_the_generators_output() -> None:
    assert (GRAFANA / "meterstream.json").read_text() == generator().render()


def test_generator_check_mode() -> None:
    result = subprocess.run([sys.executable, str(GRAFANA / "dashboard.py"), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_every_query_parses(tmp_path: Path) -> None:
    queries = committed_queries()
    assert queries == generator().queries()
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": q.replace("$__rate_interval", "5m")}
        for i, q in enumerate(queries)]}]}
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([require("promtool"), "check", "rules", str(path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(queries)} rules found" in result.stdout


def test_a_broken_query_fails_the_check(tmp_path: Path) -> None:
    path = tmp_path / "bad.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": [
        {"record": "dashboard:bad", "expr": "sum by (job (rate(x[5m]))"}]}]}))
    assert subprocess.run([require("promtool"), "check", "rules", str(path)], capture_output=True,
                          timeout=60).returncode != 0


def test_the_panels_an_operator_needs() -> None:
    titles = " | ".join(p["title"].lower() for p in json.loads((GRAFANA / "meterstream.json").read_text())["panels"])
    for needed in ("lines read", "bytes read", "dead letters by reason", "consumer lag", "worker: records",
                   "batch time", "request to applied", "limit events by kind", "sink: rows", "vault",
                   "process health"):
        assert needed in titles, needed
