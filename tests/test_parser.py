"""The log-line parser (ingest/parser.py): pure, no services."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterstream.ingest.parser import Rejected, derived_request_id, parse
from meterstream.schemas import LogRecord
from meterstream.schemas.enums import FeType, Network, ServiceType, TrafficType
from meterstream.schemas.records import SourcePosition

SRC = SourcePosition(stream="edge1:2049:77:ab12cd34", offset=4096)

# The record's line, as deploy/haproxy/haproxy.cfg logs it (captured from HAProxy 2.6.12)
RECORD_LINE = (
    '{"ts":1795673310675,"request_id":"7F000001:AA32_7F000001:85A5_6B07CCDE_0000:232D",'
    '"client_ip":"127.0.0.1","api_key_fp":527440670,"service_type":1,"network":1,"server_id":16,'
    '"fe_type":2,"traffic_type":1,"event_type":0,"key_metadata":"S","status":200,"bytes_sent":232,'
    '"path":"v1\\/fetch_k","TR":0,"Tw":0,"Tc":0,"Tr":1,"Ta":1,"backend_id":3,"termination_state":"----",'
    '"config_hex":"00000000","customer_id":123456789}'
)
# ... for a request without a key: null for the samples no rule set
RECORD_LINE_NO_KEY = (
    '{"ts":1795673394443,"request_id":"7F000001:B2F6_7F000001:BE53_6B07CD32_0001:2731",'
    '"client_ip":"127.0.0.1","api_key_fp":null,"service_type":1,"network":1,"server_id":16,"fe_type":2,'
    '"traffic_type":3,"event_type":10,"key_metadata":null,"status":401,"bytes_sent":215,"path":"v1\\/x",'
    '"TR":0,"Tw":-1,"Tc":-1,"Tr":-1,"Ta":0,"backend_id":2,"termination_state":"PR--",'
    '"config_hex":"00000000","customer_id":null}'
)
# ... for a request HAProxy could not parse: no sample evaluated, a bare - for each (not JSON)
RECORD_LINE_BADREQ = (
    '{"ts":1795673394443,"request_id":"-","client_ip":"127.0.0.1","api_key_fp":-,"service_type":-,'
    '"network":-,"server_id":-,"fe_type":-,"traffic_type":-,"event_type":-,"key_metadata":-,"status":400,'
    '"bytes_sent":0,"path":"-","TR":-1,"Tw":-1,"Tc":-1,"Tr":-1,"Ta":0,"backend_id":-,'
    '"termination_state":"PR--","config_hex":"00000000","customer_id":-}'
)
# The earlier line (quoted numbers, ts in seconds, the hex fingerprint), still read (captured
# from HAProxy 2.6.12 with the earlier config)
JSON_LINE = (
    '{"ts":1795625194.916,"request_id":"7F000001:9296_7F000001:4E0C_6B0710EA_0000:17F7",'
    '"client_ip":"127.0.0.1","api_key_fp":"CBA0C270","service_type":"1","network":"1",'
    '"server_id":"16","fe_type":"2","traffic_type":"1","event_type":"0","key_metadata":"S",'
    '"status":200,"bytes_sent":"500","path":"v1\\/fetch_k","TR":0,"Tw":0,"Tc":1,"Tr":3,"Ta":4,'
    '"backend_id":"3","termination_state":"----","config_hex":"00000000"}'
)
# HAProxy's line for a request it could not parse: every variable is "-"
BADREQ_JSON = (
    '{"ts":1795625195.020,"request_id":"-","client_ip":"127.0.0.1","api_key_fp":"-",'
    '"service_type":"-","network":"-","server_id":"-","fe_type":"-","traffic_type":"-",'
    '"event_type":"-","key_metadata":"-","status":400,"bytes_sent":"0","path":"-","TR":-1,'
    '"Tw":-1,"Tc":-1,"Tr":-1,"Ta":0,"backend_id":"-","termination_state":"PR--",'
    '"config_hex":"00000000"}'
)
HTTPLOG = (
    '10.0.0.7:40722 [25/Nov/2026:16:50:01.123] api api_servers/api1 0/0/1/12/14 200 1532 - - '
    '---- 1/1/0/0/0 0/0 {cba0c270|1|1|16|2|1|0|S|0a1f} {} "GET /v1/fetch_key/abc?x=1 HTTP/1.1"'
)
TS_HTTPLOG = 1795625401123  # 2026-11-25T16:50:01.123Z


def ok(line: str | bytes) -> LogRecord:
    result = parse(line, SRC)
    assert isinstance(result, LogRecord), result
    return result


def rejected(line: str | bytes) -> Rejected:
    result = parse(line, SRC)
    assert isinstance(result, Rejected), result
    return result


def test_project_json_line() -> None:
    r = ok(JSON_LINE)
    assert r.ts == 1_795_625_194_916
    assert r.request_id == "7F000001:9296_7F000001:4E0C_6B0710EA_0000:17F7"
    assert r.api_key_fp == int.from_bytes(bytes.fromhex("cba0c270"), "big", signed=True)
    assert (r.service_type, r.network, r.fe_type) == (ServiceType.SEAL, Network.MAINNET, FeType.METERED)
    assert (r.server_id, r.traffic_type, r.event_type) == (16, TrafficType.GUARANTEED, 0)
    assert (r.status, r.bytes_sent, r.path, r.key_metadata) == (200, 500, "v1/fetch_k", "S")
    assert (r.TR, r.Tw, r.Tc, r.Tr, r.Ta) == (0, 0, 1, 3, 4)
    assert (r.backend_id, r.termination_state, r.config_hex) == (3, "----", "00000000")
    assert r.src == SRC and r.is_billable


def test_badreq_json_line_gets_a_derived_request_id() -> None:
    r = ok(BADREQ_JSON)
    assert r.request_id == derived_request_id(SRC)
    assert r.api_key_fp is None and r.service_type is None and r.path == ""
    assert (r.status, r.TR, r.Tw, r.Tc, r.Tr) == (400, -1, -1, -1, -1)
    assert r.traffic_type is TrafficType.NA and not r.is_billable


def test_the_record_line() -> None:
    r = ok(RECORD_LINE)
    assert (r.ts, r.request_id) == (1_795_673_310_675, "7F000001:AA32_7F000001:85A5_6B07CCDE_0000:232D")
    assert (r.api_key_fp, r.customer_id, r.key_metadata, r.path) == (527440670, 123456789, "S", "v1/fetch_k")
    assert (r.service_type, r.network, r.fe_type) == (ServiceType.SEAL, Network.MAINNET, FeType.METERED)
    assert (r.status, r.bytes_sent, r.backend_id, r.traffic_type) == (200, 232, 3, TrafficType.GUARANTEED)
    assert r.src == SRC and r.is_billable
    none = ok(RECORD_LINE_NO_KEY)
    assert (none.api_key_fp, none.key_metadata, none.customer_id, none.event_type) == (None, None, None, 10)


def test_the_record_line_of_a_request_haproxy_could_not_parse() -> None:
    """Its bare "-" values are absent samples, as the earlier line's quoted "-" were."""
    r = ok(RECORD_LINE_BADREQ)
    assert r == ok(BADREQ_JSON).model_copy(update={"ts": r.ts, "bytes_sent": 0, "backend_id": None})
    assert r.request_id == derived_request_id(SRC) and r.traffic_type is TrafficType.NA
    # only a bare "-" before "," or "}": anything else that is not JSON stays not_json
    assert rejected(RECORD_LINE_BADREQ.replace('"status":400', '"status":-x')).reason == "not_json"
    assert rejected(RECORD_LINE_BADREQ.replace('"api_key_fp":-,', '"api_key_fp":- ,')).reason == "not_json"


