"""Prometheus metrics of the meter processes."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

SYNC_PUBLISHED = Counter("meterstream_sync_published_total",
                         "Config states published to the compacted topics", ["topic"])
SYNC_TOMBSTONES = Counter("meterstream_sync_tombstones_total",
                          "Tombstones published (deleted or revoked)", ["topic"])
SYNC_NOTIFICATIONS = Counter("meterstream_sync_notifications_total", "Change notifications received")
SYNC_HEALED = Counter("meterstream_sync_reconcile_healed_total",
                      "Differences a reconciliation pass found (missed notifications)")
SYNC_RECONCILE_SECONDS = Histogram("meterstream_sync_reconcile_seconds", "Duration of a full reconciliation")
