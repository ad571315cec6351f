"""Per-frontend layouts of httplog request captures (docs/ingest.md): the setting
parse.request_captures, how a line's frontend picks its layout, the lines that do not fit,
and `meterstream parse` / `meterstream syslog` honouring it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from meterstream import settings as settings_mod
from meterstream.dev.processes import Process, free_port, port_open, wait_for
from meterstream.dev.topics import consume
from meterstream.ingest import parse_httplog
from meterstream.ingest.capture_layout import CAPTURABLE, LINE_FIELDS, CaptureLayouts
from meterstream.ingest.parser import Parser, Rejected
from meterstream.ingest.pipeline import Encoder
from meterstream.schemas import LogRecord
from meterstream.schemas.records import SourcePosition
from meterstream.settings import DEFAULT_REQUEST_CAPTURES, Settings

SRC = SourcePosition(stream="edge1:2049:77:ab12cd34", offset=4096)
FP = int.from_bytes(bytes.fromhex("4DB6772D"), "big", signed=True)
LAYOUTS = {"fe_plain": ["host", "api_key_fp"], "fe_ssl": ["api_key_fp", "service_type", "user_agent"],
           "fe_none": [], "*": ["api_key_fp"]}
ISSUE_CAPTURES = "{api.example.com|4DB6772D}"


def line(frontend: str = "fe_plain", captures: str = ISSUE_CAPTURES) -> str:
    """A stock `option httplog` line of ``frontend`` with ``captures`` as its {%hrl}."""
    return (f'10.0.0.7:40722 [25/Nov/2026:16:50:01.123] {frontend} api_servers/api1 0/0/1/12/14 200 1532 '
            f'- - ---- 1/1/0/0/0 0/0 {captures} "GET /v1/fetch_key/abc HTTP/1.1"').replace("  ", " ")


def record(text: str, layouts: dict | None = None) -> LogRecord:
    result = Parser(LAYOUTS if layouts is None else layouts).parse(text, SRC)
    assert isinstance(result, LogRecord), result
    return result


def rejected(text: str, layouts: dict | None = None) -> Rejected:
    result = Parser(LAYOUTS if layouts is None else layouts).parse(text, SRC)
    assert isinstance(result, Rejected), result
    return result


def test_the_issue_line_with_host_then_fingerprint() -> None:
    r = record(line(), {"fe_plain": ["host", "api_key_fp"]})
    assert r.api_key_fp == FP and r.service_type is None and r.status == 200 and r.path == "v1/fetch_k"


def test_each_frontend_its_layout_ssl_frontends_included() -> None:
    assert record(line("fe_plain")).api_key_fp == FP
    ssl = record(line("fe_ssl~", "{4DB6772D|2|curl/8.5 (x86_64; linux)}"))  # '~': an SSL frontend
    assert (ssl.api_key_fp, ssl.service_type) == (FP, 2)
    assert record(line("fe_ssl", "{4DB6772D|3|}")).service_type == 3
    # a frontend without its own layout: "*"
    assert record(line("fe_other", "{4DB6772D}")).api_key_fp == FP
    assert record(line("fe_other~", "{4DB6772D}")).api_key_fp == FP
    # a frontend without request captures: its one block holds response captures, ignored
    none = record(line("fe_none", "{text/html|1234}"))
    assert none.api_key_fp is None and none.status == 200
    # missing captures, or no blocks at all, leave the fields absent
    assert record(line("fe_plain", "{api.example.com}")).api_key_fp is None
    assert record(line("fe_plain", "")).api_key_fp is None


def test_default_layout_is_todays_order() -> None:
    assert settings_mod.load().parse.request_captures == {"*": list(DEFAULT_REQUEST_CAPTURES)}
    r = record(line("api", "{cba0c270|1|1|16|2|1|0|S|0a1f}"), {})
    assert (r.service_type, r.network, r.server_id, r.fe_type, r.traffic_type, r.event_type) == (1, 1, 16, 2, 1, 0)
    assert (r.key_metadata, r.config_hex) == ("S", "0a1f")


def test_every_capturable_field_fills_in_any_order() -> None:
    names = list(reversed(DEFAULT_REQUEST_CAPTURES))
    values = {"api_key_fp": "4DB6772D", "service_type": "3", "network": "2", "server_id": "33", "fe_type": "1",
              "traffic_type": "2", "event_type": "30", "key_metadata": "G", "config_hex": "ff00"}
    r = record(line("fe_all", "{api.example.com|" + "|".join(values[n] for n in names) + "}"),
               {"fe_all": ["host", *names]})
    assert (r.api_key_fp, r.service_type, r.network, r.server_id, r.fe_type) == (FP, 3, 2, 33, 1)
    assert (r.traffic_type, r.event_type, r.key_metadata, r.config_hex) == (2, 30, "G", "ff00")


def test_capturable_names_come_from_the_model() -> None:
    assert set(CAPTURABLE) == set(LogRecord.model_fields) - LINE_FIELDS - {"v", "src", "request_id"}
    assert set(DEFAULT_REQUEST_CAPTURES) <= CAPTURABLE
    assert ("customer_id" in CAPTURABLE) == ("customer_id" in LogRecord.model_fields)
    # LINE_FIELDS is what the httplog line fills by itself
    fields, _ = parse_httplog.fields(line("fe_x", "{}"), CaptureLayouts({}))
    assert set(fields) == LINE_FIELDS


@pytest.mark.parametrize(
    ("text", "layouts", "reason", "details"),
    [
        # more values than names
        (line("fe_plain", "{api.example.com|4DB6772D|x}"), None, "capture_mismatch",
         ["parse.request_captures['fe_plain']", "host, api_key_fp"]),
        (line("fe_other~", "{4DB6772D|x}"), None, "capture_mismatch", ["the 1 that parse.request_captures['*']"]),
        # the issue's line under the default layout: the host is read as the fingerprint
        (line("fe_plain"), {}, "invalid_field",
         ["api_key_fp: cannot read 'api.example.com'", "header 1 of 9, parse.request_captures['*']"]),
        # a value the model refuses for its field
        (line("fe_ssl", "{4DB6772D|7}"), None, "invalid_field",
         ["service_type", "captured request header 2 of 3, parse.request_captures['fe_ssl']"]),
        (line("fe_ssl~", "{4DB6772D|x}"), None, "invalid_field", ["service_type", "parse.request_captures['fe_ssl']"]),
    ],
)
def test_lines_that_do_not_fit_their_layout_name_the_setting(text: str, layouts: dict | None, reason: str,
                                                             details: list[str]) -> None:
    r = rejected(text, layouts)
    assert r.reason == reason
    for detail in details:
        assert detail in r.detail, r.detail


def test_env_json_and_toml_both_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MS_PARSE__REQUEST_CAPTURES",
                       '{"fe_plain": ["host", "api_key_fp"], "fe_ssl": ["api_key_fp"]}')
    s = settings_mod.load()
    assert s.parse.request_captures == {"fe_plain": ["host", "api_key_fp"], "fe_ssl": ["api_key_fp"],
                                        "*": list(DEFAULT_REQUEST_CAPTURES)}
    monkeypatch.delenv("MS_PARSE__REQUEST_CAPTURES")
    cfg = tmp_path / "ms.toml"
    cfg.write_text('[parse.request_captures]\n"*" = ["api_key_fp"]\nfe_plain = ["host", "api_key_fp"]\n')
    s = settings_mod.load(cfg)
    assert s.parse.request_captures == {"*": ["api_key_fp"], "fe_plain": ["host", "api_key_fp"]}
    assert Parser.from_settings(s).parse(line(), SRC).api_key_fp == FP
    # both: merged by frontend, the environment winning
    monkeypatch.setenv("MS_PARSE__REQUEST_CAPTURES", '{"fe_plain": ["api_key_fp"], "fe_ssl": []}')
    assert settings_mod.load(cfg).parse.request_captures == {"*": ["api_key_fp"], "fe_plain": ["api_key_fp"],
                                                             "fe_ssl": []}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"fe~": ["api_key_fp"]}, "without the '~'"),
        ({"fe plain": ["api_key_fp"]}, "is not a frontend name"),
        ({"fe": ["host", "api_key_fp", "host"]}, "host named more than once"),
        ({"fe": ["api_key_fp", "api_key_fp"]}, "api_key_fp named more than once"),
        ({"fe": ["status"]}, "the httplog line carries it itself"),
        ({"*": ["ts", "api_key_fp"]}, "'ts' cannot come from a capture"),
        ({"fe": ["request_id"]}, "derived from its position"),
        ({"fe": ["src"]}, "cannot come from a capture"),
        ({"fe": ["API_KEY_FP"]}, "did you mean 'api_key_fp'"),
        ({"fe": ["service-type"]}, "did you mean 'service_type'"),
        ({"fe": ["user agent"]}, "is not a name"),
        ({"fe": [""]}, "is not a name"),
        ({"fe": "api_key_fp"}, "valid list"),
    ],
)
def test_a_bad_setting_is_refused_at_load(value: dict, message: str) -> None:
    with pytest.raises(ValueError, match="parse.request_captures") as caught:
        settings_mod.load(None, parse={"request_captures": value})
    assert message in str(caught.value)


def test_tail_and_syslog_read_by_the_setting() -> None:
    """Both build their messages with the Encoder, which reads the settings' layouts."""
    settings = settings_mod.load(None, parse={"request_captures": {"fe_plain": ["host", "api_key_fp"]}})
    encoder = Encoder(settings)
    message = encoder.line(line().encode(), SRC, "/var/log/haproxy.log")
    assert message.topic == encoder.logs_topic and message.value is not None
    assert orjson.loads(message.value)["api_key_fp"] == FP
    misfit = encoder.line(line(captures="{a|4DB6772D|b}").encode(), SRC, "/var/log/haproxy.log")
    assert misfit.topic == encoder.rejected_topic
    assert misfit.value is not None and orjson.loads(misfit.value)["reason"] == "capture_mismatch"


