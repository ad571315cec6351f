"""Loads the sample customers of deploy/sample/customers.json into Postgres, idempotently.

Keys are stored as SPEC §1 decision 5 says: the full key AES-GCM encrypted in api_key_id, its
HMAC in api_key_hash and the fingerprint in api_key_fp. Loading twice changes nothing.
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
from meterstream.crypto import Sealer
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
    secret = base64.b64decode(settings.keys.key_secret_b64.get_secret_value())
    sealer = Sealer(settings.keys.key_store_b64.get_secret_value())
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
                    sealer.seal_text(k["key"]), digest, fingerprint_of_hash(digest),
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
