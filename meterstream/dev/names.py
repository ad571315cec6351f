"""Unique names for the topics, topic prefixes and databases of one run."""

from __future__ import annotations

import uuid


def unique(prefix: str) -> str:
    """A name no other run uses: ``<prefix>_<12 hex digits>``."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"
