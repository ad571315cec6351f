"""Postgres connections (asyncpg) with retry and backoff while the server is unreachable."""

from __future__ import annotations

import asyncpg
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from meterstream import logs
from meterstream.pg_dsn import FORM, DsnError, check
from meterstream.settings import Settings

log = logs.get(__name__)

# Errors that mean "the server is not there (yet), or went away": retried; anything else
# (a constraint, a missing table) is a real error. Class 08 is connection exceptions, class 57
# operator intervention (admin shutdown when the server restarts, cannot connect now).
TRANSIENT: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError, asyncpg.TooManyConnectionsError,
)


async def connect(settings: Settings, *, dsn: str | None = None, give_up_after_s: float = 60.0) -> asyncpg.Connection:
    target = dsn or settings.postgres.dsn.get_secret_value()
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(TRANSIENT),
        wait=wait_exponential_jitter(initial=0.2, max=5.0),
        stop=stop_after_delay(give_up_after_s),
        reraise=True,
        before_sleep=lambda state: log.warning(
            "postgres unreachable, retrying", attempt=state.attempt_number,
            error=type(state.outcome.exception()).__name__,
        ),
    ):
        with attempt:
            return await _connect(target, settings.postgres.connect_timeout_s)
    raise AssertionError("unreachable")


async def _connect(dsn: str, timeout_s: float) -> asyncpg.Connection:
    """asyncpg.connect, whose errors about its arguments (a DSN it cannot parse) become
    DsnError: asyncpg quotes what it could not read, which can be part of a password."""
    check(dsn)
    try:
        return await asyncpg.connect(dsn, timeout=timeout_s)
    except (asyncpg.ClientConfigurationError, ValueError, TypeError, OverflowError) as exc:
        raise DsnError(f"postgres.dsn cannot be used: asyncpg refused it ({type(exc).__name__}; "
                       f"the form is {FORM})") from None
