"""Prometheus metrics of the ingest processes (tailer and syslog receiver)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from meterstream.ingest.parser import REASONS

LINES_READ = Counter("meterstream_ingest_lines_read_total", "Lines read from files or syslog", ["input"])
BYTES_READ = Counter("meterstream_ingest_bytes_read_total",
                     "Bytes of lines read (newlines included; a compressed file's bytes as decompressed)", ["input"])
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
# -- the syslog receiver (ingest/syslog_server.py) ---------------------------------------------
SYSLOG_DROPPED = Counter("meterstream_ingest_syslog_dropped_total",
                         "UDP syslog datagrams dropped unparsed, by reason: queue_full (the queue was full; "
                         "UDP has no back-pressure), not_allowed (sender outside syslog.allowed_networks)",
                         ["reason"])
SYSLOG_REFUSED = Counter("meterstream_ingest_syslog_connections_refused_total",
                         "TCP syslog connections closed unread at accept, by reason: not_allowed (peer outside "
                         "syslog.allowed_networks), too_many_connections (syslog.max_connections open)", ["reason"])
SYSLOG_CLOSED = Counter("meterstream_ingest_syslog_connections_closed_total",
                        "TCP syslog connections the receiver closed, by reason: idle_timeout "
                        "(nothing received for syslog.idle_timeout_s)", ["reason"])
SYSLOG_CONNECTIONS = Gauge("meterstream_ingest_syslog_connections", "Open TCP syslog connections")
SYSLOG_QUEUE_BYTES = Gauge("meterstream_ingest_syslog_queue_bytes",
                           "Bytes of received lines waiting to be sent (bounded by syslog.queue_bytes)")
SYSLOG_QUEUE_LINES = Gauge("meterstream_ingest_syslog_queue_lines",
                           "Received lines waiting to be sent (bounded by syslog.queue_lines)")
SYSLOG_UDP_SENDERS = Gauge("meterstream_ingest_syslog_udp_senders",
                           "UDP senders (address and port) tracked (bounded by syslog.udp_max_senders)")
SYSLOG_UDP_SENDERS_FORGOTTEN = Counter("meterstream_ingest_syslog_udp_senders_forgotten_total",
                                       "UDP senders no longer tracked, by reason: idle "
                                       "(silent for syslog.udp_sender_idle_s), limit (syslog.udp_max_senders "
                                       "reached: the least recently seen is forgotten)", ["reason"])

for _input in ("file", "syslog_udp", "syslog_tcp"):
    LINES_READ.labels(_input)
    BYTES_READ.labels(_input)
for reason in REASONS:
    REJECTED.labels(reason)  # export zeros, so rates and alerts work from the start
for reason in ("queue_full", "not_allowed"):
    SYSLOG_DROPPED.labels(reason)
for reason in ("not_allowed", "too_many_connections"):
    SYSLOG_REFUSED.labels(reason)
SYSLOG_CLOSED.labels("idle_timeout")
for reason in ("idle", "limit"):
    SYSLOG_UDP_SENDERS_FORGOTTEN.labels(reason)
