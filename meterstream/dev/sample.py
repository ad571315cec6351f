"""Loads the sample customers of deploy/sample/customers.json into Postgres, idempotently.

Keys are stored as docs/schema.md and docs/security.md say: the full key sealed in api_key_id (AES-256-GCM
under the key-store key, bound to the row's hash: meterstream/key_store.py), its HMAC in
api_key_hash and the fingerprint in api_key_fp. Loading twice changes nothing.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from meterstream import checkout_root
from meterstream.builtin_keys import require
from meterstream.key_store import KeyStore
from meterstream.schemas.apikeys import fingerprint_of_hash, key_hash
from meterstream.schemas.enums import ServiceType
from meterstream.settings import Settings


def sample_file() -> Path:
    root = checkout_root()
    if root is None:
        raise FileNotFoundError("the sample data ships with the source checkout (deploy/sample)")
    return root / "deploy" / "sample" / "customers.json"


@dataclass(frozen=True, slots=True)
class Loaded:
    customers: int
    instances: int
    api_keys: int
    seal_keys: int


async def load(conn: asyncpg.Connection, settings: Settings, path: Path | None = None) -> Loaded:
    data: dict[str, Any] = json.loads((path or sample_file()).read_text())
    secret = base64.b64decode(require(settings, "keys.key_secret_b64"))
    store = KeyStore.from_settings(settings)
    counts = {"customers": 0, "instances": 0, "api_keys": 0, "seal_keys": 0}
    async with conn.transaction():
        for c in data["customers"]:
            await conn.execute(
                """INSERT INTO customers (customer_id, name, email, spend_window, spend_cap_cents,
                                          balance_cents, committed_charges_cents)
                   VALUES ($1, $2, $3, $4, $5, $6, $7)
                   ON CONFLICT (customer_id) DO NOTHING""",
                c["customer_id"], c["name"], c.get("email"), c["spend_window"],
                c["spend_cap_cents"], c.get("balance_cents", 0), c.get("committed_charges_cents", 0),
            )
            counts["customers"] += 1
            for s in c["services"]:
                await conn.execute(
                    """INSERT INTO service_instances (customer_id, service_type, tier, enabled, config)
                       VALUES ($1, $2, $3, $4, $5::jsonb)
                       ON CONFLICT (customer_id, service_type) DO NOTHING""",
                    c["customer_id"], s["service_type"], s["tier"], s.get("enabled", True),
                    orjson.dumps(s.get("config", {})).decode(),
                )
                counts["instances"] += 1
            for k in c["api_keys"]:
                digest = key_hash(secret, k["key"])
                revoked = k["status"] == "revoked"
                await conn.execute(
                    """INSERT INTO api_keys (api_key_id, api_key_hash, api_key_fp, customer_id,
                                             service_type, status, revoked_at)
                       VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $7 THEN now() END)
                       ON CONFLICT (api_key_hash) DO NOTHING""",
                    store.seal(k["key"], digest), digest, fingerprint_of_hash(digest),
                    c["customer_id"], int(ServiceType.from_key_prefix(k["key"][0])),
                    k["status"], revoked,
                )
                counts["api_keys"] += 1
            for sk in c["seal_keys"]:
                await conn.execute(
                    """INSERT INTO seal_keys (seal_key_id, customer_id) VALUES ($1, $2)
                       ON CONFLICT (seal_key_id) DO NOTHING""",
                    sk["seal_key_id"], c["customer_id"],
                )
                await conn.executemany(
                    """INSERT INTO seal_key_packages (seal_key_id, package_id) VALUES ($1, $2)
                       ON CONFLICT DO NOTHING""",
                    [(sk["seal_key_id"], p) for p in sk["package_ids"]],
                )
                counts["seal_keys"] += 1
    return Loaded(**counts)


# -- a sample HAProxy log over the sample customers ------------------------------------------

SAMPLE_LOG_LINES = 600
SAMPLE_START_MS = 1_795_600_000_000  # 2026-11-25T07:06:40Z


def write_sample_log(path: Path, settings: Settings, data_file: Path | None = None) -> bool:
    """Writes a deterministic HAProxy log (deploy/haproxy/haproxy.cfg's JSON lines) whose
    requests use the sample customers' keys, a revoked key, an unknown key and no key, with
    some errors, one httplog line and two lines that do not parse. Returns False when the file
    exists already (it is kept, so that the tailer's checkpoint stays valid)."""
    import random

    if path.exists():
        return False
    data: dict[str, Any] = json.loads((data_file or sample_file()).read_text())
    secret = base64.b64decode(require(settings, "keys.key_secret_b64"))
    # (key, whether HAProxy's vault lets it through): revoked and unknown keys get 401
    keys = [(k["key"], k["status"] == "active") for c in data["customers"] for k in c["api_keys"]]
    keys += [("SunknownDemoKey000000000000000001", False), (None, False)]
    weights = [30, 12, 2, 10, 20, 3, 1][: len(keys)] + [1] * max(0, len(keys) - 7)
    rng = random.Random(42)
    lines = []
    for i in range(SAMPLE_LOG_LINES):
        key, allowed = rng.choices(keys, weights=weights[: len(keys)])[0]
        fp = fingerprint_of_hash(key_hash(secret, key)) if key else None
        status = rng.choices([200, 200, 200, 200, 304, 404, 500], k=1)[0] if allowed else 401
        event = 0 if allowed else (11 if key else 10)
        ts = SAMPLE_START_MS + i * 250
        service = ServiceType.from_key_prefix(key[0]) if key else ServiceType.SEAL
        # the record's line, as HAProxy's log-format writes it (no customer hint: the worker
        # resolves every key)
        lines.append(
            f'{{"ts":{ts},"request_id":"0A000001:{i:04X}_0A000002:1F90_'
            f'{ts // 1000:08X}_{i:04X}:0001","client_ip":"192.0.2.{i % 200}",'
            f'"api_key_fp":{"null" if fp is None else fp},'
            f'"service_type":{int(service)},"network":1,"server_id":17,"fe_type":2,'
            f'"traffic_type":{1 if allowed else 3},"event_type":{event},'
            f'"key_metadata":{json.dumps(key[0]) if key else "null"},"status":{status},'
            f'"bytes_sent":{rng.randint(150, 4000)},"path":"v1\\/fetch_k","TR":0,"Tw":0,'
            f'"Tc":1,"Tr":{rng.randint(1, 40)},"Ta":{rng.randint(41, 60)},"backend_id":3,'
            f'"termination_state":"----","config_hex":"00000000","customer_id":null}}'
        )
    lines.insert(100, "this line is not a HAProxy log line")
    lines.insert(300, '{"ts": 1795600075.000, "request_id": "cut-off')
    lines.insert(400, "192.0.2.9:40722 [25/Nov/2026:07:08:20.000] api~ api_servers/<NOSRV> "
                      "0/-1/-1/-1/0 503 212 - - SC-- 1/1/0/0/0 0/0 \"GET /v1/fetch_key HTTP/1.1\"")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return True
