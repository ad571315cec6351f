"""``meterstream check [--no-connect] [--for PROCESS]...``: whether a process would start and
find what it needs, before it starts (a systemd unit's ExecStartPre). docs/security.md says
what each line means.

- **Configuration** (always): it loads (else exit 2, one line per problem, never a value);
  outside development mode it holds no built-in key (exit 2, as every process would refuse to
  start); the keys the processes checked need are set (exit 2); the map's group exists.
- **Connectivity** (unless ``--no-connect``), through the same client constructors as the
  processes (``meterstream.kafka.admin``, ``meterstream.pg.connect``), so that Kafka's and
  Postgres's security settings apply here as there: the topics of docs/wire.md exist,
  compacted exactly where they must be, ``haproxy.logs`` and ``meter.resolved`` (and the
  worker's changelogs) with the same partitions; the migrations of this version are applied
  and none is unknown or changed; the map can be written with its mode and group; every
  Runtime API socket answers. Each problem is a line, exit 1.

``--for`` limits the checks to what the named processes use (a tailer needs Kafka, not
Postgres, the vault key or HAProxy's socket); without it, every process is checked.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from meterstream import builtin_keys
from meterstream.settings import Settings

PROCESSES = ("tail", "syslog", "sync-config", "worker", "sink-postgres", "vault")
USES = {
    "tail": {"kafka"},
    "syslog": {"kafka"},
    "worker": {"kafka"},
    "sync-config": {"kafka", "postgres"},
    "sink-postgres": {"kafka", "postgres"},
    "vault": {"kafka", "postgres", "map", "runtime"},
}
KEYS = {"vault": ["vault.key_b64"]}  # the key settings a process cannot run without


@dataclass
class Report:
    ok: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # exit 1
    refused: list[str] = field(default_factory=list)  # the configuration may not run: exit 2

    @property
    def exit_code(self) -> int:
        return 2 if self.refused else 1 if self.problems else 0


def configuration(settings: Settings, processes: list[str], report: Report) -> None:
    from meterstream.atomic_file import group_id

    report.refused += builtin_keys.refusals(settings)
    report.refused += builtin_keys.missing(settings, sorted({k for p in processes for k in KEYS.get(p, [])}))
    if "vault" in processes:
        try:
            group_id(settings.vault.map_group)
        except ValueError as exc:
            report.refused.append(f"vault.map_group: {exc}")
    if not report.refused:
        report.ok.append(f"configuration: loads, for {', '.join(processes)}")


async def connectivity(settings: Settings, processes: list[str], report: Report, timeout_s: float) -> None:
    uses = set().union(*(USES[p] for p in processes))
    checks = []
    if "kafka" in uses:
        checks.append(kafka_topics(settings, "worker" in processes, timeout_s))
    if "postgres" in uses:
        checks.append(postgres_schema(settings, timeout_s))
    if "map" in uses:
        checks.append(map_path(settings))
    if "runtime" in uses:
        checks.append(runtime_sockets(settings, timeout_s))
    for ok, problems in await asyncio.gather(*checks):
        report.ok += ok
        report.problems += problems


Found = tuple[list[str], list[str]]  # (what is well, the problems)


async def kafka_topics(settings: Settings, changelogs: bool, timeout_s: float) -> Found:
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    from meterstream.kafka import admin
    from meterstream.schemas import topics

    where = f"kafka {settings.kafka.bootstrap}"
    client = admin(settings)  # the processes' constructor: its security settings apply
    try:
        await asyncio.wait_for(client.start(), timeout_s)
    except Exception as exc:  # noqa: BLE001 - whatever it is, it is this one problem
        await _quietly(client.close())
        return [], [f"{where}: cannot connect: {_said(exc)}"]
    problems: list[str] = []
    try:
        wanted = {settings.topic(spec.name): spec for spec in topics.TOPICS.values()}
        existing = set(await asyncio.wait_for(client.list_topics(), timeout_s))
        problems += [f"{where}: topic {name} does not exist (meterstream topics create)"
                     for name in wanted if name not in existing]
        present = [name for name in wanted if name in existing]
        worker_tables = [t for t in existing if changelogs and t.startswith(
            f"{settings.kafka.topic_prefix}{settings.worker.app_id}-") and t.endswith("-changelog")]
        described = await asyncio.wait_for(client.describe_topics(present + sorted(worker_tables)), timeout_s)
        counts = {t["topic"]: len(t["partitions"]) for t in described if t["error_code"] == 0}
        logs, resolved = settings.topic(topics.HAPROXY_LOGS), settings.topic(topics.METER_RESOLVED)
        if logs in counts and resolved in counts and counts[logs] != counts[resolved]:
            problems.append(f"{where}: {logs} has {counts[logs]} partitions and {resolved} {counts[resolved]}: "
                            "the worker needs the same number (docs/metering.md)")
        for table in sorted(worker_tables):
            if logs in counts and table in counts and counts[table] != counts[logs]:
                problems.append(f"{where}: the worker's table {table} has {counts[table]} partitions and {logs} "
                                f"{counts[logs]}: the worker cannot start on them")
        policies: dict[str, str] = {}
        if present:
            answers = await asyncio.wait_for(client.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, name, {"cleanup.policy": None}) for name in present]),
                timeout_s)
            for answer in answers:
                for error_code, _, _, name, entries in (r[:5] for r in answer.resources):
                    if error_code == 0:
                        policies[name] = next((e[1] for e in entries if e[0] == "cleanup.policy"), "delete")
        for name in present:
            compacted = "compact" in (policies.get(name) or "").split(",")
            if name in policies and compacted != wanted[name].compacted:
                problems.append(f"{where}: topic {name} has cleanup.policy={policies[name]}, it must "
                                + ("be compacted (compact)" if wanted[name].compacted else
                                   "not be compacted: compaction would drop records that share a key"))
    except Exception as exc:  # noqa: BLE001
        problems.append(f"{where}: {_said(exc)}")
    finally:
        await _quietly(client.close())
    return ([f"{where}: {len(wanted)} topics, partitions and compaction as expected"] if not problems else []), problems


async def postgres_schema(settings: Settings, timeout_s: float) -> Found:
    from meterstream import pg
    from meterstream.schemas.migrate import status

    where = "postgres"
    try:
        conn = await asyncio.wait_for(pg.connect(settings, give_up_after_s=0), timeout_s)
    except Exception as exc:  # noqa: BLE001 - DsnError and connection errors quote no secret
        return [], [f"{where}: cannot connect: {_said(exc)}"]
    try:
        found = await asyncio.wait_for(status(conn), timeout_s)
    except Exception as exc:  # noqa: BLE001 - MigrationError (this version's files), Postgres errors
        return [], [f"{where}: cannot read the schema: {_said(exc)}"]
    finally:
        await _quietly(conn.close())
    problems = []
    if found.pending:
        problems.append(f"{where}: migrations not applied: "
                        f"{', '.join(f'{m.version:04d}_{m.name}' for m in found.pending)} (meterstream migrate)")
    if found.unknown:
        problems.append(f"{where}: the database has migrations this version does not know: {', '.join(found.unknown)}")
    if found.changed:
        problems.append(f"{where}: applied migrations whose file changed since: {', '.join(found.changed)}")
    return ([f"{where}: every migration applied"] if not problems else []), problems


async def map_path(settings: Settings) -> Found:
    from meterstream.atomic_file import group_id, probe

    cfg = settings.vault
    try:
        gid = group_id(cfg.map_group)
    except ValueError:
        return [], []  # reported with the configuration
    path = cfg.map_file()
    problem = await asyncio.to_thread(probe, path, cfg.map_mode, gid)
    if problem is not None:
        return [], [f"vault.map_path: cannot write the map {path}: {problem}"]
    group = f", group {cfg.map_group}" if gid is not None else ""
    return [f"vault.map_path: {path} writable (mode {cfg.map_mode:04o}{group})"], []


async def runtime_sockets(settings: Settings, timeout_s: float) -> Found:
    from meterstream.sinks.haproxy_runtime import answers

    ok, problems = [], []
    for socket in settings.vault.runtime_sockets:
        problem = await answers(socket, timeout_s)
        if problem is None:
            ok.append(f"vault.runtime_sockets: {socket} answers")
        else:
            problems.append(f"vault.runtime_sockets: {socket} does not answer: {problem}")
    return ok, problems


def _said(exc: BaseException) -> str:
    """An error in one line: its type and message (the clients' messages name addresses and
    topics, never a password), bounded."""
    text = " ".join(str(exc).split())[:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _quietly(closing) -> None:  # noqa: ANN001
    try:
        await closing
    except Exception:  # noqa: BLE001, S110 - closing after a failure
        pass


def run(settings: Settings, processes: list[str], connect: bool, timeout_s: float) -> Report:
    report = Report()
    configuration(settings, processes, report)
    if connect:
        asyncio.run(connectivity(settings, processes, report, timeout_s))
    return report
