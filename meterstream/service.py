"""Running a long-lived process: HTTP endpoint, SIGTERM/SIGINT, clean stop, exit code."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

from meterstream import http, logs
from meterstream.settings import Settings

log = logs.get(__name__)


async def serve(component: str, settings: Settings, run: Callable[[], Awaitable[None]],
                request_stop: Callable[[], None], health: http.HealthCheck) -> None:
    """Runs ``run()`` with /metrics and /healthz up; SIGTERM or SIGINT call ``request_stop``
    (the component flushes, commits and returns) and the process exits 0."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, component, sig, request_stop)
    endpoint = await http.start(settings.http, health, component)
    try:
        log.info("started", component=component, http_port=endpoint.port)
        await run()
    finally:
        await endpoint.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        log.info("stopped", component=component)


def _on_signal(component: str, sig: signal.Signals, request_stop: Callable[[], None]) -> None:
    log.info("signal received, stopping", component=component, signal=sig.name)
    request_stop()
