"""The parser is linear in the line's length (docs/ingest.md): adversarial lines of many
shapes, each as long as the tailer lets a line be, parse or reject in under 5 ms; and
hypothesis builds long near-miss lines (valid lines with one part mutated, repeated
separators, long runs of field-like tokens) that must each come back as a record or a
classified rejection, never through the parser's catch-all."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import partial

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterstream.ingest.parser import Parser, Rejected, parse
from meterstream.schemas import LogRecord
from meterstream.schemas.records import SourcePosition
from meterstream.schemas.wire import encode
from meterstream.settings import TailSettings
from tests.test_parser import HTTPLOG, JSON_LINE

SRC = SourcePosition(stream="edge1:2049:77:ab12cd34", offset=4096)
MAX = TailSettings().max_line_bytes  # 64 KiB: the tailer and the receiver refuse longer lines
BUDGET_S = 0.005

RFC5424 = "<134>1 2026-11-25T16:50:01.123Z edge1 haproxy 1234 - - "
RFC3164 = "<134>Nov 25 16:50:01 edge1 haproxy[1234]: "
ISO = "2026-11-25T16:50:01.123456+00:00 edge1 haproxy[1234]: "
HTTPLOG_TOKENS = HTTPLOG.split(" ")


def fill(prefix: str, run: str, suffix: str = "") -> str:
    """``prefix`` + ``run`` repeated + ``suffix``, MAX bytes long (cut there if need be)."""
    room = MAX - len(prefix.encode()) - len(suffix.encode())
    middle = (run * (room // len(run.encode()) + 1)).encode()[:room].decode("utf-8", errors="ignore")
    return (prefix + middle + suffix).encode()[:MAX].decode("utf-8", errors="ignore")


def httplog_with(index: int, run: str, rest: bool = True) -> str:
    """The httplog line with its token ``index`` replaced by a long run, and the rest of the
    line after it (or nothing: a line that cannot match, which is what made a backtracking
    parser try every way of splitting the run)."""
    before, after = " ".join(HTTPLOG_TOKENS[:index]), " ".join(HTTPLOG_TOKENS[index + 1:])
    return fill(before + " " if index else "", run, " " + after if rest else "")


def json_with(key: str, run: str, quoted: bool = True, lead: str = "") -> str:
    """The JSON line with the value of ``key`` replaced by ``lead`` and a long run."""
    head, _, tail = JSON_LINE.partition(f'"{key}":')
    tail = tail.partition(",")[2] or "}"
    q = '"' if quoted else ""
    return fill(f'{head}"{key}":{q}{lead}', run, f'{q},{tail}')


SHAPES: dict[str, Callable[[], str]] = {
    # the reported case: a run of a/a/a/... where HAProxy logs %ac/%fc/%bc/%sc/%rc
    "reported: a/a/a in the connection counts, ending the line": lambda: httplog_with(10, "a/", rest=False),
    **{f"a/a/a ending the line at httplog field {i}": partial(httplog_with, i, "a/", rest=False)
       for i in range(12)},
    **{f"1/1/1 ending the line at httplog field {i}": partial(httplog_with, i, "1/", rest=False)
       for i in (3, 4, 10, 11)},
    **{f"a/a/a in httplog field {i}": partial(httplog_with, i, "a/") for i in range(12)},
    **{f"1/1/1 in httplog field {i}": partial(httplog_with, i, "1/") for i in (3, 4, 10, 11)},
    "digits as the byte count": lambda: httplog_with(6, "9"),
    "+digits as a timer": lambda: httplog_with(4, "+1"),
    "many ':' in the client": lambda: httplog_with(0, "1:"),
    "'[' runs in the date": lambda: httplog_with(1, "["),
    "'~' runs after the frontend": lambda: httplog_with(2, "~"),
    "a long termination state": lambda: httplog_with(9, "-"),
    "a capture block of many values": lambda: fill(HTTPLOG.partition("{")[0] + "{", "a|", "} {} \"GET / HTTP/1.1\""),
    "a capture block never closed": lambda: fill(HTTPLOG.partition("{")[0] + "{", "|"),
    "capture blocks repeated": lambda: fill(HTTPLOG.partition("{")[0], "{} "),
    "spaces inside the request": lambda: fill(HTTPLOG.rpartition('"GET')[0] + '"GET ', " ", '"'),
    "quotes after the request": lambda: fill(HTTPLOG, '"'),
    "spaces after the line": lambda: fill(HTTPLOG, " "),
    "' [' repeated": lambda: fill("", "a ["),
    "httplog prefixes repeated": lambda: fill("", "10.0.0.7:40722 [25/Nov/2026:16:50:01.123] "),
    "every token a/a/a": lambda: fill("", "a/a/a/a/a "),
    "JSON: a long string value": lambda: json_with("client_ip", "a"),
    "JSON: a long path": lambda: json_with("path", "a/"),
    "JSON: ts of many digits": lambda: json_with("ts", "9", quoted=False),
    "JSON: quoted ts of many digits": lambda: json_with("ts", "9"),
    "JSON: quoted ts with a long fraction": lambda: json_with("ts", "9", lead="1795625194."),
    "JSON: bytes_sent of many digits": lambda: json_with("bytes_sent", "9"),
    "JSON: escapes": lambda: json_with("key_metadata", "\\u0041"),
    "JSON: deep nesting": lambda: fill("", "["),
    "JSON: deep objects": lambda: fill("", '{"a":'),
    "JSON: many keys": lambda: fill("{", '"k":1,', '"ts":1795625194}'),
    "RFC 5424: many SD elements": lambda: fill(RFC5424.replace(" - - ", " - "), "[a x=\"1\"]", " " + HTTPLOG),
    "RFC 5424: an SD element never closed": lambda: fill(RFC5424.replace(" - - ", " - ["), "a"),
    "RFC 5424: escapes never closed": lambda: fill(RFC5424.replace(" - - ", " - ["), "\\]"),
    "RFC 5424: SD elements, then garbage": lambda: fill(RFC5424.replace(" - - ", " - "), "[", "]"),
    "RFC 5424: many header tokens": lambda: fill("<134>1 ", "a "),
    "RFC 3164: a long tag": lambda: fill("<134>Nov 25 16:50:01 edge1 ", "a", ": " + JSON_LINE),
    "RFC 3164: '[' runs in the tag": lambda: fill("<134>Nov 25 16:50:01 edge1 ", "a["),
    "RFC 3164: a long pid": lambda: fill("<134>Nov 25 16:50:01 edge1 haproxy[", "1"),
    "RFC 3164: header tokens repeated": lambda: fill("", "Nov 25 16:50:01 "),
    "ISO-8601: a long fraction": lambda: fill("2026-11-25T16:50:01.", "1"),
    "syslog headers repeated before httplog": lambda: fill("", RFC3164, HTTPLOG),
    "a httplog line behind a header, tokens a/a/a": lambda: fill(RFC5424, "a/a/a/a/a "),
    "NUL and control characters": lambda: fill("", "\x00\x01\x1f"),
    "multi-byte characters": lambda: fill("", "é/€ ["),
}


def caught_by_the_guard(result: LogRecord | Rejected) -> bool:
    """A rejection the parser did not classify: an exception its catch-all turned into one."""
    return isinstance(result, Rejected) and result.reason == "unknown_format" and \
        result.detail.startswith("unexpected ")


def best_time(line: str | bytes) -> tuple[float, LogRecord | Rejected]:
    """The fastest of three parses: the test is about how the cost grows with the line, not
    about what else the (shared) machine runs meanwhile."""
    best, result = float("inf"), None
    for _ in range(3):
        started = time.perf_counter()
        result = parse(line, SRC)
        best = min(best, time.perf_counter() - started)
    assert result is not None
    return best, result


@pytest.mark.parametrize("shape", list(SHAPES))
def test_adversarial_line_parses_or_is_rejected_in_under_5_ms(shape: str) -> None:
    line = SHAPES[shape]()
    assert MAX - 8 <= len(line.encode()) <= MAX, "each shape is as long as a line may be"
    for form in (line, line.encode()):
        seconds, result = best_time(form)
        assert isinstance(result, (LogRecord, Rejected))
        assert not caught_by_the_guard(result), result
        assert seconds < BUDGET_S, f"{shape}: {seconds * 1000:.2f} ms for {len(line.encode())} bytes"


# lines for the JSON fast path (ingest/parse_json_fast.py): what it reads before the reference
# path sees the line, numbers and keys included
FAST_SHAPES: dict[str, Callable[[], str]] = {
    "JSON: a path of many digits": lambda: json_with("path", "9", quoted=False),
    "JSON: a fingerprint of many digits": lambda: json_with("api_key_fp", "9", quoted=False),
    "JSON: an unknown key of many digits": lambda: fill(JSON_LINE[:-1] + ',"x":', "9", "}"),
    "JSON: a key repeated": lambda: fill("{", '"status":200,', '"ts":1795625194}'),
    "JSON: a valid line padded with spaces": lambda: fill(JSON_LINE, " "),
    "JSON: absent samples repeated": lambda: fill("{", '"key_metadata":"-",', '"ts":1795625194}'),
}
FAST_PARSER = Parser()
assert FAST_PARSER.fast is not None


@pytest.mark.parametrize("shape", [*SHAPES, *FAST_SHAPES])
def test_adversarial_line_through_the_fast_path_in_under_5_ms(shape: str) -> None:
    """The tailer's and the receiver's way in (``encoded_at``: the fast path, then the reference
    path for what it defers)."""
    line = {**SHAPES, **FAST_SHAPES}[shape]().encode()
    assert MAX - 8 <= len(line) <= MAX, "each shape is as long as a line may be"
    best, result = float("inf"), None
    for _ in range(3):
        started = time.perf_counter()
        result = FAST_PARSER.encoded_at(line, SRC.stream, SRC.offset)
        best = min(best, time.perf_counter() - started)
    assert not (isinstance(result, Rejected) and result.detail.startswith("unexpected ")), result
    assert best < BUDGET_S, f"{shape}: {best * 1000:.2f} ms for {len(line)} bytes"


# -- near-miss lines ---------------------------------------------------------------------------
BASES = [HTTPLOG, JSON_LINE, RFC5424 + HTTPLOG, RFC3164 + JSON_LINE, ISO + HTTPLOG,
         RFC5424.replace(" - - ", ' - [meta x="1\\]"] ') + JSON_LINE]
# field-like tokens and separators, repeated into long runs
RUNS = ["a/", "1/", "+1/", "-1/", "/", " ", "  ", "|", "a|", "{", "}", "{}", "[", "]", "[a]", "\\", "\\]",
        '"', ":", "1:", "-", "+", "~", "a", "9", "0", ".", "a [", "1/1/1/1/1 ", "[a x=\"1\"]", '"a":', ",",
        "{|}", "<134>", "<1>1 ", "Nov 25 16:50:01 ", "\t", "\x00", "é", "\ud800"]
SEPARATORS = [" ", "/", "|", ":", ",", "[", "]", "{", "}", '"', "."]
_count = st.one_of(st.integers(1, 40), st.integers(200, MAX))


@st.composite
def near_miss(draw: st.DrawFn) -> str:
    line = draw(st.sampled_from(BASES))
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["replace_token", "repeat_separator", "insert_run", "cut"]))
        if how == "replace_token":
            tokens = line.split(" ")
            tokens[draw(st.integers(0, len(tokens) - 1))] = draw(st.sampled_from(RUNS)) * draw(_count)
            line = " ".join(tokens)
        elif how == "repeat_separator" and any(s in line for s in SEPARATORS):
            sep = draw(st.sampled_from([s for s in SEPARATORS if s in line]))
            at = [i for i, c in enumerate(line) if c == sep]
            i = draw(st.sampled_from(at))
            line = line[:i] + sep * draw(_count) + line[i + 1:]
        elif how in ("insert_run", "repeat_separator"):
            i = draw(st.integers(0, len(line)))
            line = line[:i] + draw(st.sampled_from(RUNS)) * draw(_count) + line[i:]
        else:
            line = line[:draw(st.integers(0, len(line)))]
    return line[:MAX]


# the default layout, and others: the frontend of the bases ("api") with host first, none
PARSERS = [Parser(), Parser({"api": ["host", "api_key_fp", "service_type"], "*": []}), Parser({"api": []})]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
@given(near_miss(), st.booleans(), st.sampled_from(PARSERS))
def test_near_miss_lines_are_records_or_classified_rejections(line: str, as_bytes: bool, parser: Parser) -> None:
    raw: str | bytes = line.encode("utf-8", errors="surrogatepass") if as_bytes else line
    result = parser.parse(raw, SRC)
    assert isinstance(result, (LogRecord, Rejected))
    if isinstance(result, Rejected):
        assert not caught_by_the_guard(result), result
    else:
        encode(result)  # what is parsed can be produced
    if as_bytes:  # the tailer's way in: the fast path first
        encoded = parser.encoded_at(raw, SRC.stream, SRC.offset)  # type: ignore[arg-type]
        assert isinstance(encoded, Rejected) == isinstance(result, Rejected)


def test_the_near_miss_bases_parse() -> None:
    for base in BASES:
        assert isinstance(parse(base, SRC), LogRecord), base
    assert isinstance(parse(json.dumps(json.loads(JSON_LINE)), SRC), LogRecord)
