"""``meterstream keys rotate-store``: re-seal every ``api_keys.api_key_id`` under the current
key-store key (docs/security.md "Rotating the key-store key").

Rows are taken in ``api_key_hash`` order, a batch per transaction (locked, opened under
whichever configured key sealed them, sealed again under the current one, updated). A run that
stops half-way (killed, Postgres away) loses nothing: what it committed is under the current
key, and the next run only looks at rows that are not (their key id is not the current one),
so it goes on where the first stopped. A row that opens under no configured key is left as it
is and reported by its fingerprint (never by its key or hash). Migration 0007 keeps these
updates from notifying ``sync-config`` and the vault: the key's state does not change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg

from meterstream.key_store import KeyStore, KeyStoreError
from meterstream.schemas.apikeys import fingerprint_to_hex


@dataclass(slots=True)
class Rotation:
    total: int = 0  # rows in api_keys when the run started
    to_do: int = 0  # of which not under the current key
    resealed: int = 0
    failed: list[str] = field(default_factory=list)  # fingerprints (hex) of rows that open under no key


_BATCH_SQL = """
SELECT api_key_id, api_key_hash, api_key_fp FROM api_keys
WHERE api_key_hash > $1 AND NOT starts_with(api_key_id, $2)
ORDER BY api_key_hash LIMIT $3
FOR UPDATE
"""


async def rotate_store(conn: asyncpg.Connection, store: KeyStore, batch_rows: int = 500,
                       progress: Callable[[Rotation], None] | None = None) -> Rotation:
    prefix = f"{store.current_id}:"
    counts = await conn.fetchrow("SELECT count(*) AS total, count(*) FILTER (WHERE NOT starts_with(api_key_id, $1)) "
                                 "AS to_do FROM api_keys", prefix)
    assert counts is not None  # an aggregate without GROUP BY returns one row
    done = Rotation(total=counts["total"], to_do=counts["to_do"])
    after = ""
    while True:
        async with conn.transaction():
            rows = await conn.fetch(_BATCH_SQL, after, prefix, batch_rows)
            if not rows:
                break
            updates = []
            for row in rows:
                digest = row["api_key_hash"].strip()
                try:
                    updates.append((row["api_key_id"], store.seal(store.open(row["api_key_id"], digest), digest)))
                except KeyStoreError:
                    done.failed.append(fingerprint_to_hex(row["api_key_fp"]))
            await conn.executemany("UPDATE api_keys SET api_key_id = $2 WHERE api_key_id = $1", updates)
            after = rows[-1]["api_key_hash"]
        done.resealed += len(updates)
        if progress is not None:
            progress(done)
    return done


async def under_other_keys(conn: asyncpg.Connection, store: KeyStore) -> int:
    """How many rows are not sealed under the current key yet."""
    return await conn.fetchval("SELECT count(*) FROM api_keys WHERE NOT starts_with(api_key_id, $1)",
                               f"{store.current_id}:")
