"""Configuration of every meterstream process.

One source of truth, in this order of precedence: command-line flags (applied by the CLI),
environment variables (``MS_`` prefix, ``__`` between levels, e.g. ``MS_KAFKA__BOOTSTRAP``),
a TOML file (``--config FILE`` or ``MS_CONFIG``), then the embedded defaults, which point at
the local services that ``meterstream dev up`` starts.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

# Ports of the local development services (loopback only); see meterstream/dev/services.
DEV_KAFKA_PORT = 19092
DEV_KAFKA_CONTROLLER_PORT = 19093
DEV_KAFKA_SASL_SSL_PORT = 19094  # the same broker's SASL_SSL (SCRAM-SHA-512) listener
DEV_POSTGRES_PORT = 15432

# the captured request headers of an httplog line, in order, when its frontend has no layout
# of its own in parse.request_captures (docs/ingest.md)
DEFAULT_REQUEST_CAPTURES = ("api_key_fp", "service_type", "network", "server_id", "fe_type", "traffic_type",
                            "event_type", "key_metadata", "config_hex")


class Section(BaseModel):
    """A section of the configuration: a misspelt key is an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class KafkaSettings(Section):
    """Every Kafka client of every process (aiokafka's producers, consumers and admin clients,
    and the faust worker) is configured from this one section (meterstream.kafka_clients);
    docs/security.md "Kafka and Postgres TLS/SASL"."""

    bootstrap: str = f"127.0.0.1:{DEV_KAFKA_PORT}"
    topic_prefix: str = Field(default="", description="prepended to every topic name")
    client_id: str = "meterstream"
    request_timeout_s: float = Field(default=30.0, gt=0)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    ssl_cafile: str = Field(default="", description="PEM file of the CAs that sign the brokers' certificates; "
                                                    "empty: the system's trust store")
    ssl_certfile: str = Field(default="", description="PEM certificate (chain) this client presents: mutual TLS")
    ssl_keyfile: str = Field(default="", description="PEM private key (unencrypted) of ssl_certfile")
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str = ""
    sasl_password: SecretStr | None = Field(default=None, description="or sasl_password_file")
    sasl_password_file: str = Field(default="", description="a file holding the password (read at each "
                                                            "connection; surrounding whitespace is ignored)")
    access_check_s: float = Field(default=15.0, gt=0,
                                  description="bound of the start-up check of the brokers' TLS and SASL: a refused "
                                              "password or an untrusted certificate ends the process (exit 2)")

    @model_validator(mode="after")
    def _security(self) -> KafkaSettings:
        # messages name settings, never their values
        tls = self.security_protocol in ("SSL", "SASL_SSL")
        sasl = self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")
        if not tls and (self.ssl_cafile or self.ssl_certfile or self.ssl_keyfile):
            raise ValueError(f"kafka.ssl_* are set but kafka.security_protocol is {self.security_protocol}: "
                             "use SSL or SASL_SSL")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ValueError("kafka.ssl_certfile and kafka.ssl_keyfile go together (mutual TLS)")
        has_password = self.sasl_password is not None or bool(self.sasl_password_file)
        if not sasl:
            if self.sasl_mechanism or self.sasl_username or has_password:
                raise ValueError(f"kafka.sasl_* are set but kafka.security_protocol is {self.security_protocol}: "
                                 "use SASL_PLAINTEXT or SASL_SSL")
            return self
        if self.sasl_mechanism is None:
            raise ValueError(f"kafka.security_protocol {self.security_protocol} needs kafka.sasl_mechanism "
                             "(PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)")
        if not self.sasl_username:
            raise ValueError(f"kafka.security_protocol {self.security_protocol} needs kafka.sasl_username")
        if self.sasl_password is not None and self.sasl_password_file:
            raise ValueError("kafka.sasl_password and kafka.sasl_password_file: set one of them, not both")
        if not has_password:
            raise ValueError(f"kafka.security_protocol {self.security_protocol} needs kafka.sasl_password "
                             "or kafka.sasl_password_file")
        return self