def test_derived_request_id_is_deterministic_per_position() -> None:
    assert derived_request_id(SRC) == derived_request_id(SourcePosition(stream=SRC.stream, offset=4096))
    assert derived_request_id(SRC) != derived_request_id(SourcePosition(stream=SRC.stream, offset=4097))
    assert derived_request_id(SRC) != derived_request_id(SourcePosition(stream="other", offset=4096))


@pytest.mark.parametrize(
    "header",
    [
        "",
        "<134>Nov 25 16:50:01 edge1 haproxy[1234]: ",
        "<134>Nov  5 06:50:01 edge1 haproxy[1234]: ",
        "Nov 25 16:50:01 edge1 haproxy[1234]: ",
        "2026-11-25T16:50:01.123456+00:00 edge1 haproxy[1234]: ",
        "<134>1 2026-11-25T16:50:01.123Z edge1 haproxy 1234 - - ",
        '<134>1 2026-11-25T16:50:01.123Z edge1 haproxy 1234 - [meta x="1\\]"] ',
        "<134>1 2026-11-25T16:50:01.123Z edge1 haproxy 1234 - - \ufeff",
    ],
)
@pytest.mark.parametrize("body", [JSON_LINE, HTTPLOG])
def test_with_or_without_syslog_header(header: str, body: str) -> None:
    r = ok(header + body)
    assert r.api_key_fp == int.from_bytes(bytes.fromhex("cba0c270"), "big", signed=True)
    assert r.status == 200


