"""Real requests through the real HAProxy (deploy/haproxy/haproxy.cfg) -> its log -> the
tailer -> haproxy.logs."""

from __future__ import annotations

import base64
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from meterstream.dev.haproxy import EchoBackend, HAProxy
from meterstream.dev.processes import Process, require
from meterstream.dev.topics import consume
from meterstream.ingest.parse_json_fast import FastJson
from meterstream.schemas.apikeys import fingerprint_of_hash, key_hash
from meterstream.settings import DEV_KEY_SECRET_B64, Settings
from tests.helpers import ROOT

pytestmark = pytest.mark.services


@pytest.fixture(scope="session")
def haproxy_installed() -> None:
    require("haproxy")


@pytest.fixture
def backend() -> Iterator[EchoBackend]:
    server = EchoBackend()
    yield server
    server.stop()


CONFIGS = [ROOT / "deploy/haproxy/haproxy.cfg", ROOT / "deploy/haproxy/httplog-captures.cfg"]


def haproxy_check(cfg: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "MS_KEY_SECRET_B64"}
    return subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True, env={**clean, **env})


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda p: p.name)
def test_config_passes_haproxy_check(haproxy_installed: None, cfg: Path) -> None:
    out = haproxy_check(cfg, MS_KEY_SECRET_B64=DEV_KEY_SECRET_B64)
    assert out.returncode == 0, out.stderr
    assert "Configuration file is valid" in out.stdout + out.stderr


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda p: p.name)
def test_config_holds_no_key_and_refuses_to_run_without_one(haproxy_installed: None, cfg: Path) -> None:
    """docs/security.md: HAProxy's check fails, with an alert naming the variable, when
    MS_KEY_SECRET_B64 is missing or empty; the file holds no key at all."""
    text = cfg.read_text()
    assert DEV_KEY_SECRET_B64 not in text
    tokens = re.split(r"[\s\"'(),]+", text)
    assert not [t for t in tokens if len(t) >= 40 and not t.startswith("/")
                and re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", t)]  # no base64 key of any kind
    missing = haproxy_check(cfg)
    assert missing.returncode != 0
    assert re.search(r"\[ALERT\].*MS_KEY_SECRET_B64 is not set", missing.stderr), missing.stderr
    empty = haproxy_check(cfg, MS_KEY_SECRET_B64="")
    assert empty.returncode != 0
    assert re.search(r"\[ALERT\].*MS_KEY_SECRET_B64 is empty", empty.stderr), empty.stderr


async def test_every_logged_request_is_a_record(
    haproxy_installed: None, backend: EchoBackend, ms_topics: Settings, tmp_path: Path
) -> None:
    secret = base64.b64decode(ms_topics.keys.key_secret_b64.get_secret_value())
    active, unknown = "SactiveKeyForTheHaproxyTest0001", "SunknownKeyNotInTheVault00000001"
    digest = key_hash(secret, active)
    vault = tmp_path / "vault.map"
    vault.write_text(f"{digest} 123456789,pro,1000,1,active\n")
    proxy = HAProxy(tmp_path, backend.port, vault).start()
    tailer = Process(["tail", str(proxy.log), "--checkpoint", str(tmp_path / "cp")],
                     {"MS_KAFKA__BOOTSTRAP": ms_topics.kafka.bootstrap,
                      "MS_KAFKA__TOPIC_PREFIX": ms_topics.kafka.topic_prefix},
                     tmp_path / "tail.log").start()
    try:
        sent = []
        for i in range(5):
            status, body, size = proxy.request(f"/v1/fetch_key/{i}?q=1", active)
            assert status == 200
            assert orjson.loads(body)["api_key_forwarded"] is False  # the key stops at HAProxy
            sent.append(("active", status, size, orjson.loads(body)["request_id"]))
        for _ in range(2):
            status, _, size = proxy.request(key=unknown)
            sent.append(("unknown", status, size, None))
        status, _, size = proxy.request()
        sent.append(("none", status, size, None))
        records = await consume(ms_topics.kafka, ms_topics.topic("haproxy.logs"), expect=len(sent))
    finally:
        tailer.terminate()
        proxy.stop()

    lines = [line for line in proxy.log.read_bytes().splitlines() if line.startswith(b"{")]
    # every line HAProxy logged is the record's line: ingest's fast decoder takes it as it is
    record_tier = FastJson(classic=False)
    assert all(record_tier.encoded(line, "edge1:1:2:ab12cd34", 0) is not None for line in lines), lines
    logged = {v["request_id"]: v for v in map(orjson.loads, lines)}
    assert active not in proxy.log.read_text() and unknown not in proxy.log.read_text()
    # HAProxy writes a line when a stream ends; with several threads, consecutive requests'
    # lines can come out of order, so records are matched to requests by request id
    by_id = {v["request_id"]: v for _, v in records}
    assert len(by_id) == len(records) == len(logged) == len(sent)
    for request_id, record in by_id.items():
        haproxy_said = logged[request_id]  # every record is a line HAProxy logged, field by field
        for name in ("status", "TR", "Tw", "Tc", "Tr", "Ta", "termination_state", "client_ip"):
            assert record[name] == haproxy_said[name], name
        # %B is HAProxy's count in its internal (HTX) form, a little below the bytes on the
        # wire; the record carries exactly what HAProxy logged
        assert record["bytes_sent"] == haproxy_said["bytes_sent"]
        assert record["Ta"] >= 0 and record["TR"] >= 0
    for kind, status, size, backend_request_id in sent:
        if kind == "active":
            record = by_id[backend_request_id]  # the id the backend saw is the record's
            assert record["status"] == status == 200
            assert len(orjson.dumps({"request_id": backend_request_id, "api_key_forwarded": False})) \
                < record["bytes_sent"] <= size
            assert record["api_key_fp"] == fingerprint_of_hash(digest)
            assert record["Tc"] >= 0 and record["Tr"] >= 0 and record["Ta"] >= record["Tr"]
            assert (record["traffic_type"], record["event_type"], record["path"]) == (1, 0, "v1/fetch_k")
    refused = [r for r in by_id.values() if r["status"] == 401]
    unknown_fp = fingerprint_of_hash(key_hash(secret, unknown))
    # the unknown key still yields records, with its fingerprint; resolution finds no customer later
    assert sorted((r["api_key_fp"] is None, r["event_type"]) for r in refused) == [
        (False, 11), (False, 11), (True, 10)]
    assert {r["api_key_fp"] for r in refused if r["event_type"] == 11} == {unknown_fp}
    for r in refused:
        assert (r["Tw"], r["Tc"], r["Tr"], r["termination_state"]) == (-1, -1, -1, "PR--")
        assert 0 < r["bytes_sent"] <= max(size for kind, _, size, _ in sent if kind != "active")


def test_runtime_api_changes_enforcement_without_reload(
    haproxy_installed: None, backend: EchoBackend, tmp_path: Path
) -> None:
    settings = Settings()
    secret = base64.b64decode(settings.keys.key_secret_b64.get_secret_value())
    key = "SruntimeApiKey000000000000000001"
    digest = key_hash(secret, key)
    proxy = HAProxy(tmp_path, backend.port).start()
    try:
        assert proxy.request(key=key)[0] == 401
        for status_word, expected in (("active", 200), ("suspended", 403), ("throttled", 429), ("active", 200)):
            version = proxy.runtime(f"prepare map {proxy.vault_map}").split()[-1]
            proxy.runtime(f"add map @{version} {proxy.vault_map} {digest} 1,pro,1000,1,{status_word}")
            proxy.runtime(f"commit map @{version} {proxy.vault_map}")
            assert proxy.request(key=key)[0] == expected, status_word
        assert proxy.proc is not None and proxy.proc.poll() is None
    finally:
        proxy.stop()
