"""Prometheus metrics of the ingest processes (tailer and syslog receiver)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from meterstream.ingest.parser import REASONS

LINES_READ = Counter("meterstream_ingest_lines_read_total", "Lines read from files or syslog", ["input"])
RECORDS_PRODUCED = Counter("meterstream_ingest_records_produced_total",
                           "LogRecords acknowledged by Kafka on haproxy.logs")
REJECTED = Counter("meterstream_ingest_rejected_total",
                   "Lines sent to the dead-letter topic, by reason", ["reason"])
BEHIND = Gauge("meterstream_ingest_behind_bytes", "Bytes between the read position and the end of a file", ["path"])
PRODUCE_LATENCY = Histogram(
    "meterstream_ingest_produce_latency_seconds", "From sending a round to Kafka's acknowledgement",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PRODUCE_FAILURES = Counter("meterstream_ingest_produce_failures_total",
                           "Rounds that failed and were resent (broker away, timeouts)")
CHECKPOINT_AGE = Gauge("meterstream_ingest_checkpoint_age_seconds",
                       "How long lines acknowledged by Kafka have waited to be checkpointed (0: up to date)")
DROPPED = Counter("meterstream_ingest_syslog_dropped_total",
                  "UDP syslog datagrams dropped because the queue was full (UDP has no back-pressure)")

for reason in REASONS:
    REJECTED.labels(reason)  # export zeros, so rates and alerts work from the start