def test_httplog_line() -> None:
    r = ok(HTTPLOG)
    assert r.ts == TS_HTTPLOG and r.client_ip == "10.0.0.7"
    assert r.request_id == derived_request_id(SRC)
    assert (r.service_type, r.network, r.server_id, r.fe_type) == (1, 1, 16, 2)
    assert (r.traffic_type, r.event_type, r.key_metadata, r.config_hex) == (1, 0, "S", "0a1f")
    assert (r.status, r.bytes_sent, r.path) == (200, 1532, "v1/fetch_k")
    assert (r.TR, r.Tw, r.Tc, r.Tr, r.Ta, r.termination_state) == (0, 0, 1, 12, 14, "----")


@pytest.mark.parametrize(
    ("line", "check"),
    [
        # -1 timers (no server reached) and <NOSRV>
        (HTTPLOG.replace("api_servers/api1 0/0/1/12/14 200", "api_servers/<NOSRV> 0/-1/-1/-1/0 503"),
         lambda r: (r.Tw, r.Tc, r.Tr, r.status) == (-1, -1, -1, 503)),
        # option logasap: '+' before the byte count and the total time
        (HTTPLOG.replace("0/0/1/12/14 200 1532", "0/0/1/12/+14 200 +1532"),
         lambda r: (r.Ta, r.bytes_sent) == (14, 1532)),
        # <BADREQ>
        (HTTPLOG.replace('"GET /v1/fetch_key/abc?x=1 HTTP/1.1"', '"<BADREQ>"').replace(" 200 ", " 400 "),
         lambda r: (r.path, r.status) == ("", 400)),
        # '~' after an SSL frontend's name
        (HTTPLOG.replace(" api api_servers", " api~ api_servers"), lambda r: r.status == 200),
        # empty captures, and no capture blocks at all
        (HTTPLOG.replace("{cba0c270|1|1|16|2|1|0|S|0a1f}", "{}"),
         lambda r: r.api_key_fp is None and r.service_type is None),
        (HTTPLOG.replace("{cba0c270|1|1|16|2|1|0|S|0a1f} {} ", ""),
         lambda r: r.api_key_fp is None and r.path == "v1/fetch_k"),
        # fewer captures than fields, and empty ones in between
        (HTTPLOG.replace("{cba0c270|1|1|16|2|1|0|S|0a1f}", "{cba0c270||1}"),
         lambda r: r.api_key_fp is not None and r.service_type is None and r.network == 1),
        # absolute-form request target
        (HTTPLOG.replace("GET /v1/fetch_key", "GET http://api.example/v1/fetch_key"),
         lambda r: r.path == "v1/fetch_k"),
        # the request line cut at HAProxy's 1024-byte limit: no closing quote
        ((HTTPLOG.replace("/v1/fetch_key/abc?x=1 HTTP/1.1\"", "/" + "a" * 2000))[:1024],
         lambda r: r.path == "a" * 10),
        # JSON: integer seconds, quoted ts, numbers as numbers
        (JSON_LINE.replace('"ts":1795625194.916', '"ts":1795625194'), lambda r: r.ts == 1_795_625_194_000),
        (JSON_LINE.replace('"ts":1795625194.916', '"ts":"1795625194.9"'), lambda r: r.ts == 1_795_625_194_900),
        (JSON_LINE.replace('"bytes_sent":"500"', '"bytes_sent":"+500"'), lambda r: r.bytes_sent == 500),
        (JSON_LINE.replace('"status":200', '"status":-1'), lambda r: r.status == -1),
        (JSON_LINE.replace('"service_type":"1"', '"service_type":3'), lambda r: r.service_type == 3),
        (JSON_LINE.replace('"path":"v1\\/fetch_k"', '"path":"aaaaaaaaaaaaaa"'), lambda r: r.path == "a" * 10),
        # unknown keys are ignored (a newer HAProxy config may log more)
        (JSON_LINE.replace('{"ts"', '{"extra":1,"ts"'), lambda r: r.status == 200),
        # CRLF line ending
        (JSON_LINE + "\r\n", lambda r: r.status == 200),
    ],
)
def test_gotchas(line: str, check) -> None:  # noqa: ANN001
    assert check(ok(line))


