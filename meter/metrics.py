"""Prometheus metrics of the meter processes (config sync and worker)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from meterstream.schemas.enums import LimitKind

SYNC_PUBLISHED = Counter("meterstream_sync_published_total",
                         "Config states published to the compacted topics", ["topic"])
SYNC_TOMBSTONES = Counter("meterstream_sync_tombstones_total",
                          "Tombstones published (deleted or revoked)", ["topic"])
SYNC_NOTIFICATIONS = Counter("meterstream_sync_notifications_total", "Change notifications received")
SYNC_HEALED = Counter("meterstream_sync_reconcile_healed_total",
                      "Differences a reconciliation pass found (missed notifications)")
SYNC_RECONCILE_SECONDS = Histogram("meterstream_sync_reconcile_seconds", "Duration of a full reconciliation")

# -- worker ---------------------------------------------------------------------------------
RECORDS = Counter("meterstream_worker_records_total",
                  "Records taken by a worker stage, by outcome (applied, repeat, rejected, forwarded, replayed)",
                  ["stage", "outcome"])
UNAUTHENTICATED = Counter("meterstream_worker_unauthenticated_total",
                          "Records counted under customer 0, by reason", ["reason"])
LIMIT_EVENTS = Counter("meterstream_worker_limit_events_total", "Limit events published, by kind", ["kind"])
EVENTS_SUPPRESSED = Counter("meterstream_worker_limit_events_suppressed_total",
                            "Limit events not published again because meter.breaches already holds their id")
USAGE_PUBLISHED = Counter("meterstream_worker_usage_windows_published_total", "UsageWindow messages published")
GAPS = Counter("meterstream_worker_gaps_total",
               "Gaps in the offsets the consumer delivered: sought back to the stored position, or accepted "
               "(no records exist in them)", ["stage", "action"])
REJECTED = Counter("meterstream_worker_rejected_total", "Records sent to the dead letters, by reason", ["reason"])
UNPUBLISHABLE = Counter("meterstream_worker_unpublishable_total",
                        "Messages Kafka refused for good (too large, invalid), dead-lettered, by topic", ["topic"])
INVALID_KEYS_UNTRACKED = Counter("meterstream_worker_invalid_keys_untracked_total",
                                 "Hits of unknown fingerprints not tracked for invalid_key events (past "
                                 "worker.invalid_keys_max per partition); their usage is still counted")
RATE_REGIONS_UNTRACKED = Counter("meterstream_worker_rate_regions_untracked_total",
                                 "Served requests of a region past the 16 tracked per customer and service: counted "
                                 "in usage, not rate-limited")
BAD_STATE = Counter("meterstream_worker_bad_state_total",
                    "Table values (changelog) that did not load and were taken as absent", ["table"])
EVENT_TIME = Gauge("meterstream_worker_event_timestamp_seconds",
                   "Kafka timestamp (for haproxy.logs: the request's time) of the last record a stage processed; "
                   "time() minus it is the lag in seconds of event time while the consumer lag is above 0",
                   ["topic", "partition"])
CHECKPOINT_AGE = Gauge("meterstream_worker_checkpoint_age_seconds",
                       "How long the oldest processed position not yet written to the positions table has waited "
                       "(0: all written)")
LAG = Gauge("meterstream_worker_consumer_lag", "Records between a partition's end and the worker's position",
            ["topic", "partition"])
TABLE_KEYS = Gauge("meterstream_worker_table_keys", "Keys held in a worker table", ["table"])
BATCH_SECONDS = Histogram("meterstream_worker_batch_seconds", "Processing time of one batch, publishing included",
                          ["stage"], buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
PRODUCE_LATENCY = Histogram("meterstream_worker_produce_latency_seconds",
                            "From sending a batch's messages to Kafka's acknowledgement",
                            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
PRODUCE_FAILURES = Counter("meterstream_worker_produce_failures_total",
                           "Sends that failed and were retried (broker away, timeouts)")
LATENCY = Histogram("meterstream_worker_latency_seconds",
                    "From a request's time (HAProxy) to its usage being applied by the meter",
                    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300))

for _kind in LimitKind:
    LIMIT_EVENTS.labels(_kind.value)
for _stage in ("meter", "forwarded"):
    for _action in ("sought", "accepted"):
        GAPS.labels(_stage, _action)
    for _outcome in ("applied", "repeat", "rejected", "forwarded", "replayed"):
        RECORDS.labels(_stage, _outcome)
