"""Where the vault goes: encrypted versions on disk with their row in ``vault_versions``, and
the plain HAProxy map file beside them (docs/sinks.md).

- The content is the canonical JSON of every entry (sorted keys, entries by customer id);
  its SHA-256 is the content hash. A version is written only when the hash differs from the
  latest version's.
- A version file is ``vault-<version>.enc``: AES-256-GCM (``meterstream.crypto.Sealer``,
  the `cryptography` library) of the canonical JSON, with the version number as associated
  data, so a file renamed to another version does not decrypt.
- Files are written by ``meterstream.atomic_file.write_atomically``: a temporary file created
  beside the target with ``O_EXCL | O_NOFOLLOW``, flushed to disk, made ``0600`` (never
  world-readable) and renamed over the target: a reader sees the old file or the new one, never
  half of one. (The map's mode and group are settings: sinks/vault.py.)
- A version that does not decrypt under ``vault.key_b64`` is tried under each of
  ``vault.previous_keys_b64`` (the versions written before the key was rotated).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path

import asyncpg
import orjson

from meterstream.atomic_file import FILE_MODE, write_atomically
from meterstream.crypto import DecryptError, Sealer
from meterstream.schemas.vault import VaultEntry

__all__ = ["FILE_MODE", "VaultStore", "canonical", "content_hash", "map_text", "write_atomically"]
_VERSION_FILE = re.compile(r"^vault-(\d+)\.enc$")


def canonical(entries: list[VaultEntry]) -> bytes:
    return orjson.dumps({f"customer:{e.customer_id}": e.model_dump(mode="json", exclude={"v"}) for e in entries},
                        option=orjson.OPT_SORT_KEYS)


def content_hash(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _context(version: int) -> bytes:
    return b"meterstream-vault:%d" % version


class VaultStore:
    def __init__(self, directory: Path, key_b64: str, previous_b64: Iterable[str] = ()) -> None:
        self.directory = directory
        self.sealer = Sealer(key_b64)
        self.previous = [Sealer(key) for key in previous_b64]
        self.latest: tuple[int, float] | None = None  # the latest version and when it was written (epoch s)

    def path_of(self, version: int) -> Path:
        return self.directory / f"vault-{version:010d}.enc"

    async def write_version(self, conn: asyncpg.Connection, entries: list[VaultEntry]) -> int | None:
        """Writes a new version if the content changed; returns it (None: unchanged)."""
        content = canonical(entries)
        digest = content_hash(content)
        async with conn.transaction():
            await conn.execute("LOCK TABLE vault_versions IN EXCLUSIVE MODE")  # one writer at a time
            latest = await conn.fetchrow("SELECT version, content_hash, extract(epoch FROM created_at) AS at "
                                         "FROM vault_versions ORDER BY version DESC LIMIT 1")
            if latest is not None:
                self.latest = (latest["version"], float(latest["at"]))
            if latest is not None and latest["content_hash"] == digest:
                return None
            version = 1 if latest is None else latest["version"] + 1
            path = self.path_of(version)
            self.directory.mkdir(parents=True, exist_ok=True)
            write_atomically(path, self.sealer.seal(content, _context(version)))
            created = await conn.fetchval(
                "INSERT INTO vault_versions (version, content_hash, customer_count, path) "
                "VALUES ($1, $2, $3, $4) RETURNING extract(epoch FROM created_at)",
                version, digest, len(entries), str(path))
        self.latest = (version, float(created))
        return version

    def decrypt(self, path: Path) -> bytes:
        """The canonical JSON of a version file. Raises DecryptError with a clear message."""
        match = _VERSION_FILE.match(path.name)
        if match is None:
            raise DecryptError(f"{path.name} is not a vault version file (vault-<version>.enc)")
        try:
            sealed = path.read_bytes()
        except OSError as exc:
            raise DecryptError(f"cannot read {path}: {exc.strerror}") from None
        for sealer in (self.sealer, *self.previous):
            try:
                return sealer.open(sealed, _context(int(match.group(1))))
            except DecryptError:
                continue
        raise DecryptError(f"cannot decrypt {path.name}: wrong vault key, or the file was altered "
                           "or renamed")


def map_text(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode() if lines else b""
