"""The Postgres connection URI (``postgres.dsn``), checked before asyncpg parses it.

asyncpg's own parser errors quote what they could not read, and with a password that holds an
unencoded ``@`` or ``:`` that is a fragment of the password (``invalid literal for int() with
base 10: 'ter2@db'``). ``problem()`` says what is wrong by naming the part of the URI (scheme,
user and password, a port, a query parameter it knows), never by quoting it, and
``meterstream.pg`` turns any error asyncpg still raises for its arguments into ``DsnError``,
which quotes nothing either.
"""

from __future__ import annotations

import urllib.parse

SCHEMES = frozenset({"postgresql", "postgres"})
# query parameters asyncpg reads itself, and the values it takes (None: any)
KNOWN: dict[str, frozenset[str] | None] = {
    "sslmode": frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}),
    "target_session_attrs": frozenset({"any", "primary", "standby", "read-write", "read-only", "prefer-standby"}),
    "gsslib": frozenset({"gssapi", "sspi"}),
    "ssl_min_protocol_version": frozenset({"TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"}),
    "ssl_max_protocol_version": frozenset({"TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"}),
    "sslnegotiation": frozenset({"postgres", "direct"}),
}
FORM = "postgresql://user:password@host:port/database?parameter=value"


class DsnError(ValueError):
    """postgres.dsn cannot be used; the message never holds any part of it."""


def problem(dsn: str) -> str | None:
    """What is wrong with ``dsn`` (naming the part, never quoting it), or None."""
    if not dsn.strip():
        return "empty"
    try:
        parts = urllib.parse.urlsplit(dsn)
    except ValueError:
        return f"not a URI of the form {FORM}"
    if parts.scheme not in SCHEMES:
        return f"the scheme must be postgresql:// (the form is {FORM})"
    if parts.netloc.count("@") > 1:
        return "the user name or password holds an '@': write it %40 (percent-encode the user name and password)"
    auth, _, hostspec = parts.netloc.rpartition("@")
    if "/" in auth or "?" in auth or "#" in auth:
        return "the user name or password holds '/', '?' or '#': percent-encode them (%2F, %3F, %23)"
    hosts = [h for h in hostspec.split(",") if h] if hostspec else []
    for host in hosts:
        if host.startswith("["):
            address, bracket, rest = host[1:].partition("]")
            if not bracket or not address or (rest and not rest.startswith(":")):
                return "a host between [ and ] is not an IPv6 address followed by :port or nothing"
            port = rest[1:] if rest else ""
        else:
            _, colon, port = host.partition(":")
            if colon and not port:
                return "a host is followed by ':' without a port"
        if port and not _is_port(port):
            return "a port is not a number 1-65535 (percent-encode a ':' in the password as %3A, an '@' as %40)"
    if parts.query:
        try:
            query = urllib.parse.parse_qs(parts.query, strict_parsing=True)
        except ValueError:
            return "the query (after '?') is not parameter=value pairs joined by '&'"
        for name, values in query.items():
            allowed = KNOWN.get(name)
            if allowed is not None and values[-1] not in allowed:
                return f"query parameter {name} must be one of {', '.join(sorted(allowed))}"
            if name == "port" and not all(_is_port(p) for p in values[-1].split(",")):
                return "query parameter port is not a number 1-65535"
    if parts.fragment:
        return "it holds a '#': percent-encode it (%23) in the user name or password"
    return None


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit() and 1 <= int(text) <= 65535


def check(dsn: str) -> None:
    """Raises DsnError naming what is wrong with ``dsn``."""
    found = problem(dsn)
    if found is not None:
        raise DsnError(f"not a usable PostgreSQL URI: {found}")
