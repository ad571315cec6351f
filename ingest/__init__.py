"""Ingest: HAProxy log lines (files, syslog) -> LogRecords on haproxy.logs, dead letters on
haproxy.logs.rejected. Talks to the other stages only through topics (docs/layout.md)."""
