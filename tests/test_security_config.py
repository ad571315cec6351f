"""Secure by default (docs/security.md), through the real `meterstream` command: built-in keys
only in development mode, keys that are not set, and configuration errors that never echo a
secret (pydantic's input_value, asyncpg's DSN parser)."""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import pytest

from meterstream.dev.processes import meterstream_exe
from meterstream.settings import DEV_KEY_SECRET_B64, DEV_KEY_STORE_B64, DEV_VAULT_KEY_B64

OWN_KEY = base64.b64encode(b"o" * 32).decode()
PASSWORD = "hunter2"
FRAGMENTS = (PASSWORD, "unter", "ter2")  # what asyncpg's parser would quote of it
BUILTIN = {
    "MS_KEYS__KEY_SECRET_B64": ("keys.key_secret_b64", DEV_KEY_SECRET_B64),
    "MS_KEYS__KEY_STORE_B64": ("keys.key_store_b64", DEV_KEY_STORE_B64),
    "MS_VAULT__KEY_B64": ("vault.key_b64", DEV_VAULT_KEY_B64),
}


def run(*args: str, env: dict[str, str] | None = None, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """The command as a deployment runs it: MS_DEV unset, no MS_* but those given."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MS_")}
    return subprocess.run([meterstream_exe(), *args], capture_output=True, text=True, timeout=120, input=stdin,
                          env={**clean, **(env or {})})


# -- development mode --------------------------------------------------------------------------

@pytest.mark.parametrize("variable", sorted(BUILTIN))
def test_a_built_in_key_is_refused_outside_development_mode(variable: str) -> None:
    setting, key = BUILTIN[variable]
    out = run("parse", env={variable: key})
    assert out.returncode == 2, out.stderr
    assert setting in out.stderr and "built-in development key" in out.stderr
    assert key not in out.stdout + out.stderr
    # the same key spelt otherwise (surrounding blanks) is the same key
    assert run("parse", env={variable: f" {key} "}).returncode == 2
    # in development mode it is the default anyway
    assert run("parse", env={variable: key, "MS_DEV": "1"}).returncode == 0


def test_a_built_in_key_in_a_file_or_a_list_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "ms.toml"
    cfg.write_text(f'[vault]\nprevious_keys_b64 = ["{OWN_KEY}", "{DEV_VAULT_KEY_B64}"]\n'
                   f'[keys]\nkey_store_b64 = "{DEV_KEY_STORE_B64}"\n')
    out = run("--config", str(cfg), "parse")
    assert out.returncode == 2
    assert "vault.previous_keys_b64" in out.stderr and "keys.key_store_b64" in out.stderr
    assert DEV_VAULT_KEY_B64 not in out.stderr and DEV_KEY_STORE_B64 not in out.stderr


def test_outside_development_mode_keys_have_no_default() -> None:
    # a process that needs no key runs without any
    assert run("parse", stdin="").returncode == 0
    # one that needs a key says which, and does not start
    out = run("vault")
    assert out.returncode == 2 and "vault.key_b64 is not set" in out.stderr and "MS_VAULT__KEY_B64" in out.stderr
    out = run("keys", "rotate-store")
    assert out.returncode == 2 and "keys.key_store_b64 is not set" in out.stderr
    # an empty value (`MS_VAULT__KEY_B64=` in an environment file) is a key that is not set
    assert run("parse", env={"MS_KEYS__KEY_STORE_B64": "", "MS_KEYS__KEY_SECRET_B64": " "}).returncode == 0
    out = run("vault", env={"MS_VAULT__KEY_B64": ""})
    assert out.returncode == 2 and "vault.key_b64 is not set" in out.stderr


def test_development_mode_must_be_on_or_off() -> None:
    out = run("parse", env={"MS_DEV": "maybe"})
    assert out.returncode == 2 and "MS_DEV must be 1" in out.stderr
    assert run("parse", env={"MS_DEV": "0", "MS_VAULT__KEY_B64": DEV_VAULT_KEY_B64}).returncode == 2


def test_help_works_whatever_the_configuration(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f'[vault]\nkey_b64 = "{DEV_VAULT_KEY_B64}"\n[kafka]\nbootstrp = "x"\n')
    for command in (["vault", "--help"], ["tail", "--help"], ["check", "--help"], ["keys", "rotate-store", "--help"]):
        out = run("--config", str(cfg), *command)
        assert out.returncode == 0, (command, out.stderr)


# -- configuration errors never echo a secret -----------------------------------------------------

def assert_silent(out: subprocess.CompletedProcess[str]) -> None:
    for fragment in FRAGMENTS:
        assert fragment not in out.stdout and fragment not in out.stderr, (fragment, out.stdout, out.stderr)


def test_a_misspelt_key_is_named_not_echoed(tmp_path: Path) -> None:
    cfg = tmp_path / "ms.toml"
    cfg.write_text(f'[postgres]\ndns = "postgresql://app:{PASSWORD}@db.example:5432/meterstream"\n')
    for command in (["migrate"], ["check"], ["check", "--no-connect"]):
        out = run("--config", str(cfg), *command)
        assert out.returncode == 2, out.stderr
        assert "postgres.dns" in out.stderr and "not a setting" in out.stderr
        assert_silent(out)
    out = run("migrate", env={"MS_POSTGRES__DNS": f"postgresql://app:{PASSWORD}@db.example/meterstream"})
    assert out.returncode == 2 and "postgres.dns" in out.stderr
    assert_silent(out)
    out = run("migrate", env={"MS_KEYS__KEY_STORE": f"{PASSWORD}{PASSWORD}"})
    assert out.returncode == 2 and "keys.key_store" in out.stderr
    assert_silent(out)


@pytest.mark.parametrize("dsn", [
    f"postgresql://app:p@ss:{PASSWORD}@127.0.0.1:15432/x",  # asyncpg: invalid literal for int(): 'hunter2@...'
    f"postgresql://app:{PASSWORD}/x",  # no '@': the password read as a port
    f"postgresql://app:{PASSWORD}@127.0.0.1:15432/x?gsslib={PASSWORD}",
    f"postgresql://app:{PASSWORD}@127.0.0.1:15432/x?target_session_attrs={PASSWORD}",
    f"postgresql://app:{PASSWORD}@127.0.0.1:15432/x?ssl_min_protocol_version={PASSWORD}",
    f"postgresql://app:{PASSWORD}@[::1/x",
    f"postgresql://app:{PASSWORD}@127.0.0.1:15432/x?{PASSWORD}",
    f"mysql://app:{PASSWORD}@127.0.0.1/x",
])
def test_a_dsn_asyncpg_cannot_parse_is_named_not_echoed(dsn: str) -> None:
    for command in (["migrate"], ["check", "--for", "sink-postgres", "--no-connect"]):
        out = run(*command, env={"MS_POSTGRES__DSN": dsn})
        assert out.returncode == 2, out.stderr
        assert "postgres.dsn" in out.stderr
        assert_silent(out)


def test_a_dsn_only_asyncpg_refuses_is_said_without_quoting_it() -> None:
    """Past the settings' own check, asyncpg's refusal becomes DsnError: exit 2, nothing quoted."""
    out = run("migrate", env={"MS_POSTGRES__DSN": f"postgresql://app:{PASSWORD}@/x?host=a,b&port=1,2,3"})
    assert out.returncode == 2, out.stderr
    assert "postgres.dsn cannot be used" in out.stderr and "Traceback" not in out.stderr
    assert_silent(out)
