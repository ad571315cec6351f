"""The ``meterstream`` command: one subcommand per process, and the local tools."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from meterstream import __version__, builtin_keys, devmode, logs
from meterstream import settings as settings_mod
from meterstream.check import PROCESSES as CHECKED_PROCESSES
from meterstream.schemas.enums import LimitKind
from meterstream.settings import Settings


class ConfigurationRefused(click.ClickException):
    """The configuration does not load, or may not run here: exit 2, one line per problem,
    never a secret's value (docs/security.md)."""

    exit_code = 2

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))

    def format_message(self) -> str:
        return "configuration: " + self.message.replace("\n", "\nconfiguration: ")


class Context:
    """The settings of this run, loaded when a command first needs them (so that a
    subcommand's --help works whatever the configuration holds)."""

    def __init__(self, config: str | None, log_level: str | None, log_format: str | None) -> None:
        self.config = config
        self.overrides: dict[str, Any] = {}
        if log_level:
            self.overrides["log_level"] = log_level
        if log_format:
            self.overrides["log_format"] = log_format
        self._settings: Settings | None = None

    def load(self) -> Settings:
        """The settings, or ConfigurationRefused when they do not load (no refusal of
        built-in keys here: `meterstream check` reports those itself)."""
        try:
            return settings_mod.load(self.config, **self.overrides)
        except FileNotFoundError as exc:
            raise ConfigurationRefused([str(exc)]) from None
        except settings_mod.ConfigError as exc:
            raise ConfigurationRefused(exc.problems) from None

    @property
    def settings(self) -> Settings:
        """The settings of a process: refused (exit 2) when they do not load or hold a built-in
        key outside development mode (meterstream/builtin_keys.py)."""
        if self._settings is None:
            settings = self.load()
            refused = builtin_keys.refusals(settings)
            if refused:
                raise ConfigurationRefused(refused)
            logs.configure(settings.log_level, settings.log_format)
            self._settings = settings
        return self._settings

    def needing(self, *keys: str) -> Settings:
        """The settings, refused (exit 2) unless the key settings named are set."""
        settings = self.settings
        missing = builtin_keys.missing(settings, list(keys))
        if missing:
            raise ConfigurationRefused(missing)
        return settings


