"""Files replaced whole never write through a planted link (meterstream/atomic_file.py), and
the vault writes HAProxy's map with the mode and group of its settings (vault.map_mode,
vault.map_group), so that HAProxy running as its own user can read it."""

from __future__ import annotations

import grp
import os
import stat
from pathlib import Path

import asyncpg
import pytest

from meterstream.atomic_file import group_id, probe, write_atomically
from meterstream.dev import sample
from meterstream.dev.processes import Process, require, wait_for
from meterstream.ingest.checkpoint import Checkpoint, CheckpointStore, StreamCheckpoint
from meterstream.settings import Settings


def test_a_link_planted_at_the_temporary_name_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    target = tmp_path / "vault.map"
    planted = tmp_path / f".vault.map.{os.getpid()}.tmp"
    planted.symlink_to(victim)
    write_atomically(target, b"new content\n", 0o640)
    assert victim.read_bytes() == b"precious"  # not truncated, not written through the link
    assert target.read_bytes() == b"new content\n" and not target.is_symlink()
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert not planted.exists() and not planted.is_symlink()


def test_the_checkpoint_is_written_the_same_way(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    path = tmp_path / "tail.checkpoint"
    (tmp_path / f".tail.checkpoint.{os.getpid()}.tmp").symlink_to(victim)
    store = CheckpointStore(path)
    store.save(Checkpoint({"s": StreamCheckpoint(10, "/var/log/haproxy.log", 1)}))
    assert victim.read_bytes() == b"precious"
    assert store.load().streams["s"].offset == 10
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_probe_says_what_stands_in_the_way(tmp_path: Path) -> None:
    assert probe(tmp_path / "vault.map", 0o640) is None
    assert probe(tmp_path / "not-yet" / "vault.map") is None  # created at the first write
    (tmp_path / "file").write_text("x")
    assert "not a directory" in probe(tmp_path / "file" / "sub" / "vault.map")
    assert "is a directory" in probe(tmp_path)
    assert list(tmp_path.iterdir()) == [tmp_path / "file"]  # nothing left behind
    with pytest.raises(ValueError, match="no group named"):
        group_id("no-such-group-here")


@pytest.mark.services
async def test_the_vault_writes_the_map_with_its_mode_and_group(ms_topics: Settings, pg: asyncpg.Connection,
                                                                 pg_dsn: str, tmp_path: Path) -> None:
    require("haproxy")  # the set-up installs it, and with it the haproxy group
    haproxy_gid = grp.getgrnam("haproxy").gr_gid
    await sample.load(pg, ms_topics)
    map_path = tmp_path / "shared" / "maps" / "vault.map"  # its directory does not exist yet
    env = {"MS_KAFKA__BOOTSTRAP": ms_topics.kafka.bootstrap, "MS_KAFKA__TOPIC_PREFIX": ms_topics.kafka.topic_prefix,
           "MS_POSTGRES__DSN": pg_dsn, "MS_VAULT__DIRECTORY": str(tmp_path / "vault"),
           "MS_VAULT__MAP_PATH": str(map_path), "MS_VAULT__MAP_MODE": "0640", "MS_VAULT__MAP_GROUP": "haproxy"}
    vault = Process(["vault"], env, tmp_path / "vault.log").start()
    try:
        wait_for(lambda: map_path.exists(), 30, "the map")
        info = map_path.stat()
        assert (stat.S_IMODE(info.st_mode), info.st_gid) == (0o640, haproxy_gid)
        directory = map_path.parent.stat()
        assert (stat.S_IMODE(directory.st_mode), directory.st_gid) == (0o750, haproxy_gid)
        assert len(map_path.read_text().splitlines()) == 4
        assert vault.terminate() == 0
    finally:
        if vault.running():
            vault.kill9()
    # a group this host does not have: refused before anything starts
    bad = Process(["vault"], {**env, "MS_VAULT__MAP_GROUP": "no-such-group-here"}, tmp_path / "bad.log").start()
    assert bad.proc is not None and bad.proc.wait(60) == 2
    assert "vault.map_group: no group named no-such-group-here" in (tmp_path / "bad.log").read_text()
