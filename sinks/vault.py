"""`meterstream vault`: MA_VAULT from Postgres to disk, to HAProxy and to vault.updates.

It rebuilds the vault (sinks/vault_state.py) when Postgres notifies a change (customers,
service instances, API keys: ``meterstream_config``; limit events, seal keys:
``meterstream_vault``), and every ``vault.interval_s`` in any case. Each build:

1. writes the HAProxy map file (by rename; mode ``vault.map_mode``, 0600 by default, and group
   ``vault.map_group``, so that HAProxy running as its own user can read it) when its content
   changed, and replaces the map live through every configured Runtime API socket (no reload;
   Unix sockets or loopback: sinks/runtime_address.py);
2. writes an encrypted version and its ``vault_versions`` row when the content hash changed
   (sinks/vault_store.py);
3. publishes each changed entry to the compacted ``vault.updates`` (a tombstone for a customer
   that is gone), acknowledged by Kafka; what the topic holds is read back at start.

Postgres or Kafka away: retried with backoff; HAProxy away: the map file is written anyway
(a reload picks it up) and the live update is retried at the next build.

No input stops it: a configuration row that makes no valid entry is left out of the build and
reported (``meterstream_vault_invalid_rows``, a log line naming its table and key); a
vault.updates message whose key names no customer is dead-lettered to haproxy.logs.rejected
and tombstoned; a notification payload that is not one of ours is counted and ignored.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import asyncpg

from meterstream import logs, pg
from meterstream.atomic_file import group_id, write_atomically
from meterstream.kafka import read_records_to_end
from meterstream.producer import Message, Refused, RoundProducer, insist
from meterstream.schemas import topics
from meterstream.schemas.enums import VaultStatus
from meterstream.schemas.notifications import CONFIG_CHANNEL, VAULT_CHANNEL, config_change, vault_change
from meterstream.schemas.records import RejectedLine, SourcePosition
from meterstream.schemas.topics import key_of
from meterstream.schemas.wire import WireError, encode
from meterstream.service import FailureClock
from meterstream.settings import Settings
from meterstream.sinks import metrics
from meterstream.sinks.haproxy_runtime import replace_map
from meterstream.sinks.vault_state import SkippedRow, VaultState, build
from meterstream.sinks.vault_store import VaultStore, map_text
from meterstream.sinks.vault_updates import Foreign, held

log = logs.get(__name__)
CHANNELS = {CONFIG_CHANNEL: config_change, VAULT_CHANNEL: vault_change}  # channel -> payload validator
IGNORED_LOG_S = 10.0  # at most one log line this often about ignored notifications


class Vault:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        cfg = settings.vault
        if cfg.key_b64 is None:
            raise ValueError("vault.key_b64 is not set (MS_VAULT__KEY_B64)")
        self.store = VaultStore(Path(cfg.directory), cfg.key_b64.get_secret_value(),
                                [k.get_secret_value() for k in cfg.previous_keys_b64])
        self.map_path = cfg.map_file()
        self.map_mode = cfg.map_mode
        self.map_gid = group_id(cfg.map_group)  # ValueError for a group this host does not have
        self.published: dict[int, bytes] = {}  # customer -> the entry vault.updates holds
        self.map_content: bytes | None = None
        self.runtime_pending = set(cfg.runtime_sockets)  # sockets not yet given the current map
        self.wake = asyncio.Event()
        self.stop_requested = asyncio.Event()
        self.producer = RoundProducer(settings, "vault", metrics.VAULT_PRODUCE_LATENCY, metrics.VAULT_PRODUCE_FAILURES)
        self.failure = FailureClock()
        self.builds = 0
        self.skipped: dict[tuple[str, str], str] = {}  # (table, key) -> why, in the last build
        self.ignored_since_log = 0
        self.ignored_logged_at = float("-inf")

    def health(self) -> tuple[bool, dict[str, object]]:
        return self.failure.healthy(), {"builds": self.builds, "failing_s": round(self.failure.seconds(), 1)}

    def request_stop(self) -> None:
        self.stop_requested.set()
        self.wake.set()

    def _notified(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        try:
            CHANNELS[channel](payload)
        except WireError as exc:  # any login may NOTIFY anything: counted and ignored
            metrics.VAULT_INVALID_NOTIFICATIONS.labels(channel).inc()
            self.ignored_since_log += 1
            if time.monotonic() - self.ignored_logged_at >= IGNORED_LOG_S:
                log.warning("notification ignored: not one of ours", channel=channel, error=str(exc)[:200],
                            ignored=self.ignored_since_log)
                self.ignored_since_log, self.ignored_logged_at = 0, time.monotonic()
            return
        self.wake.set()

    async def prepare(self) -> None:
        """What vault.updates and the map file hold already. A message whose key names no
        customer is dead-lettered, then tombstoned (so a restart does not report it again)."""
        name = self.settings.topic(topics.VAULT_UPDATES)
        found = held(await read_records_to_end(self.settings, name))
        self.published = found.published
        if found.foreign:
            await self._dead_letter(name, found.foreign)
        if self.map_path.exists():
            self.map_content = self.map_path.read_bytes()

    def _unpublishable(self, refused: Refused) -> Message:
        """The dead letter of a vault.updates message Kafka refused for good (too large)."""
        m = refused.message
        line = RejectedLine.of(m.value or b"", source=m.topic, position=None, reason="unpublishable",
                               detail=f"Kafka refused it: {refused.error}",
                               keep=self.settings.produce.dead_letter_raw_bytes)
        return Message(self.settings.topic(topics.HAPROXY_LOGS_REJECTED), key_of(line), encode(line))

    async def _dead_letter(self, name: str, foreign: list[Foreign]) -> None:
        rejected_topic = self.settings.topic(topics.HAPROXY_LOGS_REJECTED)
        letters = []
        for f in foreign:
            line = RejectedLine.of(
                f.value or b"", source=name,
                position=SourcePosition(stream=f"{name}:{f.partition}"[:256], offset=f.offset),
                reason="invalid_key", detail=f"key {f.key!r:.200} names no customer: {f.reason}",
                keep=self.settings.produce.dead_letter_raw_bytes)
            letters.append(Message(rejected_topic, key_of(line), encode(line)))
            log.error("vault.updates message dead-lettered: its key names no customer", topic=name,
                      partition=f.partition, offset=f.offset, reason=f.reason)
        await self.producer.deliver(letters, insist)  # acknowledged before the tombstones
        await self.producer.send_round([Message(name, f.key, None) for f in foreign if f.key is not None])
        metrics.VAULT_DEAD_LETTERS.inc(len(foreign))

    async def run(self) -> None:
        await self.prepare()
        attempt = 0
        while not self.stop_requested.is_set():
            conn: asyncpg.Connection | None = None
            try:
                conn = await pg.connect(self.settings, give_up_after_s=0)
                for channel in CHANNELS:
                    await conn.add_listener(channel, self._notified)  # type: ignore[arg-type]  # payload: str
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
        self._report(state.skipped)
        # 1. what HAProxy enforces
        content = map_text(state.map_lines)
        if content != self.map_content:
            self._map_directory()
            write_atomically(self.map_path, content, self.map_mode, self.map_gid)
            self.map_content = content
            self.runtime_pending = set(self.settings.vault.runtime_sockets)
            metrics.VAULT_MAP_WRITES.inc()
            metrics.VAULT_MAP_WRITE_TIME.set_to_current_time()
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
        written = await self.store.write_version(conn, state.entries)
        if written is not None:
            metrics.VAULT_VERSIONS.inc()
            log.info("vault version written", version=written, customers=len(state.entries))
        if self.store.latest is not None:
            metrics.VAULT_VERSION.set(self.store.latest[0])
            metrics.VAULT_VERSION_TIME.set(self.store.latest[1])
        for status in VaultStatus:
            metrics.VAULT_CUSTOMERS.labels(status.value).set(sum(1 for e in state.entries if e.status is status))
        # 3. vault.updates
        name = self.settings.topic(topics.VAULT_UPDATES)
        current = {e.customer_id: encode(e) for e in state.entries}
        changed = [Message(name, key_of(e), current[e.customer_id]) for e in state.entries
                   if self.published.get(e.customer_id) != current[e.customer_id]]
        gone = [Message(name, str(c).encode(), None) for c in self.published if c not in current]
        if changed or gone:
            await self.producer.deliver(changed + gone, self._unpublishable)
            metrics.VAULT_UPDATES_PUBLISHED.inc(len(changed) + len(gone))
            self.published = current
        metrics.VAULT_LAST_BUILD.set_to_current_time()
        return state

    def _map_directory(self) -> None:
        """Creates the map's directory when it is missing: its owner's, and traversable by the
        map's group when the map is readable by it. An existing directory is left as it is."""
        directory = self.map_path.parent
        if directory.is_dir():
            return
        directory.mkdir(parents=True, exist_ok=True)
        if self.map_mode & 0o060:
            if self.map_gid is not None:
                os.chown(directory, -1, self.map_gid)
            os.chmod(directory, 0o750)

    def _report(self, skipped: list[SkippedRow]) -> None:
        """The rows left out of this build: a log line when one is new (or its reason changed),
        and the gauge by table."""
        now = {(row.table, row.key): row.error for row in skipped}
        for (table, key), error in now.items():
            if self.skipped.get((table, key)) != error:
                log.error("configuration row left out of the vault: it makes no valid entry", table=table, key=key,
                          error=error[:300])
        for table, key in self.skipped.keys() - now.keys():
            log.info("configuration row back in the vault", table=table, key=key)
        self.skipped = now
        for table in {"service_instances", "seal_keys", "customers"} | {t for t, _ in now}:
            metrics.VAULT_INVALID_ROWS.labels(table).set(sum(1 for t, _ in now if t == table))
