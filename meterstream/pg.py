"""Postgres connections (asyncpg) with retry and backoff while the server is unreachable, and
TLS as the ``postgres`` settings say (sslmode, sslrootcert)."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any, Literal, TypeAlias, cast

import asyncpg
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from meterstream import devmode, logs
from meterstream.pg_dsn import FORM, DsnError, check
from meterstream.settings import PostgresSettings, Settings

log = logs.get(__name__)

# Errors that mean "the server is not there (yet), or went away": retried; anything else
# (a constraint, a missing table) is a real error. Class 08 is connection exceptions, class 57
# operator intervention (admin shutdown when the server restarts, cannot connect now).
TRANSIENT: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError, asyncpg.TooManyConnectionsError,
)

SslMode: TypeAlias = Literal["disable", "allow", "prefer"]
Row: TypeAlias = Mapping[str, Any] | asyncpg.Record
"""A row as asyncpg fetches it, or the same fields in a dict (e.g. from a notification)."""


class PostgresAccessError(Exception):
    """Postgres refuses this client for a reason retrying cannot mend: TLS (an untrusted or
    mismatched certificate, a server without TLS where sslmode requires it) or the login.
    Never retried; the message names settings, never a password or the DSN."""


def sslmode(postgres: PostgresSettings) -> str:
    """The sslmode in force: the configured one, else verify-full, or prefer in development."""
    if postgres.sslmode is not None:
        return postgres.sslmode
    return "prefer" if devmode.enabled() else "verify-full"


def ssl_argument(postgres: PostgresSettings) -> ssl.SSLContext | SslMode:
    """asyncpg's ``ssl`` argument for the sslmode in force (libpq's meanings):
    disable, allow and prefer are asyncpg's own (no certificate is checked); require encrypts
    (and checks the CA when sslrootcert is given, as libpq does); verify-ca checks the CA;
    verify-full checks the CA and the host name. The CAs are sslrootcert's, else the system's."""
    mode = sslmode(postgres)
    if mode in ("disable", "allow", "prefer"):
        return cast(SslMode, mode)
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=postgres.sslrootcert or None)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise PostgresAccessError(f"postgres.sslrootcert {postgres.sslrootcert}: {reason}") from None
    if mode != "verify-full":
        context.check_hostname = False
        if mode == "require" and not postgres.sslrootcert:
            context.verify_mode = ssl.CERT_NONE
    return context


def _refusal(exc: BaseException, mode: str) -> PostgresAccessError | None:
    """The error to stop on when ``exc`` is one that no retry mends; None when it may pass."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return PostgresAccessError(f"postgres: the server's certificate is not trusted (postgres.sslrootcert) or "
                                   f"does not name the host (sslmode {mode}): {exc.verify_message}")
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or type(exc).__name__
        return PostgresAccessError(f"postgres: TLS handshake failed (sslmode {mode}): {reason}")
    if isinstance(exc, ConnectionError) and "rejected SSL upgrade" in str(exc):
        return PostgresAccessError(f"postgres: the server does not offer TLS, and postgres.sslmode is {mode}")
    if isinstance(exc, asyncpg.exceptions.InvalidAuthorizationSpecificationError):
        return PostgresAccessError(f"postgres: login refused: {exc}")  # the server's words: no password
    return None


async def connect(settings: Settings, *, dsn: str | None = None, give_up_after_s: float = 60.0) -> asyncpg.Connection:
    target = dsn or settings.postgres.dsn.get_secret_value()
    tls = ssl_argument(settings.postgres)
    mode = sslmode(settings.postgres)
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(TRANSIENT),
        wait=wait_exponential_jitter(multiplier=0.2, max=5.0),
        stop=stop_after_delay(give_up_after_s),
        reraise=True,
        before_sleep=lambda state: log.warning(
            "postgres unreachable, retrying", attempt=state.attempt_number,
            error=type(state.outcome.exception()).__name__ if state.outcome else None,
        ),
    ):
        with attempt:
            return await _connect(target, settings.postgres.connect_timeout_s, tls, mode)
    raise AssertionError("unreachable")


async def _connect(dsn: str, timeout_s: float, tls: ssl.SSLContext | SslMode, mode: str) -> asyncpg.Connection:
    """asyncpg.connect, whose errors about its arguments (a DSN it cannot parse) become
    DsnError (asyncpg quotes what it could not read, which can be part of a password), and
    whose refusals no retry mends (TLS, the login) PostgresAccessError."""
    check(dsn)
    try:
        return await asyncpg.connect(dsn, timeout=timeout_s, ssl=tls)
    except Exception as exc:
        refused = _refusal(exc, mode)  # first: a certificate error is also a ValueError
        if refused is not None:
            raise refused from None
        if isinstance(exc, asyncpg.ClientConfigurationError | ValueError | TypeError | OverflowError):
            raise DsnError(f"postgres.dsn cannot be used: asyncpg refused it ({type(exc).__name__}; "
                           f"the form is {FORM})") from None
        raise
