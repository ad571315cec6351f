"""The closed loop with every real part: HAProxy running deploy/haproxy/haproxy.cfg
logs to a file; `meterstream tail` sends its lines to Kafka; `meterstream worker` meters them;
`meterstream sink-postgres` records the limit events; `meterstream vault` turns them into
HAProxy's map through the Runtime API; `meterstream sync-config` brings Postgres changes to
the worker. A customer at its spend cap is refused (403) within 5 s while another keeps
getting 200; raising the cap lets it back in; a customer over its rate gets 429 while
throttled and 200 once it has cleared. The loop itself is meterstream/dev/closed_loop.py, which
the end-to-end benchmark runs too."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import pytest

from meterstream.dev.closed_loop import ACME, ACME_KEY, INITECH, INITECH_KEY, ClosedLoop
from tests.conftest import Services

pytestmark = [pytest.mark.services, pytest.mark.slow]


async def test_closed_loop_through_haproxy(services: Services, pg_dsn: str, pg: asyncpg.Connection,
                                           tmp_path: Path) -> None:
    async with ClosedLoop(services.kafka_bootstrap, pg, pg_dsn, tmp_path) as loop:
        proxy, procs = loop.proxy, loop.procs

        # -- spend: the 100th billable request reaches the cap; 403 follows within 5 s --------
        breach_to_403 = await loop.breach(within_s=5.0)  # each of the 100 requests got 200
        print(f"breach -> first 403: {breach_to_403:.2f} s")
        assert breach_to_403 <= 5.0
        assert loop.bystander and loop.bystander[-1] == 200

        # -- raising the cap in Postgres lets the customer back in ---------------------------
        await pg.execute("UPDATE customers SET spend_cap_cents = 20000 WHERE customer_id = $1", ACME)
        await loop.until(ACME_KEY, 200, 20.0, every=0.2)

        # -- rate: over 5 rps for more than 3 s -> 429 while throttled, 200 once cleared ---------
        started = time.monotonic()
        throttled = False
        while time.monotonic() - started < 20 and not throttled:
            throttled = await loop.status(INITECH_KEY) == 429
            await asyncio.sleep(0.02)  # ~40 requests a second
        assert throttled, "no 429 after 20 s at ~8x the rate"
        assert await loop.status(INITECH_KEY) == 429
        # its client keeps retrying at ~8x the rate: HAProxy refuses those (429), they are not
        # served, so the breach clears (5 s here) while it retries (docs/metering.md), and the
        # customer is served again; served over the rate once more, it is throttled once more
        answers: list[int] = []
        started = time.monotonic()
        while time.monotonic() - started < 40 and not (200 in answers and answers[-1] == 429):
            answers.append(await loop.status(INITECH_KEY))
            await asyncio.sleep(0.02)
        assert 200 in answers, "never cleared while its client kept retrying"
        assert answers[-1] == 429, "not throttled again when served over the rate"
        await loop.until(INITECH_KEY, 200, 30.0, every=0.5)  # 2 requests a second: under the rate

        await loop.stop_bystander()
        assert set(loop.bystander) == {200}, "the bystander was refused"
        events = {r["kind"] for r in await pg.fetch("SELECT kind FROM limit_events WHERE customer_id IN ($1, $2)",
                                                    ACME, INITECH)}
        assert {"spend_warning", "spend_cap_reached", "spend_cleared", "rate_exceeded", "rate_cleared"} <= events
        assert proxy is not None and proxy.proc is not None and proxy.proc.poll() is None  # never reloaded
        for p in reversed(procs):
            assert p.terminate() == 0, p.args
