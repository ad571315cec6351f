"""Meter: config sync (Postgres -> meter.* topics) and the Faust workers that resolve keys, meter
usage and raise limit events. Talks to the other stages only through topics and tables."""
