"""The HTTP endpoint of every long-running process: Prometheus `/metrics` and `/healthz`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Gauge, generate_latest

from meterstream import logs
from meterstream.settings import HttpSettings

log = logs.get(__name__)

# returns (healthy, details); details must hold no secrets
HealthCheck = Callable[[], tuple[bool, dict[str, object]]]
HEALTHY = Gauge("meterstream_healthy", "1 when the process's /healthz would answer 200, else 0 (read at each scrape)",
                ["component"])


@dataclass
class HttpEndpoint:
    runner: web.AppRunner
    port: int

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start(settings: HttpSettings, health: HealthCheck, component: str) -> HttpEndpoint:
    async def metrics(_: web.Request) -> web.Response:
        HEALTHY.labels(component).set(1 if health()[0] else 0)
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        healthy, details = health()
        return web.json_response({"component": component, "healthy": healthy, **details},
                                 status=200 if healthy else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    server = site._server  # noqa: SLF001 - the bound port when 0 was asked
    assert isinstance(server, asyncio.Server)
    port = server.sockets[0].getsockname()[1]
    log.info("http endpoint listening", host=settings.host, port=port, paths=["/metrics", "/healthz"])
    return HttpEndpoint(runner, port)
