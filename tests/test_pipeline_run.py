"""One run of the whole pipeline against the dev services, every process a real `meterstream`
process (sync-config, tail, syslog, worker, sink-postgres, vault) over the sample customers
and log, and what operators and topic consumers rely on, checked on it:

- `promtool check metrics` on every process's live /metrics;
- every metric that deploy/prometheus's rules and deploy/grafana's dashboard name is exported
  by a running process;
- every message on every topic is valid against the JSON Schema `meterstream schemas export`
  writes for its topic (the `jsonschema` library).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import jsonschema
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from meterstream import settings as settings_mod
from meterstream.dev import sample
from meterstream.dev.databases import create_database, drop_database
from meterstream.dev.processes import Process, free_port, meterstream_exe, require, wait_for
from meterstream.kafka import delete_topics_with_prefix, ensure_topics, read_to_end
from meterstream.schemas.topics import TOPICS
from meterstream.settings import Settings
from tests.conftest import Services, unique
from tests.helpers import ROOT

pytestmark = [pytest.mark.services]

PROCESSES = ("sync-config", "tail", "syslog", "worker", "sink-postgres", "vault")
VAULT_KEY = base64.b64encode(b"k" * 32).decode()


@dataclass
class Run:
    settings: Settings
    workdir: Path
    metrics: dict[str, str] = field(default_factory=dict)  # process -> its /metrics text


@pytest.fixture(scope="module")
async def run(services: Services, pg_template: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Run]:
    workdir = tmp_path_factory.mktemp("pipeline")
    settings = settings_mod.load(None, kafka={"bootstrap": services.kafka_bootstrap,
                                              "topic_prefix": unique("run") + "."})
    await ensure_topics(settings, partitions=2)
    database = await create_database(services.pg_admin_dsn, pg_template)
    dsn = services.dsn(database)
    conn = await asyncpg.connect(dsn)
    procs: list[Process] = []
    try:
        await sample.load(conn, settings)
        log = workdir / "haproxy.log"
        sample.write_sample_log(log, settings)
        lines = len(log.read_text().splitlines())
        env = {"MS_KAFKA__BOOTSTRAP": settings.kafka.bootstrap, "MS_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
               "MS_POSTGRES__DSN": dsn, "MS_VAULT__DIRECTORY": str(workdir / "vault"), "MS_VAULT__KEY_B64": VAULT_KEY}
        syslog_port = free_port()
        args = {
            "sync-config": ["sync-config"],
            "tail": ["tail", str(log), "--checkpoint", str(workdir / "tail.checkpoint")],
            "syslog": ["syslog", "--udp", f"127.0.0.1:{syslog_port}", "--tcp", f"127.0.0.1:{syslog_port}"],
            "worker": ["worker"],
            "sink-postgres": ["sink-postgres"],
            "vault": ["vault"],
        }
        by_name = {name: Process(args[name], env, workdir / f"{name}.log").start() for name in PROCESSES}
        procs = list(by_name.values())

        async def count(sql: str) -> int:
            return int(await conn.fetchval(sql))

        async def settled() -> bool:  # every line stored, usage and limit events metered, the vault built
            return (await count("SELECT count(*) FROM haproxy_raw_logs") >= lines - 2
                    and await count("SELECT count(*) FROM usage_records") > 0
                    and await count("SELECT count(*) FROM limit_events") > 0
                    and await count("SELECT count(*) FROM vault_versions") > 0)

        for _ in range(900):
            if await settled():
                break
            for name, p in by_name.items():
                assert p.running(), f"{name} exited: {(workdir / f'{name}.log').read_text()[-3000:]}"
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("the pipeline did not settle within 180 s")
        await asyncio.to_thread(wait_for, lambda: by_name["worker"].get("/healthz")[0] == 200, 60, "worker healthy")
        result = Run(settings, workdir)
        for name, p in by_name.items():
            result.metrics[name] = (await asyncio.to_thread(p.get, "/metrics"))[1].decode()
        yield result
        for name, p in by_name.items():
            assert p.terminate() == 0, name
    finally:
        for p in procs:
            if p.running():
                p.kill9()
        await conn.close()
        await drop_database(services.pg_admin_dsn, database)
        await delete_topics_with_prefix(settings)  # the worker's changelogs too


# -- Prometheus ---------------------------------------------------------------------------------
@pytest.mark.parametrize("process", PROCESSES)
async def test_promtool_check_metrics(run: Run, process: str) -> None:
    """The exposition of every process passes promtool's lint (names, units, types, help)."""
    result = subprocess.run([require("promtool"), "check", "metrics"], input=run.metrics[process],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == "", result.stdout + result.stderr


def exported_names(text: str) -> set[str]:
    """Every series name an exposition offers, samples or not (a labelled counter with no
    child yet still declares its family): the family, and its suffixed names by type."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("_sum", "_count", "_created"), "gauge": (), "info": ("_info",)}
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + s for s in suffixes.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


# words of PromQL that are not series names
PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                "offset", "inf", "nan"}


def series_names(expr: str) -> set[str]:
    """The series a PromQL expression selects (recording rules' own names included)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings: label values, label_replace's arguments
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word, rest = match.group(0), text[match.end():]
        if word.lower() in PROMQL_WORDS or rest.lstrip().startswith("("):
            continue  # a keyword, or a function or aggregation
        if re.fullmatch(r"\d+[smhdwy]?", word) or (match.start() > 0 and text[match.start() - 1].isdigit()):
            continue
        names.add(word)
    return names


def test_series_names_reads_promql() -> None:
    expr = ('sum by (job, reason) (rate(meterstream_ingest_rejected_total{reason!="x"}[5m])) '
            'or label_replace(sum by (job) (rate(b_total[5m])), "reason", "invalid_key", "", "") '
            '/ on (job) group_left (x) histogram_quantile(0.99, sum by (le) (rate(c_bucket[$__rate_interval]))) '
            '> 100 * 1024 and time() - d_seconds > 1e3 and up{job=~"m-.+"} == 0 and meterstream:rec')
    assert series_names(expr) == {"meterstream_ingest_rejected_total", "b_total", "c_bucket", "d_seconds", "up",
                                  "meterstream:rec"}


def names_rules_and_dashboard_use() -> dict[str, set[str]]:
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "meterstream.rules.yml").read_text())
    used: dict[str, set[str]] = {}
    recorded = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            recorded.add(rule.get("record"))
            for name in series_names(rule["expr"]):
                used.setdefault(name, set()).add(rule.get("record") or rule["alert"])
    board = json.loads((ROOT / "deploy" / "grafana" / "meterstream.json").read_text())
    for panel in board["panels"]:
        for target in panel["targets"]:
            for name in series_names(target["expr"]):
                used.setdefault(name, set()).add(f"dashboard: {panel['title']}")
    return {name: where for name, where in used.items() if name not in recorded and name != "up"}


