"""Prometheus metrics of the sinks."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ROWS = Counter("meterstream_sink_rows_total", "Rows inserted (new rows only)", ["table"])
DUPLICATES = Counter("meterstream_sink_duplicates_total",
                     "Messages whose row was already there (a repeated record)", ["table"])
UNDECODABLE = Counter("meterstream_sink_undecodable_total",
                      "Messages that are not valid wire values (dead-lettered)", ["topic"])
DEAD_LETTERS = Counter("meterstream_sink_dead_letters_total",
                       "Messages sent to haproxy.logs.rejected instead of a table, by reason "
                       "(null_value, invalid_record, refused_by_postgres)", ["topic", "reason"])
ISOLATIONS = Counter("meterstream_sink_isolations_total",
                     "Batches Postgres refused, searched for the rows it refuses (which were dead-lettered)")
DEAD_LETTER_LATENCY = Histogram("meterstream_sink_dead_letter_latency_seconds",
                                "From sending a batch's dead letters to Kafka's acknowledgement")
DEAD_LETTER_FAILURES = Counter("meterstream_sink_dead_letter_failures_total", "Dead-letter sends retried")
BATCH_SECONDS = Histogram("meterstream_sink_batch_seconds", "One batch: staging COPY, insert and offsets",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
FAILURES = Counter("meterstream_sink_postgres_failures_total", "Batches retried because Postgres failed")
EVENT_TIME = Gauge("meterstream_sink_event_timestamp_seconds",
                   "Kafka timestamp (for haproxy.logs: the request's time) of the last message committed; time() "
                   "minus it is the lag in seconds of event time while the sink's lag is above 0",
                   ["topic", "partition"])
LAG = Gauge("meterstream_sink_lag_messages", "Messages between the sink's position and the end", ["topic", "partition"])

# -- vault ------------------------------------------------------------------------------------
VAULT_VERSIONS = Counter("meterstream_vault_versions_total", "Vault versions written (content changed)")
VAULT_BUILDS = Counter("meterstream_vault_builds_total", "Vault builds (notifications and periodic)")
VAULT_BUILD_SECONDS = Histogram("meterstream_vault_build_seconds", "Reading Postgres and building the vault")
VAULT_CUSTOMERS = Gauge("meterstream_vault_customers", "Customers in the vault, by status", ["status"])
VAULT_MAP_WRITES = Counter("meterstream_vault_map_writes_total", "HAProxy map files written (content changed)")
VAULT_RUNTIME_UPDATES = Counter("meterstream_vault_runtime_updates_total",
                                "Maps replaced live through a Runtime API socket", ["outcome"])
VAULT_UPDATES_PUBLISHED = Counter("meterstream_vault_updates_published_total",
                                  "Changed entries (and tombstones) published to vault.updates")
VAULT_PRODUCE_LATENCY = Histogram("meterstream_vault_produce_latency_seconds",
                                  "From sending vault.updates to Kafka's acknowledgement")
VAULT_PRODUCE_FAILURES = Counter("meterstream_vault_produce_failures_total", "vault.updates sends retried")
VAULT_FAILURES = Counter("meterstream_vault_postgres_failures_total", "Postgres errors (retried with backoff)")
VAULT_INVALID_ROWS = Gauge("meterstream_vault_invalid_rows",
                           "Rows left out of the last build because they make no valid entry (logged with their "
                           "table and key)", ["table"])
VAULT_INVALID_NOTIFICATIONS = Counter("meterstream_vault_invalid_notifications_total",
                                      "Notifications whose payload is not one of ours (ignored)", ["channel"])
VAULT_LAST_BUILD = Gauge("meterstream_vault_last_build_timestamp_seconds",
                         "When the last build completed: the map, the version and vault.updates confirmed or "
                         "brought up to date")
VAULT_VERSION = Gauge("meterstream_vault_version", "The latest vault version (vault_versions)")
VAULT_VERSION_TIME = Gauge("meterstream_vault_version_timestamp_seconds",
                           "When the latest vault version was written (vault_versions.created_at)")
VAULT_MAP_WRITE_TIME = Gauge("meterstream_vault_map_write_timestamp_seconds",
                             "When this process last wrote the HAProxy map file (its content changed)")
VAULT_DEAD_LETTERS = Counter("meterstream_vault_dead_letters_total",
                             "vault.updates messages whose key names no customer: dead-lettered and tombstoned")
for _outcome in ("ok", "failed"):
    VAULT_RUNTIME_UPDATES.labels(_outcome)
for _table in ("service_instances", "seal_keys", "customers"):
    VAULT_INVALID_ROWS.labels(_table).set(0)
