"""The built-in development keys, and the settings that hold one (docs/security.md).

The built-in keys are public (meterstream/settings.py), so outside development mode
(``MS_DEV=1``, meterstream/devmode.py) a process whose configuration holds one refuses to
start (exit 2) and ``meterstream check`` reports it: the setting is named, never its value. A
key is compared by its bytes, so another base64 spelling of a built-in key is built-in too.
"""

from __future__ import annotations

import base64
import binascii

from pydantic import SecretStr

from meterstream import devmode
from meterstream.settings import DEV_KEY_SECRET_B64, DEV_KEY_STORE_B64, DEV_VAULT_KEY_B64, Settings

BUILTIN = frozenset(base64.b64decode(k) for k in (DEV_KEY_SECRET_B64, DEV_KEY_STORE_B64, DEV_VAULT_KEY_B64))
# where the configuration holds keys: setting -> environment variable
KEY_SETTINGS = {
    "keys.key_secret_b64": "MS_KEYS__KEY_SECRET_B64",
    "keys.key_store_b64": "MS_KEYS__KEY_STORE_B64",
    "keys.key_store_previous_b64": "MS_KEYS__KEY_STORE_PREVIOUS_B64",
    "vault.key_b64": "MS_VAULT__KEY_B64",
    "vault.previous_keys_b64": "MS_VAULT__PREVIOUS_KEYS_B64",
}


def _is_builtin(secret: SecretStr) -> bool:
    try:
        return base64.b64decode(secret.get_secret_value().strip(), validate=True) in BUILTIN
    except (binascii.Error, ValueError):
        return False


def _values(settings: Settings, name: str) -> list[SecretStr]:
    section, field = name.split(".")
    value = getattr(getattr(settings, section), field)
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def held(settings: Settings) -> list[str]:
    """The key settings whose value (or one of whose values) is a built-in development key."""
    return [name for name in KEY_SETTINGS if any(_is_builtin(v) for v in _values(settings, name))]


def refusals(settings: Settings) -> list[str]:
    """Why this configuration may not run outside development mode: one line per setting that
    holds a built-in key (none in development mode)."""
    if devmode.enabled():
        return []
    return [f"{name} holds a built-in development key (public: it is in meterstream's source); set "
            f"{KEY_SETTINGS[name]} (or [{name.split('.')[0]}] {name.split('.')[1]}) to a key of your own, "
            f"or set MS_DEV=1 for a development run" for name in held(settings)]


def missing(settings: Settings, needed: list[str]) -> list[str]:
    """One line per key setting of ``needed`` that is not set."""
    return [f"{name} is not set: this process needs it ({KEY_SETTINGS[name]}; docs/security.md)"
            for name in needed if not _values(settings, name)]


class MissingKey(ValueError):
    """A key setting a step needs is not set (outside development mode, keys have no default)."""


def require(settings: Settings, name: str) -> str:
    """The value of the key setting ``name`` (e.g. ``keys.key_secret_b64``); MissingKey names
    it when it is not set."""
    values = _values(settings, name)
    if not values:
        raise MissingKey(f"{name} is not set ({KEY_SETTINGS[name]}; docs/security.md)")
    return values[0].get_secret_value()
