"""Files replaced whole (the vault's map and versions, the tailer's checkpoint): a reader sees
the old file or the new one, never half of one, and nobody else's file is ever written.

The new content goes to a temporary file beside the target, created with
``O_CREAT | O_EXCL | O_NOFOLLOW`` (never an existing file, never through a symbolic link that
someone placed under its name), given its group and mode through the open descriptor (not by
path, which could be swapped in between), flushed to disk, and renamed over the target; the
directory is flushed too, so the rename survives a crash.
"""

from __future__ import annotations

import contextlib
import grp
import os
from collections.abc import Callable
from pathlib import Path

FILE_MODE = 0o600
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _temporary(path: Path) -> tuple[Path, int]:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        return tmp, os.open(tmp, _CREATE, FILE_MODE)
    except FileExistsError:
        # left by a crashed process that had our pid, or put there by someone else (a symlink):
        # unlink removes the name itself, never what a link points to; then create it anew
        os.unlink(tmp)
        return tmp, os.open(tmp, _CREATE, FILE_MODE)


def write_atomically(path: Path, data: bytes, mode: int = FILE_MODE, gid: int | None = None,
                     before_replace: Callable[[], None] | None = None) -> None:
    """Replace ``path`` with ``data``, mode ``mode`` (whatever the umask) and group ``gid``
    (None: the process's). ``before_replace`` runs once the new content is on disk, just
    before the rename (the checkpoint keeps its previous generation there)."""
    tmp, fd = _temporary(path)
    try:
        with os.fdopen(fd, "wb") as out:
            if gid is not None:
                os.fchown(out.fileno(), -1, gid)
            os.fchmod(out.fileno(), mode)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)


def group_id(group: str) -> int | None:
    """The gid of a group given by name or number; None for ""; ValueError when unknown."""
    group = group.strip()
    if not group:
        return None
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"no group named {group} on this host") from None


def probe(path: Path, mode: int = FILE_MODE, gid: int | None = None) -> str | None:
    """Whether ``path`` could be replaced as ``write_atomically`` does (its directory exists
    or can be created, a temporary file can be created there with this mode and group):
    None, or what stands in the way. Leaves nothing behind."""
    if path.is_dir():
        return f"{path} is a directory"
    directory = path.parent
    existing = directory
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory"
    if existing != directory:  # created at the first write: the nearest existing one must allow it
        if not os.access(existing, os.W_OK | os.X_OK):
            return f"{directory} does not exist and {existing} is not writable"
        return None
    try:
        tmp, fd = _temporary(path)
    except OSError as exc:
        return f"cannot create a file in {directory}: {exc.strerror}"
    try:
        if gid is not None:
            os.fchown(fd, -1, gid)
        os.fchmod(fd, mode)
    except OSError as exc:
        return f"cannot give a file in {directory} group {gid} and mode {mode:#o}: {exc.strerror}"
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return None