# -- the real commands ----------------------------------------------------------------------------
def meterstream(*args: str, env: dict[str, str], stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    exe = shutil.which("meterstream", path=str(Path(sys.executable).parent)) or "meterstream"
    return subprocess.run([exe, *args], input=stdin, capture_output=True, timeout=120, env={**os.environ, **env})


def test_parse_command_honours_the_setting(tmp_path: Path) -> None:
    log = tmp_path / "haproxy.log"
    lines = [line(), line("fe_ssl~", "{4DB6772D|2}"), line("fe_plain", "{a|b|c}"), line("api")]
    log.write_text("\n".join(lines) + "\n")
    env = {"MS_PARSE__REQUEST_CAPTURES":
           '{"fe_plain": ["host", "api_key_fp"], "fe_ssl": ["api_key_fp", "service_type"]}'}
    out = meterstream("parse", str(log), env=env)
    assert out.returncode == 0, out.stderr
    rows = [orjson.loads(row) for row in out.stdout.splitlines()]
    assert rows[0]["api_key_fp"] == FP
    assert (rows[1]["api_key_fp"], rows[1]["service_type"]) == (FP, 2)
    assert rows[2]["rejected"] == "capture_mismatch" and "parse.request_captures['fe_plain']" in rows[2]["detail"]
    assert rows[3]["rejected"] == "invalid_field" and "parse.request_captures['*']" in rows[3]["detail"]
    # without the setting, today's order: the host is read as the fingerprint
    assert orjson.loads(meterstream("parse", str(log), env={}).stdout.splitlines()[0])["rejected"] == "invalid_field"
    # from a TOML file too
    cfg = tmp_path / "ms.toml"
    cfg.write_text('[parse.request_captures]\nfe_plain = ["host", "api_key_fp"]\n')
    toml = meterstream("--config", str(cfg), "parse", env={}, stdin=line().encode())
    assert toml.returncode == 0 and orjson.loads(toml.stdout)["api_key_fp"] == FP
    # a bad setting: a usage error that names it
    bad = meterstream("parse", str(log), env={"MS_PARSE__REQUEST_CAPTURES": '{"fe_plain": ["status"]}'})
    assert bad.returncode == 2 and b"parse.request_captures" in bad.stderr and b"status" in bad.stderr


@pytest.mark.services
async def test_syslog_receiver_honours_the_setting(ms_topics: Settings, tmp_path: Path) -> None:
    udp = free_port()
    proc = Process(["syslog", "--udp", f"127.0.0.1:{udp}", "--tcp", ""],
                   {"MS_KAFKA__BOOTSTRAP": ms_topics.kafka.bootstrap,
                    "MS_KAFKA__TOPIC_PREFIX": ms_topics.kafka.topic_prefix,
                    "MS_PARSE__REQUEST_CAPTURES": '{"fe_plain": ["host", "api_key_fp"]}'},
                   tmp_path / "syslog.log").start()
    try:
        wait_for(lambda: orjson.loads(proc.get("/healthz")[1])["udp_port"] is not None, 30, "listening")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(f"<134>Nov 25 16:50:01 edge1 haproxy[99]: {line()}".encode(), ("127.0.0.1", udp))
        records = await consume(ms_topics.kafka, ms_topics.topic("haproxy.logs"), expect=1)
    finally:
        assert proc.terminate() == 0
    assert [v["api_key_fp"] for _, v in records] == [FP]


def test_real_haproxy_httplog_lines_parse_by_the_documented_layouts(tmp_path: Path) -> None:
    """deploy/haproxy/httplog-captures.cfg (the example docs/ingest.md shows), run by the real
    HAProxy: its lines parse with the layouts its header documents."""
    import base64
    import tomllib

    from meterstream.dev.haproxy import EchoBackend
    from meterstream.dev.processes import require
    from meterstream.schemas.apikeys import fingerprint_of_hash, key_hash
    from tests.helpers import ROOT

    require("haproxy")
    cfg = ROOT / "deploy" / "haproxy" / "httplog-captures.cfg"
    documented = "\n".join(line.removeprefix("#   ") for line in cfg.read_text().splitlines()
                           if line.startswith(("#   [parse", "#   fe_")))
    layouts = tomllib.loads(documented)["parse"]["request_captures"]
    assert layouts == {"fe_plain": ["host", "api_key_fp"], "fe_internal": ["api_key_fp", "service_type", "user_agent"]}
    secret = base64.b64decode(Settings().keys.key_secret_b64.get_secret_value())
    fp = fingerprint_of_hash(key_hash(secret, "Sdemo-key"))
    backend = EchoBackend()
    plain, internal = free_port(), free_port()
    log = tmp_path / "haproxy.log"
    with open(log, "wb") as out:
        haproxy = subprocess.Popen(["haproxy", "-f", str(cfg), "-db"], stdout=out, stderr=subprocess.DEVNULL, env={
            **os.environ, "MS_KEY_SECRET_B64": Settings().keys.key_secret_b64.get_secret_value(),
            "MS_BIND_PLAIN": f"127.0.0.1:{plain}", "MS_BIND_INTERNAL": f"127.0.0.1:{internal}",
            "MS_BACKEND": f"127.0.0.1:{backend.port}"})
    try:
        def get(port: int, head: str) -> None:
            wait_for(lambda: port_open(port), 10, "haproxy listening")
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                conn.sendall(f"GET /v1/fetch_key/abc HTTP/1.0\r\n{head}\r\n".encode())
                while conn.recv(65536):
                    pass

        get(plain, "Host: api.example.com\r\nX-API-Key: Sdemo-key\r\n")
        get(internal, "X-API-Key: Sdemo-key\r\nUser-Agent: probe/1.0 (a|b)\r\n")
        get(internal, "User-Agent: probe/1.0\r\n")
        wait_for(lambda: len(log.read_bytes().splitlines()) >= 3, 10, "three log lines")
    finally:
        haproxy.terminate()
        haproxy.wait(10)
        backend.stop()
    lines = log.read_bytes().splitlines()
    parser = Parser(layouts)
    results = [parser.parse(raw, SourcePosition(stream="h", offset=i)) for i, raw in enumerate(lines)]
    assert all(isinstance(r, LogRecord) for r in results), (lines, results)
    assert [(r.api_key_fp, r.service_type, r.status, r.path) for r in results] == [
        (fp, None, 200, "v1/fetch_k"), (fp, 2, 200, "v1/fetch_k"), (None, 2, 200, "v1/fetch_k")]
    # without the setting, the fe_plain line's Host is read as the fingerprint: rejected
    assert Parser().parse(lines[0], SRC) == Rejected(
        "invalid_field", "api_key_fp: cannot read 'api.example.com' "
                         "(captured request header 1 of 9, parse.request_captures['*'])")

