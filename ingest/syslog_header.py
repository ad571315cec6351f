"""Strips an RFC 3164 or RFC 5424 syslog header (or rsyslog's file prefix) from a line.

Returns the hostname the header names (None when there is no header) and the message.

Linear in the line's length: the patterns are anchored at the start, match only the header
(the message is the rest of the line, not matched), and every unbounded repetition is
possessive (``++``, ``*+``, Python 3.11): it never gives back what it took, so a line that
almost fits cannot make the engine retry other splits of it.
"""

from __future__ import annotations

import re

# <PRI>1 TIMESTAMP HOST APP PROCID MSGID SD MSG   (RFC 5424; SD is "-" or [..][..], where
# `\` escapes `]`, `"` and `\`)
_RFC5424 = re.compile(
    r"<\d{1,3}>1 \S++ (?P<host>\S++) \S++ \S++ \S++ (?:-|(?:\[(?:[^\]\\]++|\\.)*+\])++) ?\ufeff?",
    re.S,
)
# [<PRI>]Mmm dd hh:mm:ss HOST TAG[PID]: MSG   (RFC 3164, and what rsyslog writes to files),
# or with an ISO-8601 timestamp (rsyslog's high-precision file format)
_RFC3164 = re.compile(
    r"(?:<\d{1,3}>)?"
    r"(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d++)?(?:Z|[+-]\d\d:\d\d))"
    r" (?P<host>\S++) [^\s:\[]++(?:\[\d++\])?: ?",
    re.S,
)


def strip(line: str) -> tuple[str | None, str]:
    if not line or line[0] not in "<ADFJMNOS0123456789":
        return None, line  # fast path: a bare HAProxy line starts with '{' or an address
    match = _RFC5424.match(line) or _RFC3164.match(line)
    if match is None:
        return None, line
    return match["host"], line[match.end():]
