"""Running a long-lived process: HTTP endpoint, SIGTERM/SIGINT, clean stop, exit code."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable

from meterstream import http, logs
from meterstream.kafka_access import EXIT_REFUSED, check_or_exit
from meterstream.pg import PostgresAccessError
from meterstream.settings import Settings

log = logs.get(__name__)
UNHEALTHY_AFTER_S = 60.0


class FailureClock:
    """Since when a component's dependency (Kafka, Postgres) has been failing; /healthz turns
    503 once that lasts UNHEALTHY_AFTER_S."""

    def __init__(self) -> None:
        self.since: float | None = None

    def failed(self) -> None:
        self.since = self.since or time.monotonic()

    def recovered(self) -> None:
        self.since = None

    def seconds(self) -> float:
        return 0.0 if self.since is None else time.monotonic() - self.since

    def healthy(self) -> bool:
        return self.seconds() < UNHEALTHY_AFTER_S


async def serve(component: str, settings: Settings, run: Callable[[], Awaitable[None]],
                request_stop: Callable[[], None], health: http.HealthCheck) -> None:
    """Runs ``run()`` with /metrics and /healthz up; SIGTERM or SIGINT call ``request_stop``
    (the component flushes, commits and returns) and the process exits 0. Kafka or Postgres
    refusing the process's TLS or login ends it with exit code 2 and a clear error: at start
    for Kafka (meterstream.kafka_access), at the first connection for Postgres."""
    await check_or_exit(settings.kafka, component)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, component, sig, request_stop)
    endpoint = await http.start(settings.http, health, component)
    try:
        log.info("started", component=component, http_port=endpoint.port)
        await run()
    except PostgresAccessError as exc:
        log.error("postgres refuses this process; exiting", component=component, error=str(exc))
        raise SystemExit(EXIT_REFUSED) from None
    finally:
        await endpoint.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        log.info("stopped", component=component)


def _on_signal(component: str, sig: signal.Signals, request_stop: Callable[[], None]) -> None:
    log.info("signal received, stopping", component=component, signal=sig.name)
    request_stop()
