"""`meterstream vault`: MA_VAULT from Postgres to disk, to HAProxy and to vault.updates.

It rebuilds the vault (sinks/vault_state.py) when Postgres notifies a change (customers,
service instances, API keys: ``meterstream_config``; limit events, seal keys:
``meterstream_vault``), and every ``vault.interval_s`` in any case. Each build:

1. writes the HAProxy map file (by rename, mode 0600) when its content changed, and replaces
   the map live through every configured Runtime API socket (no reload);
2. writes an encrypted version and its ``vault_versions`` row when the content hash changed
   (sinks/vault_store.py);
3. publishes each changed entry to the compacted ``vault.updates`` (a tombstone for a customer
   that is gone), acknowledged by Kafka; what the topic holds is read back at start.

Postgres or Kafka away: retried with backoff; HAProxy away: the map file is written anyway
(a reload picks it up) and the live update is retried at the next build.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg

from meterstream import logs, pg
from meterstream.kafka import read_to_end
from meterstream.producer import Message, RoundProducer
from meterstream.schemas import topics
from meterstream.schemas.enums import VaultStatus
from meterstream.schemas.topics import key_of
from meterstream.schemas.wire import encode
from meterstream.service import FailureClock
from meterstream.settings import Settings
from meterstream.sinks import metrics
from meterstream.sinks.haproxy_runtime import replace_map
from meterstream.sinks.vault_state import VaultState, build
from meterstream.sinks.vault_store import VaultStore, map_text, write_atomically

log = logs.get(__name__)
CHANNELS = ("meterstream_config", "meterstream_vault")


class Vault:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        cfg = settings.vault
        self.store = VaultStore(Path(cfg.directory), cfg.key_b64.get_secret_value())
        self.map_path = cfg.map_file()
        self.published: dict[int, bytes] = {}  # customer -> the entry vault.updates holds
        self.map_content: bytes | None = None
        self.runtime_pending = set(cfg.runtime_sockets)  # sockets not yet given the current map
        self.wake = asyncio.Event()
        self.stop_requested = asyncio.Event()
        self.producer = RoundProducer(settings, "vault", metrics.VAULT_PRODUCE_LATENCY, metrics.VAULT_PRODUCE_FAILURES)
        self.failure = FailureClock()
        self.builds = 0

    def health(self) -> tuple[bool, dict[str, object]]:
        return self.failure.healthy(), {"builds": self.builds, "failing_s": round(self.failure.seconds(), 1)}

    def request_stop(self) -> None:
        self.stop_requested.set()
        self.wake.set()

    def _notified(self, *_: object) -> None:
        self.wake.set()

    async def prepare(self) -> None:
        """What vault.updates and the map file hold already."""
        name = self.settings.topic(topics.VAULT_UPDATES)
        for key, value in await read_to_end(self.settings, name):
            if key is not None:
                if value is None:
                    self.published.pop(int(key), None)
                else:
                    self.published[int(key)] = value
        if self.map_path.exists():
            self.map_content = self.map_path.read_bytes()

    async def run(self) -> None:
        await self.prepare()
        attempt = 0
        while not self.stop_requested.is_set():
            conn: asyncpg.Connection | None = None
            try:
                conn = await pg.connect(self.settings, give_up_after_s=0)
                for channel in CHANNELS:
                    await conn.add_listener(channel, self._notified)
                while not self.stop_requested.is_set():
                    self.wake.clear()
                    await self.build_once(conn)
                    attempt = 0
                    self.failure.recovered()
                    try:
                        await asyncio.wait_for(self.wake.wait(), self.settings.vault.interval_s)
                    except TimeoutError:
                        pass
                    await asyncio.sleep(self.settings.vault.debounce_s)  # let a burst of changes arrive
            except pg.TRANSIENT as exc:
                attempt += 1
                metrics.VAULT_FAILURES.inc()
                self.failure.failed()
                log.warning("postgres unavailable, retrying", error=type(exc).__name__, attempt=attempt)
                try:
                    await asyncio.wait_for(self.stop_requested.wait(), min(5.0, 0.2 * 2 ** attempt))
                except TimeoutError:
                    pass
            finally:
                if conn is not None and not conn.is_closed():
                    await conn.close()
        await self.producer.stop()

    async def build_once(self, conn: asyncpg.Connection) -> VaultState:
        started = time.perf_counter()
        state = await build(conn)
        metrics.VAULT_BUILDS.inc()
        metrics.VAULT_BUILD_SECONDS.observe(time.perf_counter() - started)
        self.builds += 1
        # 1. what HAProxy enforces
        content = map_text(state.map_lines)
        if content != self.map_content:
            self.map_path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self.map_path, content)
            self.map_content = content
            self.runtime_pending = set(self.settings.vault.runtime_sockets)
            metrics.VAULT_MAP_WRITES.inc()
            log.info("map written", path=str(self.map_path), keys=len(state.map_lines))
        for socket in sorted(self.runtime_pending):
            try:
                version = await replace_map(socket, str(self.map_path), state.map_lines)
                self.runtime_pending.discard(socket)
                metrics.VAULT_RUNTIME_UPDATES.labels("ok").inc()
                log.info("map replaced live", socket=socket, map_version=version, keys=len(state.map_lines))
            except (OSError, TimeoutError, RuntimeError) as exc:
                metrics.VAULT_RUNTIME_UPDATES.labels("failed").inc()
                log.warning("runtime API update failed; retried at the next build", socket=socket,
                            error=f"{type(exc).__name__}: {str(exc)[:200]}")
        # 2. the encrypted version
        version = await self.store.write_version(conn, state.entries)
        if version is not None:
            metrics.VAULT_VERSIONS.inc()
            log.info("vault version written", version=version, customers=len(state.entries))
        for status in VaultStatus:
            metrics.VAULT_CUSTOMERS.labels(status.value).set(sum(1 for e in state.entries if e.status is status))
        # 3. vault.updates
        name = self.settings.topic(topics.VAULT_UPDATES)
        current = {e.customer_id: encode(e) for e in state.entries}
        changed = [Message(name, key_of(e), current[e.customer_id]) for e in state.entries
                   if self.published.get(e.customer_id) != current[e.customer_id]]
        gone = [Message(name, str(c).encode(), None) for c in self.published if c not in current]
        if changed or gone:
            await self.producer.send_round(changed + gone)
            metrics.VAULT_UPDATES_PUBLISHED.inc(len(changed) + len(gone))
            self.published = current
        return state
