"""What the captured request headers of an httplog line hold, per frontend (the setting
``parse.request_captures``, docs/ingest.md).

HAProxy logs a frontend's `capture request header` values in declaration order, `|`-separated,
in `{%hrl}`; only the configuration knows which header each one is. A layout names them: a name
that is a LogRecord field fills that field, any other name (`host`, `user_agent`, ...) is read
and ignored. Layouts are checked and compiled once; reading one line's captures is a split.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meterstream.ingest.parse_fields import ABSENT, fingerprint
from meterstream.schemas.records import LogRecord
from meterstream.settings import DEFAULT_REQUEST_CAPTURES

SETTING = "parse.request_captures"
OTHER_FRONTENDS = "*"
# the LogRecord fields the httplog line carries by itself (parse_httplog.py fills them)
LINE_FIELDS = frozenset({"ts", "client_ip", "status", "bytes_sent", "path", "TR", "Tw", "Tc", "Tr", "Ta",
                         "termination_state"})
_NOT_CAPTURED = {
    "v": "the schema version is not a log field",
    "src": "the source position is the tailer's, not HAProxy's",
    # Without HAProxy's own id the id is derived from the line's position; a header a
    # client sends could repeat an id, and repeats are dropped downstream as duplicates
    "request_id": "an httplog line's request_id is derived from its position, so that no header a "
                  "client sends can make two requests one",
    **{name: "the httplog line carries it itself" for name in LINE_FIELDS},
}
# every other field of the model can come from a capture (a field added to LogRecord too)
CAPTURABLE = frozenset(LogRecord.model_fields) - frozenset(_NOT_CAPTURED)
_NAME = re.compile(r"[A-Za-z0-9_.-]++")


class CaptureMismatch(ValueError):
    """The captures of a line do not fit its frontend's layout."""


@dataclass(frozen=True, slots=True)
class Layout:
    frontend: str  # as configured: a frontend name or "*"
    names: tuple[str, ...]
    slots: tuple[tuple[int, str], ...]  # (position, field) of the names that are fields

    def where(self, position: int) -> str:
        return f"captured request header {position + 1} of {len(self.names)}, {SETTING}[{self.frontend!r}]"

    def position(self, field: str) -> int | None:
        return next((i for i, name in self.slots if name == field), None)

    def read(self, captured: str) -> dict[str, Any]:
        """The fields of one line's `{%hrl}` content; absent values ("" or "-") are left out."""
        values = captured.split("|", len(self.names))
        if len(values) > len(self.names):
            raise CaptureMismatch(
                f"more captured request headers than the {len(self.names)} that {SETTING}"
                f"[{self.frontend!r}] names ({', '.join(self.names) or 'none'})")
        fields: dict[str, Any] = {}
        for position, field in self.slots:
            if position < len(values) and values[position] not in ABSENT:
                value = values[position]
                fields[field] = fingerprint(value, self.where(position)) if field == "api_key_fp" else value
        return fields


class CaptureLayouts:
    """The layouts of every configured frontend, and of the others ("*")."""

    def __init__(self, request_captures: Mapping[str, Sequence[str]]) -> None:
        checked = check(request_captures)
        self.layouts = {frontend: Layout(frontend, tuple(names),
                                         tuple((i, n) for i, n in enumerate(names) if n in CAPTURABLE))
                        for frontend, names in checked.items()}
        self.others = self.layouts[OTHER_FRONTENDS]

    def of(self, frontend: str) -> Layout:
        """The layout of `%ft` as logged (an SSL frontend's name ends with '~')."""
        name = frontend[:-1] if frontend.endswith("~") else frontend
        return self.layouts.get(name, self.others)


def check(request_captures: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """The setting, checked (ValueError naming what is wrong), with "*" added when it is not
    configured (today's order, DEFAULT_REQUEST_CAPTURES)."""
    checked: dict[str, list[str]] = {}
    for frontend, names in request_captures.items():
        if frontend != OTHER_FRONTENDS:
            if not frontend or _NAME.fullmatch(frontend.removesuffix("~")) is None:
                raise ValueError(f"{SETTING}: {frontend!r} is not a frontend name (or '*')")
            if frontend.endswith("~"):
                raise ValueError(f"{SETTING}: write {frontend.removesuffix('~')!r} without the '~' "
                                 "HAProxy logs after an SSL frontend's name")
        if isinstance(names, str):
            raise ValueError(f"{SETTING}[{frontend!r}]: a list of names, not one string")
        for name in names:
            _check_name(frontend, name)
        duplicates = sorted({n for n in names if list(names).count(n) > 1})
        if duplicates:
            raise ValueError(f"{SETTING}[{frontend!r}]: {', '.join(duplicates)} named more than once")
        checked[frontend] = list(names)
    checked.setdefault(OTHER_FRONTENDS, list(DEFAULT_REQUEST_CAPTURES))
    return checked


def _check_name(frontend: str, name: str) -> None:
    where = f"{SETTING}[{frontend!r}]"
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise ValueError(f"{where}: {name!r} is not a name (letters, digits, '_', '-', '.')")
    if name in _NOT_CAPTURED:
        raise ValueError(f"{where}: {name!r} cannot come from a capture: {_NOT_CAPTURED[name]}")
    meant = name.lower().replace("-", "_")
    if name not in CAPTURABLE and meant in CAPTURABLE:
        # otherwise read as some other header and ignored: the field would silently stay empty
        raise ValueError(f"{where}: {name!r} is not a field name; did you mean {meant!r}?")
