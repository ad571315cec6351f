"""Configuration of every meterstream process.

One source of truth, in this order of precedence: command-line flags (applied by the CLI),
environment variables (``MS_`` prefix, ``__`` between levels, e.g. ``MS_KAFKA__BOOTSTRAP``),
a TOML file (``--config FILE`` or ``MS_CONFIG``), then the embedded defaults, which point at
the local services that ``meterstream dev up`` starts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

# Ports of the local development services (loopback only); see meterstream/devservices.
DEV_KAFKA_PORT = 19092
DEV_KAFKA_CONTROLLER_PORT = 19093
DEV_POSTGRES_PORT = 15432


class Section(BaseModel):
    """A section of the configuration: a misspelt key is an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class KafkaSettings(Section):
    bootstrap: str = f"127.0.0.1:{DEV_KAFKA_PORT}"
    topic_prefix: str = Field(default="", description="prepended to every topic name")
    client_id: str = "meterstream"
    request_timeout_s: float = Field(default=30.0, gt=0)


class PostgresSettings(Section):
    dsn: SecretStr = SecretStr(f"postgresql://postgres@127.0.0.1:{DEV_POSTGRES_PORT}/meterstream")
    connect_timeout_s: float = Field(default=10.0, gt=0)


class HttpSettings(Section):
    """The /metrics and /healthz endpoint every long-running process serves."""

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="0 picks a free port")


class KeySettings(Section):
    # HMAC-SHA256 secret HAProxy and the key store share (base64, as HAProxy's hmac converter
    # takes it). The default is for local development only.
    key_secret_b64: SecretStr = SecretStr("bWV0ZXJzdHJlYW0tZGV2LWtleS1zZWNyZXQtMzJieXQ=")
    # AES-256-GCM key (base64 of 32 bytes) that encrypts api_keys.api_key_id at rest.
    key_store_b64: SecretStr = SecretStr("ZGV2LW9ubHktYXBpLWtleS1zdG9yZS1rZXktMzJieXQ=")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MS_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    kafka: KafkaSettings = KafkaSettings()
    postgres: PostgresSettings = PostgresSettings()
    http: HttpSettings = HttpSettings()
    keys: KeySettings = KeySettings()
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
    """Settings from (in order) overrides, the environment, the TOML file, the defaults."""
    path = config_file or os.environ.get("MS_CONFIG")
    if path is None:
        return Settings(**overrides)
    toml_file = Path(path)
    if not toml_file.is_file():
        raise FileNotFoundError(f"config file not found: {toml_file}")

    class FileSettings(Settings):
        model_config = SettingsConfigDict(**{**Settings.model_config, "toml_file": toml_file})

    return FileSettings(**overrides)
