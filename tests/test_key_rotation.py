"""`meterstream keys rotate-store` (meterstream/key_rotation.py) against Postgres: every row
re-sealed under the new key-store key, in batches, resumable after an interruption, rows that
open under no key reported by fingerprint; re-sealing notifies nobody (migration 0007)."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess

import asyncpg
import orjson
import pytest

from meterstream.crypto import Sealer
from meterstream.dev.processes import meterstream_exe
from meterstream.key_rotation import Rotation, rotate_store
from meterstream.key_store import KeyStore
from meterstream.schemas.apikeys import fingerprint_of_hash, fingerprint_to_hex, key_hash

pytestmark = pytest.mark.services

OLD = base64.b64encode(os.urandom(32)).decode()
NEW = base64.b64encode(os.urandom(32)).decode()
SECRET = os.urandom(32)
CUSTOMER = 4242


class Interrupted(Exception):
    pass


async def add_key(pg: asyncpg.Connection, api_key: str, sealed_with: str) -> tuple[str, str]:
    digest = key_hash(SECRET, api_key)
    sealed = {"old": lambda: KeyStore(OLD).seal(api_key, digest),
              "legacy": lambda: Sealer(OLD).seal_text(api_key),  # before key ids: no id, no context
              "new": lambda: KeyStore(NEW).seal(api_key, digest),
              "garbage": lambda: "not-a-sealed-key-" + digest[:8]}[sealed_with]()
    await pg.execute("INSERT INTO api_keys (api_key_id, api_key_hash, api_key_fp, customer_id, service_type) "
                     "VALUES ($1, $2, $3, $4, 1)", sealed, digest, fingerprint_of_hash(digest), CUSTOMER)
    return api_key, digest


def rotate_command(dsn: str, *args: str, sslmode: str = "disable") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MS_")}
    env.update({"MS_POSTGRES__DSN": dsn, "MS_KEYS__KEY_STORE_B64": NEW,  # production: no MS_DEV
                "MS_KEYS__KEY_STORE_PREVIOUS_B64": orjson.dumps([OLD]).decode()})
    if sslmode:  # the local Postgres is plaintext; "" leaves production's default, verify-full
        env["MS_POSTGRES__SSLMODE"] = sslmode
    return subprocess.run([meterstream_exe(), "keys", "rotate-store", *args], capture_output=True, text=True,
                          timeout=120, env=env)


async def test_rotate_store_reseals_every_row_and_resumes(pg: asyncpg.Connection, pg_dsn: str) -> None:
    await pg.execute("INSERT INTO customers (customer_id, name) VALUES ($1, 'c')", CUSTOMER)
    kinds = ["old", "legacy", "old", "new", "legacy", "old", "old"]
    keys = [await add_key(pg, f"Srotate{i:026d}", kind) for i, kind in enumerate(kinds)]
    garbage = (await add_key(pg, "Sgarbage0000000000000000000000001", "garbage"))[1]
    notified: list[str] = []
    listener = await asyncpg.connect(pg_dsn)
    await listener.add_listener("meterstream_config", lambda *args: notified.append(args[-1]))
    store = KeyStore(NEW, [OLD])
    try:
        # a run interrupted after its first batch keeps what it committed
        def interrupt(done: Rotation) -> None:
            raise Interrupted

        with pytest.raises(Interrupted):
            await rotate_store(pg, store, batch_rows=3, progress=interrupt)
        under_new = await pg.fetchval("SELECT count(*) FROM api_keys WHERE api_key_id LIKE $1", f"{store.current_id}:%")
        first_batch = sorted([d for (_, d), kind in zip(keys, kinds, strict=True) if kind != "new"] + [garbage])[:3]
        assert under_new == 1 + len([d for d in first_batch if d != garbage])

        # the real command goes on where it stopped
        first = rotate_command(pg_dsn, "--batch", "2")
        assert first.returncode == 1, first.stderr  # the garbage row
        assert fingerprint_to_hex(fingerprint_of_hash(garbage)) in first.stderr
        assert "1 rows open under no configured key" in first.stderr
        rows = {r["api_key_hash"].strip(): r["api_key_id"] for r in await pg.fetch("SELECT * FROM api_keys")}
        for api_key, digest in keys:
            assert rows[digest].startswith(f"{store.current_id}:")
            assert KeyStore(NEW).open(rows[digest], digest) == api_key  # the old key is no longer needed
        for out in (first.stdout, first.stderr):
            assert NEW not in out and OLD not in out and not any(k in out for k, _ in keys)

        second = rotate_command(pg_dsn)
        assert second.returncode == 1 and "0 rows re-sealed" in second.stdout
        assert f"{len(keys)} were under it already" in second.stdout
        await pg.execute("DELETE FROM api_keys WHERE api_key_hash = $1", garbage)
        assert rotate_command(pg_dsn).returncode == 0

        await asyncio.sleep(0.5)
        deleted = fingerprint_of_hash(garbage)
        assert [orjson.loads(n)["api_key_fp"] for n in notified] == [deleted]  # only the delete notified
        # any other change of a key still notifies (migration 0003's trigger, as amended by 0007)
        await pg.execute("UPDATE api_keys SET status = 'revoked', revoked_at = now() WHERE api_key_hash = $1",
                         keys[0][1])
        await asyncio.sleep(0.5)
        assert orjson.loads(notified[-1])["api_key_fp"] == fingerprint_of_hash(keys[0][1])
    finally:
        await listener.close()


def test_a_refused_connection_is_one_line_and_exit_2(pg_dsn: str) -> None:
    """Production's default sslmode (verify-full) against a Postgres without TLS: the command
    says which setting to look at, in one line, without a traceback or the DSN."""
    done = rotate_command(pg_dsn, sslmode="")
    assert done.returncode == 2, done.stderr
    assert "postgres.sslmode is verify-full" in done.stderr
    assert "Traceback" not in done.stderr and pg_dsn not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