class PostgresSettings(Section):
    """How every process reaches Postgres (meterstream.pg): the DSN, and TLS as asyncpg does it."""

    dsn: SecretStr = SecretStr(f"postgresql://postgres@127.0.0.1:{DEV_POSTGRES_PORT}/meterstream")
    connect_timeout_s: float = Field(default=10.0, gt=0)
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = Field(
        default=None, description="as libpq's; default: verify-full, or prefer in development (MS_DEV=1)")
    sslrootcert: str = Field(default="", description="PEM file of the CAs that sign the server's certificate; "
                                                     "empty: the system's trust store")

    @field_validator("dsn")
    @classmethod
    def _no_tls_in_dsn(cls, dsn: SecretStr) -> SecretStr:
        # one place says how TLS is done: the DSN's own ssl* parameters would be overridden
        # silently (asyncpg takes the ssl argument first), so they are refused
        from urllib.parse import parse_qs, urlsplit

        try:
            query = parse_qs(urlsplit(dsn.get_secret_value()).query)
        except ValueError:
            return dsn  # asyncpg says what is wrong with it when connecting
        found = sorted(k for k in query if k.startswith("ssl"))
        if found:
            raise ValueError(f"postgres.dsn carries {', '.join(found)}: set postgres.sslmode and "
                             "postgres.sslrootcert instead")
        return dsn

    @field_validator("dsn")
    @classmethod
    def _usable_dsn(cls, dsn: SecretStr) -> SecretStr:
        from meterstream.pg_dsn import problem  # says what is wrong without quoting the URI

        found = problem(dsn.get_secret_value())
        if found is not None:
            raise ValueError(f"not a usable PostgreSQL URI: {found}")
        return dsn


class HttpSettings(Section):
    """The /metrics and /healthz endpoint every long-running process serves."""

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="0 picks a free port")


# -- keys (docs/security.md) ------------------------------------------------------------------
# The built-in development keys. They are public (this file), so they are the defaults only in
# development mode (MS_DEV=1, meterstream/devmode.py); outside it a key setting that is not
# configured is absent, and one that holds a built-in key is refused (meterstream/builtin_keys.py).
DEV_KEY_SECRET_B64 = "bWV0ZXJzdHJlYW0tZGV2LWtleS1zZWNyZXQtMzJieXQ="
DEV_KEY_STORE_B64 = "ZGV2LW9ubHktYXBpLWtleS1zdG9yZS1rZXktMzJieXQ="
DEV_VAULT_KEY_B64 = "bWV0ZXJzdHJlYW0tZGV2LW9ubHktdmF1bHQta2V5ISE="


def _dev_default(value: str) -> Callable[[], SecretStr | None]:
    def default() -> SecretStr | None:
        from meterstream import devmode

        return SecretStr(value) if devmode.enabled() else None

    return default


