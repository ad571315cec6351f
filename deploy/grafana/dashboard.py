"""The Grafana dashboard of meterstream, built with grafanalib: the source of meterstream.json.

    python deploy/grafana/dashboard.py           # writes deploy/grafana/meterstream.json
    python deploy/grafana/dashboard.py --check   # exit 1 when meterstream.json is not its output

Queries read the metrics the processes export (docs/operations.md lists them), not the
recording rules, so the dashboard works against a Prometheus without meterstream.rules.yml.
``$__rate_interval`` is Grafana's; tests/test_grafana_dashboard.py gives every query to
``promtool check rules`` with it replaced by 5m.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafanalib._gen import DashboardEncoder
from grafanalib.core import (
    BYTES_PER_SEC_FORMAT,
    OPS_FORMAT,
    SECONDS_FORMAT,
    Dashboard,
    GridPos,
    Target,
    Template,
    Templating,
    Time,
    TimeSeries,
)

OUTPUT = Path(__file__).with_name("meterstream.json")
DATASOURCE = "${datasource}"
RATE = "$__rate_interval"
WIDTH, HEIGHT = 12, 8

# title -> (unit, [(query, legend)])
PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("Ingest: lines read per second", OPS_FORMAT, [
        (f"sum by (job, input) (rate(meterstream_ingest_lines_read_total[{RATE}]))", "{{job}} {{input}}"),
    ]),
    ("Ingest: bytes read per second", BYTES_PER_SEC_FORMAT, [
        (f"sum by (job, input) (rate(meterstream_ingest_bytes_read_total[{RATE}]))", "{{job}} {{input}}"),
    ]),
    ("Dead letters by reason (per second)", OPS_FORMAT, [
        (f"sum by (job, reason) (rate(meterstream_ingest_rejected_total[{RATE}]))", "{{job}} {{reason}}"),
        (f"sum by (job, reason) (rate(meterstream_worker_rejected_total[{RATE}]))", "{{job}} {{reason}}"),
        (f"sum by (job, reason) (rate(meterstream_sink_dead_letters_total[{RATE}]))", "{{job}} {{reason}}"),
        (f"sum by (job) (rate(meterstream_vault_dead_letters_total[{RATE}]))", "{{job}} invalid_key"),
    ]),
    ("Consumer lag per stage (records)", "short", [
        ("sum by (job, topic) (meterstream_worker_consumer_lag)", "{{job}} {{topic}}"),
        ("sum by (job, topic) (meterstream_sink_lag_messages)", "{{job}} {{topic}}"),
        ("sum by (job, instance) (meterstream_ingest_syslog_queue_lines)", "{{job}} queue"),
    ]),
    ("Consumer lag per stage (seconds of event time)", SECONDS_FORMAT, [
        ("max by (job, topic) ((time() - meterstream_worker_event_timestamp_seconds)"
         " and on (job, instance, topic, partition) (meterstream_worker_consumer_lag > 0))", "{{job}} {{topic}}"),
        ("max by (job, topic) ((time() - meterstream_sink_event_timestamp_seconds)"
         " and on (job, instance, topic, partition) (meterstream_sink_lag_messages > 0))", "{{job}} {{topic}}"),
    ]),
    ("Ingest: bytes of log not yet in Kafka", "bytes", [
        ("sum by (job, instance) (meterstream_ingest_behind_bytes)", "{{instance}}"),
    ]),
    ("Worker: records per second", OPS_FORMAT, [
        (f"sum by (stage, outcome) (rate(meterstream_worker_records_total[{RATE}]))", "{{stage}} {{outcome}}"),
    ]),
    ("Worker: batch time (p50, p99)", SECONDS_FORMAT, [
        (f"histogram_quantile(0.5, sum by (le, stage) (rate(meterstream_worker_batch_seconds_bucket[{RATE}])))",
         "p50 {{stage}}"),
        (f"histogram_quantile(0.99, sum by (le, stage) (rate(meterstream_worker_batch_seconds_bucket[{RATE}])))",
         "p99 {{stage}}"),
    ]),
    ("Request to applied (HAProxy's request time to the meter)", SECONDS_FORMAT, [
        (f"histogram_quantile(0.5, sum by (le) (rate(meterstream_worker_latency_seconds_bucket[{RATE}])))", "p50"),
        (f"histogram_quantile(0.99, sum by (le) (rate(meterstream_worker_latency_seconds_bucket[{RATE}])))", "p99"),
    ]),
    ("Limit events by kind (per minute)", "short", [
        (f"sum by (kind) (rate(meterstream_worker_limit_events_total[{RATE}])) * 60", "{{kind}}"),
    ]),
    ("Sink: rows inserted per second", OPS_FORMAT, [
        (f"sum by (table) (rate(meterstream_sink_rows_total[{RATE}]))", "{{table}}"),
        (f"sum by (table) (rate(meterstream_sink_duplicates_total[{RATE}]))", "{{table}} repeats"),
    ]),
    ("Vault: version, map and Runtime API updates", "short", [
        ("max(meterstream_vault_version)", "version"),
        (f"sum(increase(meterstream_vault_map_writes_total[{RATE}]))", "map writes"),
        (f"sum by (outcome) (increase(meterstream_vault_runtime_updates_total[{RATE}]))", "runtime API {{outcome}}"),
        ("sum by (status) (meterstream_vault_customers)", "customers {{status}}"),
    ]),
    ("Process health (1: up and healthy)", "short", [
        ('up{job=~"meterstream-.+"}', "scraped {{job}} {{instance}}"),
        ("meterstream_healthy", "healthy {{job}} {{instance}}"),
    ]),
    ("Checkpoint age", SECONDS_FORMAT, [
        ("meterstream_ingest_checkpoint_age_seconds", "{{job}} {{instance}}"),
        ("meterstream_worker_checkpoint_age_seconds", "{{job}} {{instance}}"),
    ]),
]


def queries() -> list[str]:
    """Every query of the dashboard, as written in it."""
    return [query for _, _, targets in PANELS for query, _ in targets]


def dashboard() -> Dashboard:
    panels = []
    for i, (title, unit, targets) in enumerate(PANELS):
        panels.append(TimeSeries(
            title=title, dataSource=DATASOURCE, unit=unit,
            gridPos=GridPos(h=HEIGHT, w=WIDTH, x=(i % 2) * WIDTH, y=(i // 2) * HEIGHT),
            targets=[Target(expr=query, legendFormat=legend, refId=chr(ord("A") + j), datasource=DATASOURCE)
                     for j, (query, legend) in enumerate(targets)],
        ))
    datasource = Template(name="datasource", label="Prometheus", query="prometheus", type="datasource",
                          default="Prometheus")
    return Dashboard(
        title="meterstream", uid="meterstream", tags=["meterstream"], timezone="utc",
        time=Time("now-6h", "now"), refresh="30s", panels=panels,
        templating=Templating(list=[datasource]),
    ).auto_panel_ids()


def render() -> str:
    return json.dumps(dashboard().to_json_data(), cls=DashboardEncoder, sort_keys=True, indent=2) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT} is not the output of {Path(__file__).name}: run it", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