pass_ctx = click.make_pass_decorator(Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="meterstream")
@click.option("--config", "-c", type=click.Path(dir_okay=False), envvar="MS_CONFIG",
              help="TOML configuration file (environment variables MS_* override it).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None)
@click.option("--log-format", type=click.Choice(["auto", "json", "console"]), default=None)
@click.pass_context
def main(ctx: click.Context, config: str | None, log_level: str | None, log_format: str | None) -> None:
    """meterstream: HAProxy access logs -> Kafka -> per-customer metering -> Postgres and the vault.

    Configuration comes from --config FILE (TOML), then MS_* environment variables
    (e.g. MS_KAFKA__BOOTSTRAP, MS_POSTGRES__DSN). Keys have no default outside development
    mode; MS_DEV=1 (development: deploy/dev.sh, the demo, the tests) gives them built-in
    development keys and the defaults point at the local services of `meterstream dev up`
    (docs/security.md).
    """
    if ctx.invoked_subcommand == "demo":
        devmode.enable()  # the demo is a development run, and so are the processes it starts
    ctx.obj = Context(config, log_level, log_format)


class AccessRefused(click.ClickException):
    """Kafka or Postgres refuses this client for a reason no retry mends (TLS, the login):
    exit 2, one line that names the setting to look at, never a secret."""

    exit_code = 2


def _run(coro: Any) -> Any:
    from meterstream.kafka_access import KafkaAccessRefused
    from meterstream.pg import PostgresAccessError
    from meterstream.pg_dsn import DsnError

    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        sys.exit(130)
    except DsnError as exc:  # asyncpg refused postgres.dsn: a configuration error, said without quoting it
        raise ConfigurationRefused([str(exc)]) from None
    except (PostgresAccessError, KafkaAccessRefused) as exc:
        raise AccessRefused(str(exc)) from None


@main.command()
@pass_ctx
def migrate(obj: Context) -> None:
    """Apply pending Postgres migrations (schemas/sql), in order, idempotently."""
    from meterstream import pg
    from meterstream.schemas.migrate import MigrationError
    from meterstream.schemas.migrate import migrate as apply

    async def go() -> list[str]:
        conn = await pg.connect(obj.settings)
        try:
            return [f"{m.version:04d}_{m.name}" for m in await apply(conn)]
        finally:
            await conn.close()

    try:
        applied = _run(go())
    except MigrationError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("applied: " + ", ".join(applied) if applied else "schema is up to date")


@main.command()
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--fail-on-reject", is_flag=True, help="Exit 1 when any line was rejected.")
@pass_ctx
def parse(obj: Context, files: tuple[str, ...], fail_on_reject: bool) -> None:
    """Parse HAProxy log lines (FILES, or stdin) and print one JSON object per line:
    the record's fields, or {"rejected": reason, "raw": line}. Needs no Kafka; reads
    httplog captures by parse.request_captures, as tail and syslog do."""
    from meterstream.ingest.parse_command import run
    from meterstream.ingest.parser import Parser

    records, rejected = run(files, sys.stdout.buffer, Parser.from_settings(obj.settings))
    sys.stdout.flush()
    click.echo(f"{records} records, {rejected} rejected", err=True)
    if fail_on_reject and rejected:
        sys.exit(1)


@main.command()
@click.argument("files", nargs=-1)
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Checkpoint file (default: tail.checkpoint_path).")
@click.option("--once", is_flag=True, help="Stop once the files are read and acknowledged (an import).")
@click.option("--progress/--no-progress", default=None,
              help="Show the import's progress: a bar on a terminal, else a log line every "
                   "tail.progress_interval_s (default: with --once).")
@click.option("--http-port", type=int, default=None, help="Port of /metrics and /healthz (0: any).")
@pass_ctx
def tail(obj: Context, files: tuple[str, ...], checkpoint: str | None, once: bool, progress: bool | None,
         http_port: int | None) -> None:
    """Follow HAProxy log FILES (paths or globs; default: tail.paths) into haproxy.logs.

    Survives rotation by rename and by copytruncate; checkpoints only what Kafka
    acknowledged, so a crash repeats lines (same request ids) and never loses one.
    Lines that do not parse go to haproxy.logs.rejected with their reason. Compressed files
    (gzip, zstd, bzip2, xz) are read as their content: `tail --once '/var/log/haproxy.log*'`
    imports the archived rotations, and a second run sends nothing.
    """
    from meterstream.ingest.progress import for_terminal_or_log
    from meterstream.ingest.tailer import Tailer
    from meterstream.service import serve

    settings = _with(obj.settings, tail={"paths": list(files) or obj.settings.tail.paths,
                                         **({"checkpoint_path": checkpoint} if checkpoint else {})},
                     http={"port": http_port} if http_port is not None else {})
    try:
        shown = for_terminal_or_log(settings.tail.progress_interval_s) if (once if progress is None else progress) \
            else None
        tailer = Tailer(settings, once=once, progress=shown)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    from meterstream import memory

    memory.tune_collector()  # the process runs this stage alone
    _run(serve("tail", settings, tailer.run, tailer.request_stop, tailer.health))


@main.command()
@click.option("--udp", default=None, help="host:port for UDP (empty: off; default: syslog.udp).")
@click.option("--tcp", default=None, help="host:port for TCP (empty: off; default: syslog.tcp).")
@click.option("--http-port", type=int, default=None, help="Port of /metrics and /healthz (0: any).")
@pass_ctx
def syslog(obj: Context, udp: str | None, tcp: str | None, http_port: int | None) -> None:
    """Receive HAProxy's log lines over syslog (UDP; TCP with octet-counting or newline
    framing) into haproxy.logs. TCP gets back-pressure; UDP drops, counted, when full.
    Only senders in syslog.allowed_networks (default: loopback) are read."""
    from meterstream.ingest.syslog_server import SyslogReceiver
    from meterstream.service import serve

    listeners = {k: v or None for k, v in (("udp", udp), ("tcp", tcp)) if v is not None}
    settings = _with(obj.settings, syslog=listeners,
                     http={"port": http_port} if http_port is not None else {})
    receiver = SyslogReceiver(settings)
    from meterstream import memory

    memory.tune_collector()  # the process runs this stage alone
    _run(serve("syslog", settings, receiver.run, receiver.request_stop, receiver.health))


@main.command("sync-config")
@click.option("--reconcile-interval", type=float, default=None, help="Seconds between full comparisons.")
@click.option("--http-port", type=int, default=None, help="Port of /metrics and /healthz (0: any).")
@pass_ctx
def sync_config(obj: Context, reconcile_interval: float | None, http_port: int | None) -> None:
    """Publish Postgres configuration (API keys, service instances, customers) to the
    compacted meter.* topics: a snapshot, then changes as they happen (LISTEN/NOTIFY),
    with periodic reconciliation; tombstones for revoked or deleted keys."""
    from meterstream.meter.config_sync import ConfigSync
    from meterstream.service import serve

    settings = _with(obj.settings, sync={"reconcile_interval_s": reconcile_interval} if reconcile_interval else {},
                     http={"port": http_port} if http_port is not None else {})
    sync = ConfigSync(settings)
    _run(serve("sync-config", settings, sync.run, sync.request_stop, sync.health))


@main.command()
@click.option("--http-port", type=int, default=None, help="Port of /metrics and /healthz (0: any).")
@click.option("--batch-records", type=int, default=None, help="Records fetched at most at once (the largest batch).")
@pass_ctx
def worker(obj: Context, http_port: int | None, batch_records: int | None) -> None:
    """Meter haproxy.logs (faust-streaming) in one pass: resolve API-key fingerprints to
    customers, count per-minute usage (meter.usage), judge rate and spend limits
    (meter.breaches), forward records of other partitions' customers (meter.resolved),
    exactly once whatever crashes (docs/metering.md)."""
    from meterstream.meter import worker as worker_mod

    settings = _with(obj.settings, http={"port": http_port} if http_port is not None else {},
                     worker={"batch_records": batch_records} if batch_records else {})
    sys.exit(worker_mod.run(settings))


@main.group(invoke_without_command=True)
@click.option("--http-port", type=int, default=None, help="Port of /metrics and /healthz (0: any).")
@click.option("--runtime-socket", "runtime_sockets", multiple=True,
              help="HAProxy Runtime API socket to update live (repeatable; a Unix socket path, or host:port "
                   "on loopback unless vault.runtime_allow_remote).")
@click.pass_context
def vault(ctx: click.Context, http_port: int | None, runtime_sockets: tuple[str, ...]) -> None:
    """Publish MA_VAULT: the HAProxy map (file, and live through the Runtime API), encrypted
    versions recorded in vault_versions, and changed entries on vault.updates. Runs until
    SIGTERM unless a subcommand is given."""
    if ctx.invoked_subcommand is not None:
        return
    from meterstream.service import serve
    from meterstream.sinks.vault import Vault

    obj: Context = ctx.obj
    overrides: dict[str, Any] = {"runtime_sockets": list(runtime_sockets)} if runtime_sockets else {}
    settings = _with(obj.needing("vault.key_b64"), http={"port": http_port} if http_port is not None else {},
                     vault=overrides)
    try:
        service = Vault(settings)
    except ValueError as exc:  # vault.map_group names no group of this host
        raise ConfigurationRefused([f"vault.map_group: {exc}"]) from None
    _run(serve("vault", settings, service.run, service.request_stop, service.health))


@vault.command("decrypt")
@click.argument("version_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the JSON here (mode 0600) instead of standard output.")
@pass_ctx
def vault_decrypt(obj: Context, version_file: Path, output: Path | None) -> None:
    """Decrypt a vault version file (vault-<version>.enc) with the configured vault key (or one of
    vault.previous_keys_b64)."""
    from meterstream.crypto import DecryptError
    from meterstream.sinks.vault_store import VaultStore, write_atomically

    vault_settings = obj.needing("vault.key_b64").vault
    assert vault_settings.key_b64 is not None  # needing() refused an unset key
    store = VaultStore(version_file.parent, vault_settings.key_b64.get_secret_value(),
                       [k.get_secret_value() for k in vault_settings.previous_keys_b64])
    try:
        content = store.decrypt(version_file)
    except DecryptError as exc:
        raise click.ClickException(str(exc)) from None
    if output is None:
        click.echo(content.decode())
    else:
        write_atomically(output, content)


@main.command("sink-postgres")
@click.option("--http-port", type=int, default=None, help="Port of /metrics and /healthz (0: any).")
@pass_ctx
def sink_postgres(obj: Context, http_port: int | None) -> None:
    """Persist haproxy.logs into haproxy_raw_logs exactly once: rows and consumed offsets in
    one transaction (binary COPY), idempotent on request_id."""
    from meterstream import memory
    from meterstream.service import serve
    from meterstream.sinks.postgres_sink import PostgresSink

    settings = _with(obj.settings, http={"port": http_port} if http_port is not None else {})
    sink = PostgresSink(settings)
    memory.tune_collector()  # the process runs this stage alone
    _run(serve("sink-postgres", settings, sink.run, sink.request_stop, sink.health))


def _with(settings: Settings, **sections: dict[str, Any]) -> Settings:
    """Settings with some fields of some sections replaced (command-line flags), validated as
    the configuration is (a --runtime-socket beyond loopback is refused like the setting)."""
    from pydantic import ValidationError

    updates = {}
    for name, values in sections.items():
        if values:
            section = getattr(settings, name)
            try:
                updates[name] = type(section).model_validate({**dict(section), **values})
            except ValidationError as exc:
                raise ConfigurationRefused(settings_mod.redacted(exc, name)) from None
    return settings.model_copy(update=updates)


@main.command()
@click.option("--no-connect", is_flag=True, help="Check the configuration only: no Kafka, Postgres, files or sockets.")
@click.option("--for", "processes", multiple=True, type=click.Choice(CHECKED_PROCESSES),
              help="Check what this process needs (repeatable; default: every process).")
@click.option("--timeout", type=click.FloatRange(0.1, 300), default=10.0, show_default=True,
              help="Seconds each connection may take.")
@pass_ctx
def check(obj: Context, no_connect: bool, processes: tuple[str, ...], timeout: float) -> None:
    """Check the configuration and, unless --no-connect, what the processes connect to:
    Kafka topics (exist, compaction, partitions), Postgres migrations, the map path, the
    HAProxy Runtime API sockets. Prints a line per problem (on stderr) and exits 1; exits 2
    when the configuration does not load, holds a built-in key outside development mode, or
    lacks a key a process needs; 0 when all is well."""
    from meterstream import check as check_mod

    try:
        settings = obj.load()
    except ConfigurationRefused as exc:
        for line in exc.message.splitlines():
            click.echo(f"problem: configuration: {line}", err=True)
        sys.exit(2)
    logs.configure(settings.log_level, settings.log_format)
    report = check_mod.run(settings, list(processes) or list(CHECKED_PROCESSES), not no_connect, timeout)
    for line in report.ok:
        click.echo(f"ok: {line}")
    for line in report.refused + report.problems:
        click.echo(f"problem: {line}", err=True)
    sys.exit(report.exit_code)


@main.group()
def keys() -> None:
    """The key store: full API keys sealed in api_keys.api_key_id (docs/security.md)."""


@keys.command("rotate-store")
@click.option("--batch", type=click.IntRange(1, 100_000), default=500, show_default=True,
              help="Rows re-sealed per transaction.")
@pass_ctx
def keys_rotate_store(obj: Context, batch: int) -> None:
    """Re-seal every api_keys.api_key_id under keys.key_store_b64, opening each under the key
    that sealed it (keys.key_store_previous_b64). Resumable: a second run goes on where one
    stopped. Exits 1 when a row opens under no configured key (listed by fingerprint)."""
    from meterstream import pg
    from meterstream.key_rotation import Rotation, rotate_store
    from meterstream.key_store import KeyStore

    settings = obj.needing("keys.key_store_b64")
    store = KeyStore.from_settings(settings)

    def progress(done: Rotation) -> None:
        click.echo(f"re-sealed {done.resealed} of {done.to_do}" + (f", {len(done.failed)} unreadable"
                                                                  if done.failed else ""))

    async def go() -> Rotation:
        conn = await pg.connect(settings)
        try:
            return await rotate_store(conn, store, batch, progress)
        finally:
            await conn.close()

    done = _run(go())
    click.echo(f"key store: {done.resealed} rows re-sealed under key {store.current_id}, "
               f"{done.total - done.to_do} were under it already")
    if done.failed:
        click.echo(f"{len(done.failed)} rows open under no configured key (fingerprints): "
                   + ", ".join(done.failed[:50]) + (" ..." if len(done.failed) > 50 else ""), err=True)
        sys.exit(1)


@main.group()
def topics() -> None:
    """Kafka topics of docs/wire.md."""


@topics.command("create")
@click.option("--partitions", default=4, show_default=True, type=click.IntRange(1, 1024))
@pass_ctx
def topics_create(obj: Context, partitions: int) -> None:
    """Create the topics that do not exist yet (compacted ones with cleanup.policy=compact)."""
    from meterstream.kafka import ensure_topics

    created = _run(ensure_topics(obj.settings, partitions))
    click.echo("created: " + ", ".join(created) if created else "all topics exist")


_WHEN = click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"])


def _utc(when: datetime) -> datetime:
    return when.replace(tzinfo=UTC)


def _report(coro: Any) -> str:
    """A report's text; Postgres errors (unreachable, not migrated) as one line, exit 1."""
    import asyncpg

    try:
        return str(_run(coro))
    except (asyncpg.PostgresError, OSError) as exc:
        raise click.ClickException(f"postgres: {type(exc).__name__}: {exc}") from None


@main.group()
def report() -> None:
    """Reports read from Postgres: usage and charges, limit events."""


@report.command("usage")
@click.option("--from", "start", type=_WHEN, required=True, help="First hour (UTC), e.g. 2026-11-01.")
@click.option("--to", "end", type=_WHEN, required=True, help="End (UTC, exclusive), e.g. 2026-12-01.")
@click.option("--customer", type=int, default=None, help="Only this customer id.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@pass_ctx
def report_usage(obj: Context, start: datetime, end: datetime, customer: int | None, fmt: str) -> None:
    """Requests, billable requests and charges per customer and service, from usage_records
    (the hours that start in [--from, --to)). Charges: $1.00 per 10,000 billable requests."""
    from meterstream import pg
    from meterstream.reports import USAGE_COLUMNS, render, usage

    if end <= start:
        raise click.UsageError("--to must be after --from")

    async def go() -> str:
        conn = await pg.connect(obj.settings, give_up_after_s=10)
        try:
            lines = await usage(conn, _utc(start), _utc(end), customer)
        finally:
            await conn.close()
        return render(lines, fmt, f"usage {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC", USAGE_COLUMNS)

    click.echo(_report(go()), nl=False)


@report.command("limits")
@click.option("--since", type=_WHEN, default=None, help="Events at or after this time (UTC; default: 24 hours ago).")
@click.option("--customer", type=int, default=None, help="Only this customer id.")
@click.option("--kind", type=click.Choice([k.value for k in LimitKind]), default=None, help="Only this kind.")
@click.option("--limit", "count", type=click.IntRange(1, 100_000), default=100, show_default=True,
              help="The latest this many events.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@pass_ctx
def report_limits(obj: Context, since: datetime | None, customer: int | None, kind: str | None, count: int,
                  fmt: str) -> None:
    """Recent limit events (limit_events), newest first."""
    from meterstream import pg
    from meterstream.reports import LIMIT_COLUMNS, limits, render

    start = _utc(since) if since else datetime.now(UTC) - timedelta(hours=24)

    async def go() -> str:
        conn = await pg.connect(obj.settings, give_up_after_s=10)
        try:
            lines = await limits(conn, start, customer, kind, count)
        finally:
            await conn.close()
        return render(lines, fmt, f"limit events since {start:%Y-%m-%d %H:%M} UTC", LIMIT_COLUMNS)

    click.echo(_report(go()), nl=False)


@main.group()
def schemas() -> None:
    """JSON Schemas of the topic values, for consumers of the topics."""


@schemas.command("export")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def schemas_export(directory: Path) -> None:
    """Write one JSON Schema (draft 2020-12) per topic value into DIRECTORY:
    <topic>.schema.json, from the pydantic models the processes write with."""
    from meterstream.schemas.json_schemas import export

    for path in export(directory):
        click.echo(str(path))


@main.group()
def dev() -> None:
    """Local Kafka (KRaft) and Postgres for development and tests, on loopback.

    State lives in MS_DEV_DIR (default /var/lib/meterstream-dev as root,
    ~/.local/state/meterstream-dev otherwise); broker jars are cached in ~/.cache/meterstream.
    """


def _dev(action: str):  # noqa: ANN202 - deferred import: only these commands need it
    """Run ``DevServices.<action>()``, printing what it did; its errors are usage errors."""
    from meterstream.dev.services import DevServices
    from meterstream.dev.services.system import ServiceError

    services = DevServices.default()
    try:
        for line in getattr(services, action)():
            click.echo(line)
    except ServiceError as exc:
        raise click.ClickException(str(exc)) from None
    return services


@dev.command("up")
def dev_up() -> None:
    """Install what is missing, create and start Kafka and Postgres; idempotent."""
    _dev("up")


@dev.command("down")
def dev_down() -> None:
    """Stop the Kafka broker and Postgres cluster that `dev up` started."""
    _dev("down")


@dev.command("status")
def dev_status() -> None:
    """Say whether the local services are running."""
    from meterstream.dev.services import DevServices

    for name, state in DevServices.default().status().items():
        click.echo(f"{name}: {state}")


@main.command()
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Where the sample log and its checkpoint live (default: the dev state directory).")
@pass_ctx
def demo(obj: Context, workdir: str | None) -> None:
    """Run locally on embedded defaults: start the services, migrate, create the topics, load
    the sample customers and keys, tail a sample HAProxy log into Kafka, and show the result."""
    import os

    from meterstream.dev.demo import run

    os.environ.setdefault("MS_DEV", "1")  # the demo is a development run (meterstream.devmode)
    if obj.settings.log_level not in ("debug", "warning", "error"):
        logs.configure("warning", obj.settings.log_format)  # the report is the output here
    services = _dev("up")
    _run(run(obj.settings, click.echo, Path(workdir) if workdir else services.root / "demo"))


if __name__ == "__main__":  # pragma: no cover
    main()
