"""Configuration: defaults, TOML file, environment precedence; secrets stay hidden."""

from __future__ import annotations

from pathlib import Path

import pytest

from meterstream import settings as settings_mod


def test_defaults_point_at_dev_services(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MS_CONFIG", raising=False)
    s = settings_mod.load()
    assert s.kafka.bootstrap == "127.0.0.1:19092"
    assert s.postgres.dsn.get_secret_value().endswith("@127.0.0.1:15432/meterstream")
    assert s.topic("haproxy.logs") == "haproxy.logs"


def test_file_then_env_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "ms.toml"
    cfg.write_text('log_level = "debug"\n[kafka]\nbootstrap = "k1:9092"\ntopic_prefix = "prod."\n')
    s = settings_mod.load(cfg)
    assert (s.kafka.bootstrap, s.topic("meter.usage"), s.log_level) == ("k1:9092", "prod.meter.usage", "debug")
    monkeypatch.setenv("MS_KAFKA__BOOTSTRAP", "k2:9092")
    s = settings_mod.load(cfg)
    assert s.kafka.bootstrap == "k2:9092" and s.kafka.topic_prefix == "prod."
    assert settings_mod.load(cfg, log_level="warning").log_level == "warning"


def test_unknown_keys_and_missing_file_are_errors(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[kafka]\nbootstrp = 'typo'\n")
    with pytest.raises(ValueError, match="bootstrp"):
        settings_mod.load(cfg)
    with pytest.raises(FileNotFoundError):
        settings_mod.load(tmp_path / "absent.toml")


def test_secrets_do_not_print() -> None:
    s = settings_mod.load(None, postgres={"dsn": "postgresql://u:hunter2@h/db"})
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.model_dump())