@pytest.mark.parametrize(
    ("line", "reason", "detail"),
    [
        (b"", "empty_line", ""),
        (b"   \r\n", "empty_line", ""),
        (b"\xff\xfe\x00garbage", "invalid_utf8", "byte at 0"),
        ("hello world", "unknown_format", ""),
        ("\x00\x01\x02", "unknown_format", ""),
        ('{"ts": 1', "not_json", ""),
        ("[1, 2]", "unknown_format", ""),
        ('{"status": 200}', "invalid_field", "ts"),
        (JSON_LINE.replace('"api_key_fp":"CBA0C270"', '"api_key_fp":"XYZ"'), "invalid_field", "api_key_fp"),
        (JSON_LINE.replace('"api_key_fp":"CBA0C270"', '"api_key_fp":"00000000"'), "invalid_field", "api_key_fp"),
        (JSON_LINE.replace('"service_type":"1"', '"service_type":"7"'), "invalid_field", "service_type"),
        (JSON_LINE.replace('"event_type":"0"', '"event_type":"42"'), "invalid_field", "event_type"),
        (JSON_LINE.replace('"status":200', '"status":"ok"'), "invalid_field", "status"),
        (JSON_LINE.replace('"ts":1795625194.916', '"ts":true'), "invalid_field", "ts"),
        (HTTPLOG.replace("25/Nov/2026", "31/Feb/2026"), "invalid_field", "ts"),
        ((JSON_LINE[:-1] + ',"pad":"' + "x" * 1200 + '"}')[:1024], "truncated", ""),
    ],
)
def test_rejections(line: str | bytes, reason: str, detail: str) -> None:
    r = rejected(line)
    assert r.reason == reason
    assert detail in r.detail


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048))
def test_no_bytes_crash_it(raw: bytes) -> None:
    assert isinstance(parse(raw, SRC), (LogRecord, Rejected))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=1500))
def test_no_text_crashes_it(text: str) -> None:
    assert isinstance(parse(text, SRC), (LogRecord, Rejected))


_values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                    st.text(max_size=20), st.lists(st.integers(), max_size=2))


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(list(orjson.loads(JSON_LINE))), _values))
def test_json_objects_with_any_field_values_never_crash(changes: dict) -> None:
    obj = {**orjson.loads(JSON_LINE), **changes}
    # stdlib json: it writes integers beyond 64 bits and NaN, which orjson will not
    assert isinstance(parse(json.dumps(obj), SRC), (LogRecord, Rejected))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(HTTPLOG)), st.text(max_size=30))
def test_mangled_httplog_never_crashes(cut: int, noise: str) -> None:
    assert isinstance(parse(HTTPLOG[:cut] + noise + HTTPLOG[cut:], SRC), (LogRecord, Rejected))
