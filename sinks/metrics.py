"""Prometheus metrics of the sinks."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ROWS = Counter("meterstream_sink_rows_total", "Rows inserted (new rows only)", ["table"])
DUPLICATES = Counter("meterstream_sink_duplicates_total",
                     "Messages whose row was already there (a repeated record)", ["table"])
UNDECODABLE = Counter("meterstream_sink_undecodable_total",
                      "Messages that are not valid wire values (skipped, logged with their position)", ["topic"])
BATCH_SECONDS = Histogram("meterstream_sink_batch_seconds", "One batch: staging COPY, insert and offsets",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
FAILURES = Counter("meterstream_sink_postgres_failures_total", "Batches retried because Postgres failed")
LAG = Gauge("meterstream_sink_lag_messages", "Messages between the sink's position and the end", ["topic", "partition"])