def test_every_metric_the_rules_and_dashboard_name_is_exported(run: Run) -> None:
    used = names_rules_and_dashboard_use()
    assert len(used) > 30
    exported = set().union(*(exported_names(text) for text in run.metrics.values()))
    missing = {name: sorted(where) for name, where in used.items() if name not in exported}
    assert missing == {}, "named by a rule or the dashboard, exported by no process"


def test_each_process_reports_its_health(run: Run) -> None:
    for process, text in run.metrics.items():
        assert re.search(rf'^meterstream_healthy\{{component="{process}"\}} 1\.0$', text, re.M), process


def test_the_added_metrics_carry_values(run: Run) -> None:
    """The metrics the rules needed and no process had: event time per stage, the worker's
    checkpoint age, the vault's build and version times, bytes read."""
    worker, sink, vault, tail = (run.metrics[p] for p in ("worker", "sink-postgres", "vault", "tail"))
    stamps = [float(v) for v in re.findall(r"^meterstream_worker_event_timestamp_seconds\{.*\} (\S+)$", worker, re.M)]
    assert stamps and min(stamps) > sample.SAMPLE_START_MS / 1000 - 1  # the sample's request times
    assert re.search(r"^meterstream_sink_event_timestamp_seconds\{.*\} \S+$", sink, re.M)
    assert re.search(r"^meterstream_worker_checkpoint_age_seconds \S+$", worker, re.M)
    for name in ("meterstream_vault_last_build_timestamp_seconds", "meterstream_vault_version_timestamp_seconds"):
        value = float(re.search(rf"^{name} (\S+)$", vault, re.M).group(1))
        assert value > 1_700_000_000, name
    assert float(re.search(r"^meterstream_vault_version (\S+)$", vault, re.M).group(1)) >= 1
    read = float(re.search(r'^meterstream_ingest_bytes_read_total\{input="file"\} (\S+)$', tail, re.M).group(1))
    assert read == (run.workdir / "haproxy.log").stat().st_size


# -- JSON Schemas of the topics -------------------------------------------------------------------
async def test_topic_messages_are_valid_against_the_exported_schemas(run: Run, tmp_path: Path) -> None:
    out = tmp_path / "schemas"
    result = subprocess.run([meterstream_exe(), "schemas", "export", str(out)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{t}.schema.json" for t in TOPICS)
    checked: dict[str, int] = {}
    for topic in TOPICS:
        schema = json.loads((out / f"{topic}.schema.json").read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
        values = [v for _, v in await read_to_end(run.settings, run.settings.topic(topic)) if v is not None]
        for value in values:
            errors = [e.message for e in validator.iter_errors(json.loads(value))]
            assert errors == [], (topic, value[:300])
        checked[topic] = len(values)
    assert all(checked.values()), f"a topic had no message to check: {checked}"
    # and the schema refuses what the models refuse: an unknown field, a wrong type
    schema = json.loads((out / "meter.usage.schema.json").read_text())
    usage = json.loads(next(v for _, v in await read_to_end(run.settings, run.settings.topic("meter.usage"))
                            if v is not None))
    validator = jsonschema.Draft202012Validator(schema)
    assert not validator.is_valid({**usage, "surprise": 1})
    assert not validator.is_valid({**usage, "requests": "12"})