def key_bytes(secret: SecretStr, *, exact: int | None = None, minimum: int = 0) -> bytes:
    """The bytes of a base64 key setting; ValueError (never with the value) when it is not
    base64 or has the wrong length."""
    import base64
    import binascii

    try:
        raw = base64.b64decode(secret.get_secret_value().strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64") from None
    if exact is not None and len(raw) != exact:
        raise ValueError(f"must be base64 of {exact} bytes")
    if len(raw) < minimum:
        raise ValueError(f"must be base64 of at least {minimum} bytes")
    return raw


def _blank_is_unset(value: object, info: ValidationInfo) -> object:
    """An empty key (``MS_VAULT__KEY_B64=`` in an environment file) is a key that is not
    configured: its default (the built-in key in development mode, else none)."""
    secret = value.get_secret_value() if isinstance(value, SecretStr) else value
    if isinstance(secret, str) and not secret.strip():
        return _dev_default(_DEV_KEYS[info.field_name or ""])()
    return value


_DEV_KEYS = {"key_secret_b64": DEV_KEY_SECRET_B64, "key_store_b64": DEV_KEY_STORE_B64, "key_b64": DEV_VAULT_KEY_B64}


class KeySettings(Section):
    key_secret_b64: SecretStr | None = Field(
        default_factory=_dev_default(DEV_KEY_SECRET_B64),
        description="HMAC-SHA256 secret HAProxy and the key store share (base64 of at least 32 bytes, as "
                    "HAProxy's hmac converter takes it; HAProxy reads it from MS_KEY_SECRET_B64)")
    key_store_b64: SecretStr | None = Field(
        default_factory=_dev_default(DEV_KEY_STORE_B64),
        description="AES-256-GCM key (base64 of 32 bytes) that seals api_keys.api_key_id; new seals use it")
    key_store_previous_b64: list[SecretStr] = Field(
        default_factory=list,
        description="earlier key-store keys, still read until `meterstream keys rotate-store` has re-sealed "
                    "every row under key_store_b64")

    _blank_keys = field_validator("key_secret_b64", "key_store_b64", mode="before")(_blank_is_unset)

    @field_validator("key_secret_b64")
    @classmethod
    def _hmac_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            key_bytes(value, minimum=32)
        return value

    @field_validator("key_store_b64")
    @classmethod
    def _store_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            key_bytes(value, exact=32)
        return value

    @field_validator("key_store_previous_b64")
    @classmethod
    def _previous_store_keys(cls, values: list[SecretStr]) -> list[SecretStr]:
        for value in values:
            key_bytes(value, exact=32)
        return values


class TailSettings(Section):
    """`meterstream tail`: files (globs) followed into haproxy.logs."""

    paths: list[str] = Field(default_factory=list, description="files or globs to follow")
    exclude: list[str] = Field(default_factory=list,
                               description="file names (globs) not to read; compressed "
                                           "files (gzip, zstd, bzip2, xz) are read as their content")
    checkpoint_path: str = "meterstream-tail.checkpoint"
    checkpoint_interval_s: float = Field(default=1.0, gt=0)
    max_line_bytes: int = Field(default=64 * 1024, ge=1024)
    round_lines: int = Field(default=20_000, ge=1, description="lines read per produce round")
    round_bytes: int = Field(default=8 * 1024 * 1024, ge=4096)
    poll_interval_s: float = Field(default=0.2, gt=0)
    rotate_grace_s: float = Field(default=2.0, ge=0, description="wait for late writes to a rotated file")
    host: str = Field(default="", description="source host in positions; default: this host's name")
    progress_interval_s: float = Field(default=10.0, gt=0, description="an import's progress log line this often "
                                                                      "(when standard error is not a terminal)")


class ProduceSettings(Section):
    """How ingest writes to Kafka (idempotent producer, acks=all)."""

    linger_ms: int = Field(default=5, ge=0)
    batch_bytes: int = Field(default=900_000, ge=1024, description="below the broker's message.max.bytes")
    send_timeout_s: float = Field(default=30.0, gt=0, description="bound on one round's acknowledgement")
    stop_timeout_s: float = Field(default=10.0, gt=0, description="bound on closing a producer")
    retry_backoff_max_s: float = Field(default=10.0, gt=0)
    dead_letter_raw_bytes: int = Field(default=8192, ge=256, description="raw bytes kept of a rejected line")


class ParseSettings(Section):
    """How ingest reads HAProxy's lines (`tail`, `syslog` and `parse` alike; docs/ingest.md)."""

    request_captures: dict[str, list[str]] = Field(
        default_factory=lambda: {"*": list(DEFAULT_REQUEST_CAPTURES)},
        description="httplog lines: per frontend (%ft without its '~'; '*' for the others) the names of its "
                    "captured request headers, in order; a LogRecord field's name fills that field, other "
                    "names are read and ignored. Without '*', the others use the default order")

    @field_validator("request_captures")
    @classmethod
    def _layouts(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        from meterstream.ingest.capture_layout import check  # the rules live beside the parser

        return check(value)


class SyslogSettings(Section):
    """`meterstream syslog`: a syslog receiver (UDP, and TCP with newline or octet framing)."""

    udp: str | None = Field(default="127.0.0.1:5514",
                            description="host:port ([v6]:port for IPv6), or empty to disable")
    tcp: str | None = Field(default="127.0.0.1:5514",
                            description="host:port ([v6]:port for IPv6), or empty to disable")
    queue_bytes: int = Field(default=32 * 1024 * 1024, ge=64 * 1024,
                             description="bytes of received lines buffered before back-pressure (TCP stops "
                                         "being read) or drops (UDP, counted)")
    queue_lines: int = Field(default=50_000, ge=1,
                             description="lines buffered before back-pressure (TCP) or drops (UDP)")
    allowed_networks: list[str] = Field(default_factory=lambda: ["127.0.0.0/8", "::1/128"],
                                        description="CIDRs (IPv4, IPv6) of the senders accepted; datagrams and "
                                                    "connections from elsewhere are dropped unread and counted. "
                                                    "Default loopback only: list the HAProxy hosts' networks "
                                                    "when listening beyond loopback")
    max_connections: int = Field(default=128, ge=1,
                                 description="open TCP connections at most; one more is closed at once, counted")
    idle_timeout_s: float = Field(default=300.0, gt=0,
                                  description="a TCP connection that sends nothing for this long is closed, "
                                              "counted (not while the receiver itself is not reading it)")
    udp_max_senders: int = Field(default=10_000, ge=1,
                                 description="UDP senders (address, port) tracked at most; the least recently "
                                             "seen is forgotten first")
    udp_sender_idle_s: float = Field(default=300.0, gt=0,
                                     description="a UDP sender silent this long is forgotten")

    @field_validator("allowed_networks")
    @classmethod
    def _networks(cls, cidrs: list[str]) -> list[str]:
        for cidr in cidrs:
            try:
                ipaddress.ip_network(cidr.strip())
            except ValueError as exc:
                raise ValueError(f"syslog.allowed_networks: {exc}") from None
        return cidrs


class SyncSettings(Section):
    """`meterstream sync-config`."""

    reconcile_interval_s: float = Field(default=60.0, gt=0, description="full comparison period")


class SinkSettings(Section):
    """`meterstream sink-postgres`."""

    consumer: str = Field(default="meterstream-sink-postgres", description="group id and sink_offsets key")
    topics: list[str] = Field(default_factory=lambda: ["haproxy.logs", "meter.usage", "meter.breaches"],
                              description="logical topics to persist")
    batch_rows: int = Field(default=20_000, ge=1, description="messages per transaction (rows and offsets)")
    flush_interval_s: float = Field(default=0.2, gt=0, description="longest wait to fill a batch")
    fetch_max_bytes: int = Field(default=32 * 2**20, ge=2**16, description="bytes a fetch from Kafka returns at most")
    partition_fetch_bytes: int = Field(default=4 * 2**20, ge=2**16,
                                       description="bytes a fetch returns at most per partition")


class WorkerSettings(Section):
    """`meterstream worker` (faust): one pass over haproxy.logs (docs/metering.md)."""

    app_id: str = Field(default="meterstream-worker",
                        description="faust app id: consumer group and changelog topic names (after the topic prefix)")
    batch_records: int = Field(default=5_000, ge=1, description="records fetched at most at once (faust's "
                                                                 "broker_max_poll_records): the largest batch")
    fetch_bytes: int = Field(default=1024 * 1024, ge=64 * 1024,
                             description="bytes fetched at most per partition at once")
    max_message_bytes: int = Field(default=256 * 1024, ge=64 * 1024, le=1_000_000,
                                   description="bound of every message the worker writes (a packed batch of "
                                               "forwarded records is split to fit it)")
    retention_h: float = Field(default=48.0, gt=0, description="late events count in windows this recent")
    future_s: float = Field(default=300.0, gt=0, description="events further ahead are refused")
    rate_clear_after_s: int = Field(default=60, ge=1, description="seconds under the allowance that clear a rate "
                                                                  "breach (docs/metering.md)")
    invalid_key_hits: int = Field(default=10, ge=1,
                                  description="hits in an hour after which an unknown fingerprint is reported")
    invalid_keys_max: int = Field(default=50_000, ge=1,
                                  description="unknown fingerprints tracked per partition and hour; past it new ones "
                                              "are only counted (their usage still is)")
    recent_events_s: float = Field(default=3600.0, ge=0,
                                   description="meter.breaches read back at start, to not publish an event twice")
    commit_interval_s: float = Field(default=1.0, gt=0)
    datadir: str = Field(default="", description="faust's data directory; default: a temporary one")


class VaultSettings(Section):
    """`meterstream vault`: MA_VAULT versions, the HAProxy map, vault.updates."""

    directory: str = Field(default="meterstream-vault", description="where versions and the map are written")
    map_path: str = Field(default="", description="the HAProxy map file; default: <directory>/vault.map. "
                                                  "HAProxy must load it under this same path (MS_VAULT_MAP)")
    key_b64: SecretStr | None = Field(default_factory=_dev_default(DEV_VAULT_KEY_B64),
                                      description="AES-256-GCM key (base64 of 32 bytes) of the vault versions")
    previous_keys_b64: list[SecretStr] = Field(default_factory=list,
                                               description="earlier vault keys: `vault decrypt` still reads the "
                                                           "versions written under them")
    runtime_sockets: list[str] = Field(default_factory=list,
                                       description="HAProxy Runtime API sockets to update live: Unix socket paths, "
                                                   "or host:port on loopback (sinks/runtime_address.py)")
    runtime_allow_remote: bool = Field(default=False,
                                       description="allow a Runtime API address beyond loopback: plaintext, "
                                                   "unauthenticated admin access over the network (docs/security.md)")
    interval_s: float = Field(default=30.0, gt=0, description="full rebuild period, besides notifications")
    debounce_s: float = Field(default=0.05, ge=0, description="wait after a notification for more to arrive")
    map_mode: int = Field(default=0o600, description="file mode of the map (octal, e.g. \"0640\" so that "
                                                     "HAProxy's group reads it); no bits for others")
    map_group: str = Field(default="", description="group (name or gid) of the map file, e.g. haproxy; "
                                                   "default: the process's own")

    _blank_key = field_validator("key_b64", mode="before")(_blank_is_unset)

    @field_validator("key_b64")
    @classmethod
    def _vault_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            key_bytes(value, exact=32)
        return value

    @field_validator("previous_keys_b64")
    @classmethod
    def _previous_vault_keys(cls, values: list[SecretStr]) -> list[SecretStr]:
        for value in values:
            key_bytes(value, exact=32)
        return values

    @field_validator("map_mode", mode="before")
    @classmethod
    def _octal_mode(cls, value: object) -> object:
        if isinstance(value, str):  # "0640", "640", "0o640": octal, as chmod takes it
            try:
                return int(value.strip().removeprefix("0o"), 8)
            except ValueError:
                raise ValueError("an octal file mode such as 0640") from None
        return value

    @field_validator("map_mode")
    @classmethod
    def _mode_bits(cls, mode: int) -> int:
        if mode & ~0o660 or mode & 0o600 != 0o600:
            raise ValueError(f"{mode:#o}: the owner reads and writes (0600), the group may read or write "
                             "(0640, 0660), others get nothing, and nothing is executable")
        return mode

    @field_validator("runtime_sockets")
    @classmethod
    def _runtime_addresses(cls, sockets: list[str]) -> list[str]:
        from meterstream.sinks.runtime_address import parse  # the rules live beside the client

        for socket in sockets:
            try:
                parse(socket)
            except ValueError as exc:
                raise ValueError(str(exc)) from None
        return sockets

    @model_validator(mode="after")
    def _remote_runtime(self) -> VaultSettings:
        from meterstream.sinks.runtime_address import parse

        remote = [str(a) for a in map(parse, self.runtime_sockets) if not a.is_loopback]
        if remote and not self.runtime_allow_remote:
            raise ValueError(f"vault.runtime_sockets: {', '.join(remote)} is not loopback; the Runtime API is "
                             "plaintext admin access: use a Unix socket or a loopback address, or set "
                             "vault.runtime_allow_remote = true to accept the risk (docs/security.md)")
        return self

    def map_file(self) -> Path:
        return Path(self.map_path) if self.map_path else Path(self.directory) / "vault.map"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MS_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
        hide_input_in_errors=True,  # an error names the setting, never its value (a password, a DSN)
    )

    kafka: KafkaSettings = KafkaSettings()
    postgres: PostgresSettings = PostgresSettings()
    http: HttpSettings = HttpSettings()
    keys: KeySettings = Field(default_factory=KeySettings)
    tail: TailSettings = TailSettings()
    produce: ProduceSettings = ProduceSettings()
    parse: ParseSettings = ParseSettings()
    syslog: SyslogSettings = SyslogSettings()
    sync: SyncSettings = SyncSettings()
    sink: SinkSettings = SinkSettings()
    worker: WorkerSettings = WorkerSettings()
    vault: VaultSettings = Field(default_factory=VaultSettings)
    log_level: str = "info"
    log_format: str = Field(default="auto", pattern="^(auto|json|console)$")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # model_config["toml_file"] is set by load() when a file is given
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    def topic(self, name: str) -> str:
        """The configured Kafka topic name for one of the logical names in schemas.topics."""
        return f"{self.kafka.topic_prefix}{name}"


def load(config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Settings from (in order) overrides, the environment, the TOML file, the defaults.
    Raises FileNotFoundError for a missing file and ConfigError for everything else."""
    from meterstream import devmode

    try:
        devmode.enabled()  # the key defaults depend on it: a value that is neither on nor off stops here
    except devmode.DevModeError as exc:
        raise ConfigError([str(exc)]) from None
    try:
        return _load(config_file, **overrides)
    except ValidationError as exc:
        raise ConfigError(redacted(exc)) from None
    except SettingsError as exc:  # a value that is not JSON where the setting needs it: names the field only
        raise ConfigError([str(exc)]) from None
    except tomllib.TOMLDecodeError as exc:  # says where (line, column), not what
        raise ConfigError([f"{config_file or os.environ.get('MS_CONFIG')}: not TOML: {exc}"]) from None


def _load(config_file: str | os.PathLike[str] | None, **overrides: Any) -> Settings:
    path = config_file or os.environ.get("MS_CONFIG")
    if path is None:
        return Settings(**overrides)
    toml_file = Path(path)
    if not toml_file.is_file():
        raise FileNotFoundError(f"config file not found: {toml_file}")

    class FileSettings(Settings):
        model_config = SettingsConfigDict(**{**Settings.model_config, "toml_file": toml_file})

    return FileSettings(**overrides)


# -- configuration errors that never echo a value (docs/security.md) --------------------------

class ConfigError(ValueError):
    """The configuration does not load. ``problems`` holds one line per problem: where (the
    setting's dotted name) and what is wrong, never the value given, which may be a secret (the
    value of a misspelt key such as ``[postgres] dns = "postgresql://app:password@..."``)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def redacted(error: ValidationError, section: str = "") -> list[str]:
    """One line per error of ``error`` (of the whole configuration, or of the ``section``
    named): the setting and pydantic's message, without the ``input_value`` that ``str(error)``
    prints."""
    lines = []
    for e in error.errors(include_url=False, include_input=False, include_context=False):
        where = ".".join([section] * bool(section) + [str(part) for part in e["loc"]]) or "configuration"
        message = "not a setting (misspelt?)" if e["type"] == "extra_forbidden" else e["msg"]
        message = message.removeprefix("Value error, ")
        lines.append(message if message.startswith(where) else f"{where}: {message}")
    return lines
