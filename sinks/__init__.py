"""Sinks: Postgres persistence of logs, usage and limit events, and the vault publisher.
Talks to the other stages only through topics and tables."""
