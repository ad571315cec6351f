"""Kafka over TLS and SASL, against the real broker's SASL_SSL listener (SCRAM-SHA-512, the
development CA: meterstream dev up makes it): the whole pipeline (sync-config, tail, worker,
sink-postgres, vault) runs a log through that listener alone and the result is exact; a wrong
password, an untrusted certificate, a refused client certificate or a TLS listener spoken to
in plaintext are said at once, and end a process with exit code 2 within seconds."""

from __future__ import annotations

import asyncio
import base64
import time
from collections import Counter
from pathlib import Path

import asyncpg
import orjson
import pytest
from pydantic import SecretStr

from meterstream import settings as settings_mod
from meterstream.dev import sample
from meterstream.dev.processes import Process, kafka_env, wait_for
from meterstream.dev.services.kafka_tls import make_ca, sign
from meterstream.kafka import delete_topics_with_prefix, ensure_topics, read_to_end
from meterstream.kafka_access import KafkaAccessRefused, check
from meterstream.schemas import topics
from meterstream.schemas.apikeys import fingerprint_of_hash, fingerprint_to_hex, key_hash
from meterstream.settings import KafkaSettings
from tests.conftest import unique

pytestmark = pytest.mark.services

ACME, INITECH = 184467441, 1299827003
ACME_KEY, INITECH_KEY = "SacmeSealDemoKey00000000000000001", "SinitechSealDemoKey00000000000001"
UNKNOWN_KEY = "SunknownDemoKey000000000000000001"
VAULT_KEY = base64.b64encode(b"t" * 32).decode()
WRONG = "not-the-password-7f3a"


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA the broker does not know, and a client certificate it signed."""
    root = tmp_path_factory.mktemp("foreign-ca")
    ca = make_ca(root, "not the development CA")
    sign(ca, root / "client.pem", root / "client.key", "intruder", "clientAuth", None)
    return {"ca": ca[0], "cert": root / "client.pem", "key": root / "client.key"}


async def refused_within(kafka: KafkaSettings, seconds: float) -> str:
    started = time.monotonic()
    with pytest.raises(KafkaAccessRefused) as refused:
        await check(kafka)
    assert time.monotonic() - started < seconds
    return str(refused.value)


async def test_the_listener_takes_scram_and_refuses_the_rest_at_once(secure_kafka: KafkaSettings,
                                                                     foreign: dict[str, Path]) -> None:
    assert await check(secure_kafka) is None
    ca = str(secure_kafka.ssl_cafile)
    mutual = secure_kafka.model_copy(update={"ssl_certfile": ca.replace("ca.pem", "client.pem"),
                                             "ssl_keyfile": ca.replace("ca.pem", "client.key")})
    assert await check(mutual) is None  # a client certificate of the development CA is taken

    wrong = secure_kafka.model_copy(update={"sasl_password_file": "", "sasl_password": SecretStr(WRONG)})
    said = await refused_within(wrong, 5)
    assert "refused SASL SCRAM-SHA-512 authentication of user 'meterstream-dev'" in said and WRONG not in said

    said = await refused_within(secure_kafka.model_copy(update={"ssl_cafile": str(foreign["ca"])}), 5)
    assert "is not trusted (kafka.ssl_cafile)" in said

    intruder = secure_kafka.model_copy(update={"ssl_certfile": str(foreign["cert"]),
                                               "ssl_keyfile": str(foreign["key"])})
    assert "refused this client's TLS certificate" in await refused_within(intruder, 5)

    plaintext = KafkaSettings(bootstrap=secure_kafka.bootstrap)
    assert "answered in TLS" in await refused_within(plaintext, 5)

    other = secure_kafka.model_copy(update={"sasl_mechanism": "SCRAM-SHA-256"})
    assert "does not take SASL SCRAM-SHA-256" in await refused_within(other, 5)


@pytest.mark.parametrize("case", ["wrong password", "untrusted certificate"])
async def test_a_refused_process_exits_2_within_seconds(case: str, secure_kafka: KafkaSettings, pg_dsn: str,
                                                        foreign: dict[str, Path], tmp_path: Path) -> None:
    env = {**kafka_env(secure_kafka), "MS_KAFKA__TOPIC_PREFIX": unique("tls") + ".", "MS_POSTGRES__DSN": pg_dsn}
    if case == "wrong password":
        del env["MS_KAFKA__SASL_PASSWORD_FILE"]
        env["MS_KAFKA__SASL_PASSWORD"] = WRONG
        expected = "refused SASL SCRAM-SHA-512 authentication"
    else:
        env["MS_KAFKA__SSL_CAFILE"] = str(foreign["ca"])
        expected = "is not trusted (kafka.ssl_cafile)"
    for command in (["worker"], ["sink-postgres"], ["tail", str(tmp_path / "none.log"), "--checkpoint",
                                                    str(tmp_path / "cp")]):
        proc = Process(command, env, tmp_path / f"{command[0]}.log").start()
        started = time.monotonic()
        assert proc.proc is not None
        assert proc.proc.wait(30) == 2, command
        took = time.monotonic() - started
        assert took < 20, f"{command[0]} took {took:.1f} s to give up"
        said = (tmp_path / f"{command[0]}.log").read_text()
        assert expected in said and "exiting" in said, said[-2000:]
        assert WRONG not in said


def haproxy_line(i: int, key: str | None, secret: bytes, now_s: int) -> str:
    """A line as deploy/haproxy/haproxy.cfg logs it: served (200) with a known key, refused
    (401) with an unknown one."""
    fp = fingerprint_to_hex(fingerprint_of_hash(key_hash(secret, key))) if key else "-"
    served = key in (ACME_KEY, INITECH_KEY)
    ts = (now_s - 240) * 1000 + i * 500  # the last four minutes: no window is late, none ahead
    return (f'{{"ts":{ts // 1000}.{ts % 1000:03d},"request_id":"tls-{i:06d}","client_ip":"192.0.2.{i % 250}",'
            f'"api_key_fp":"{fp}","service_type":"1","network":"1","server_id":"17","fe_type":"2",'
            f'"traffic_type":"{1 if served else 3}","event_type":"{0 if served else 11}","key_metadata":"S",'
            f'"status":{200 if served else 401},"bytes_sent":"{300 + i}","path":"v1\\/fetch_k","TR":0,"Tw":0,'
            f'"Tc":1,"Tr":3,"Ta":5,"backend_id":"3","termination_state":"----","config_hex":"00000000"}}')


async def test_the_whole_pipeline_through_sasl_ssl_exactly(secure_kafka: KafkaSettings, pg_dsn: str,
                                                           pg: asyncpg.Connection, tmp_path: Path) -> None:
    """sync-config, tail, worker, sink-postgres and vault, each knowing only the SASL_SSL
    listener (with a client certificate: mutual TLS too): every line is stored once, every
    request is counted once, the dead letters and the vault's updates arrive."""
    kafka = secure_kafka.model_copy(update={
        "topic_prefix": unique("tls") + ".",
        "ssl_certfile": secure_kafka.ssl_cafile.replace("ca.pem", "client.pem"),
        "ssl_keyfile": secure_kafka.ssl_cafile.replace("ca.pem", "client.key")})
    settings = settings_mod.load(None, kafka=kafka.model_dump(), postgres={"dsn": pg_dsn})
    await ensure_topics(settings, partitions=2)  # the admin client through SASL_SSL too
    await sample.load(pg, settings)
    secret = base64.b64decode(settings.keys.key_secret_b64.get_secret_value())
    keys = [ACME_KEY] * 3 + [INITECH_KEY] * 2 + [UNKNOWN_KEY]
    now_s = int(time.time())
    lines = [haproxy_line(i, keys[i % len(keys)], secret, now_s) for i in range(480)]
    lines.insert(100, "this line is not a HAProxy log line")
    lines.insert(300, '{"ts": 1795600075.000, "request_id": "cut-off')
    log = tmp_path / "haproxy.log"
    log.write_text("\n".join(lines) + "\n")
    served = Counter(keys[i % len(keys)] for i in range(480))

    (tmp_path / "vault").mkdir()
    env = {**kafka_env(settings.kafka), "MS_POSTGRES__DSN": pg_dsn, "MS_VAULT__DIRECTORY": str(tmp_path / "vault"),
           "MS_VAULT__KEY_B64": VAULT_KEY}
    procs = [Process(["sync-config"], env, tmp_path / "sync.log"),
             Process(["worker"], env, tmp_path / "worker.log"),
             Process(["tail", str(log), "--checkpoint", str(tmp_path / "tail.cp")], env, tmp_path / "tail.log"),
             Process(["sink-postgres"], env, tmp_path / "sink.log"),
             Process(["vault"], env, tmp_path / "vault.log")]
    try:
        # the configuration first: records metered before the worker knows the keys are
        # unauthenticated, by design
        procs[0].start()
        deadline = time.monotonic() + 60
        while len(await read_to_end(settings, settings.topic(topics.METER_APIKEYS))) < 4:
            assert time.monotonic() < deadline and procs[0].running(), procs[0].log.read_text()[-3000:]
            await asyncio.sleep(0.5)
        procs[1].start()

        def worker_knows_the_keys() -> bool:
            status, body = procs[1].get("/healthz", timeout=60)
            return status == 200 and orjson.loads(body)["config_keys"] >= 4

        await asyncio.to_thread(wait_for, worker_knows_the_keys, 90, "the worker's configuration")
        for p in procs[2:]:
            p.start()

        async def usage() -> dict[int, int]:
            return {r["customer_id"]: r["requests"] for r in await pg.fetch(
                "SELECT customer_id, sum(requests)::bigint AS requests FROM usage_records GROUP BY 1")}

        truth = {ACME: served[ACME_KEY], INITECH: served[INITECH_KEY]}
        deadline = time.monotonic() + 150
        while True:
            got = await usage()
            stored = await pg.fetchval("SELECT count(*) FROM haproxy_raw_logs")
            if {c: got.get(c) for c in truth} == truth and stored == 480:
                break
            for p in procs:
                assert p.running(), f"{p.args[0]} exited: {p.log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"usage {got}, raw rows {stored} (truth {truth}, 480 rows)"
            await asyncio.sleep(1)
        await asyncio.sleep(3)  # nothing more arrives: no request counted twice
        assert {c: (await usage()).get(c) for c in truth} == truth
        rows = await pg.fetch("SELECT request_id, count(*) AS n FROM haproxy_raw_logs GROUP BY 1")
        assert sorted(r["request_id"] for r in rows) == [f"tls-{i:06d}" for i in range(480)]
        assert {r["n"] for r in rows} == {1}

        dead = [orjson.loads(v) for _, v in await read_to_end(settings, settings.topic(topics.HAPROXY_LOGS_REJECTED))
                if v is not None]
        assert len(dead) == 2
        wait_for(lambda: (tmp_path / "vault" / "vault.map").exists(), 30, "the vault's map")
        assert await pg.fetchval("SELECT count(*) FROM vault_versions") >= 1
        updates = await read_to_end(settings, settings.topic(topics.VAULT_UPDATES))
        assert {int(k.split(b":")[-1]) for k, _ in updates if k} >= {ACME, INITECH}
        for p in procs:
            status, body = p.get("/healthz")
            assert status == 200, (p.args[0], body)
        for p in reversed(procs):
            assert p.terminate() == 0, p.args[0]
        for p in procs:
            assert "Unable to bootstrap" not in p.log.read_text()
    finally:
        for p in procs:
            if p.running():
                p.kill9()
        await delete_topics_with_prefix(settings)  # through SASL_SSL too; the worker's changelogs with them
