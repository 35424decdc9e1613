"""Snapshots through a real in-process server: round trips, incremental
reads, tree reuse, write order, the FAILED_PRECONDITION retry, fencing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from sessiond.api.v1 import common_pb2
from sessiond.client import workspace_format as wf
from sessiond.client.errors import Aborted, FailedPrecondition, Unavailable
from sessiond.hydrator import snapshot as snapshot_mod
from sessiond.hydrator import trees
from sessiond.hydrator.snapshot import SnapshotState, snapshot
from sessiond.hydrator.upload import DATA, TREE

from .snapshot_helpers import (
    RecordingProgress,
    describe,
    make_workspace,
    read_snapshot,
    workspace_env,
)


@pytest.fixture
def no_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    # Files written by the test are seconds young: without this every one of
    # them is "racily clean" and read again (see test_racily_clean_files_are_read_again).
    monkeypatch.setattr(trees, "RACY_WINDOW_NS", 0)


async def test_round_trip_matches_disk(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    make_workspace(ws)
    os.mkfifo(ws / "fifo")
    async with workspace_env(tmp_path) as env:
        snap = await snapshot(env.remote, ws)
        manifest, root, config = await read_snapshot(env.remote, snap)
    expected = describe(ws)
    assert root == expected
    assert root[b"script.sh"] == ("file", 0o755, b"#!/bin/sh\n")  # setuid stripped
    assert root[b"abs-link"] == ("link", b"/etc/passwd")  # recorded, not followed
    assert root[b"src/escape"] == ("link", b"../../outside")
    assert root["caf\udce9-\udcff.txt".encode("utf-8", "surrogateescape")][0] == "file"
    assert manifest.source_cwd == os.fsencode(ws.resolve())
    assert config == {}
    assert snap.stats.skipped == 1  # the fifo
    assert snap.stats.files == len([v for v in expected.values() if v[0] == "file"])
    assert snap.stats.symlinks == 4
    assert snap.stats.new_bytes >= 3 << 20
    assert snap.trigger == common_pb2.SNAPSHOT_TRIGGER_MANUAL


async def test_write_order_is_packs_manifest_commit(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    make_workspace(ws)
    async with workspace_env(tmp_path) as env:
        await snapshot(env.remote, ws)
    names = [n for n in env.remote.names() if n != "workspace"]
    assert names[-2:] == ["put_manifest", "commit"]
    assert set(names[:-2]) == {"missing", "put_pack"}
    assert names.index("put_manifest") > max(i for i, n in enumerate(names) if n == "put_pack")


@pytest.mark.usefixtures("no_racy_window")
async def test_incremental_snapshot_reads_only_changed_files(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    make_workspace(ws)
    async with workspace_env(tmp_path) as env:
        first = await snapshot(env.remote, ws)
        env.remote.reset()
        (ws / "src" / "pkg" / "mod.py").write_text("x = 2\n")
        (ws / "src" / "pkg" / "new.py").write_text("y = 3\n")
        progress = RecordingProgress()
        second = await snapshot(env.remote, ws, progress=progress)
        _, root, _ = await read_snapshot(env.remote, second)
    assert sorted(progress.read) == [b"src/pkg/mod.py", b"src/pkg/new.py"]
    assert root == describe(ws)
    assert second.parent_snapshot_id == first.snapshot_id
    # Only the changed path to the root got new trees: src/pkg, src, root.
    assert len(env.remote.packed(TREE)) == 3
    assert {c.raw_length for c in env.remote.packed(DATA)} == {6}


@pytest.mark.usefixtures("no_racy_window")
async def test_unchanged_workspace_uploads_nothing(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    make_workspace(ws)
    async with workspace_env(tmp_path) as env:
        first = await snapshot(env.remote, ws)
        env.remote.reset()
        progress = RecordingProgress()
        second = await snapshot(env.remote, ws, progress=progress)
    assert progress.read == []
    # Every directory is vouched for by its fingerprint: no tree is even asked about.
    assert "missing" not in env.remote.names() and "put_pack" not in env.remote.names()
    assert second.manifest_id != "" and second.stats.new_bytes == 0
    assert second.stats.files == first.stats.files


async def test_racily_clean_files_are_read_again(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "young.txt").write_text("just written")
    async with workspace_env(tmp_path) as env:
        await snapshot(env.remote, ws)
        progress = RecordingProgress()
        await snapshot(env.remote, ws, progress=progress)
    # Modified within the racy window: a same-tick rewrite would keep its
    # stat, so the cache must not vouch for it yet.
    assert progress.read == [b"young.txt"]


@pytest.mark.usefixtures("no_racy_window")
async def test_restored_cache_from_disk_is_used(tmp_path: Path) -> None:
    """A second process (a fresh SnapshotState) loads the saved cache."""
    ws = tmp_path / "ws"
    make_workspace(ws)
    async with workspace_env(tmp_path) as env:
        await snapshot(env.remote, ws, state=SnapshotState())
        progress = RecordingProgress()
        await snapshot(env.remote, ws, state=SnapshotState(), progress=progress)
        assert progress.read == []
        (ws / "README.md").write_text("changed\n")
        progress = RecordingProgress()
        await snapshot(env.remote, ws, state=SnapshotState(), progress=progress)
    assert progress.read == [b"README.md"]


@pytest.mark.usefixtures("no_racy_window")
async def test_failed_precondition_retries_once_with_empty_cache(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    make_workspace(ws)
    async with workspace_env(tmp_path) as env:
        await snapshot(env.remote, ws)
        (ws / "README.md").write_text("changed\n")
        env.remote.reset()
        env.remote.fail_next["put_manifest"] = FailedPrecondition("missing tree")
        progress = RecordingProgress()
        snap = await snapshot(env.remote, ws, progress=progress)
        _, root, _ = await read_snapshot(env.remote, snap)
    assert root == describe(ws)
    # First attempt read the one changed file; the retry read everything.
    files = sum(1 for v in describe(ws).values() if v[0] == "file")
    assert len(progress.read) == 1 + files
    assert env.remote.names().count("put_manifest") == 2


async def test_failed_precondition_with_empty_cache_is_raised(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    make_workspace(ws)
    async with workspace_env(tmp_path) as env:
        env.remote.fail_next["put_manifest"] = FailedPrecondition("missing tree")
        with pytest.raises(FailedPrecondition):
            await snapshot(env.remote, ws)
    assert env.remote.names().count("put_manifest") == 1
    assert "commit" not in env.remote.names()


@pytest.mark.usefixtures("no_racy_window")
async def test_failed_commit_leaves_cache_unsaved(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    make_workspace(ws)
    async with workspace_env(tmp_path) as env:
        env.remote.fail_next["commit"] = Aborted("lease lost")
        state = SnapshotState()
        with pytest.raises(Aborted):
            await snapshot(env.remote, ws, state=state)
        assert not (ws / ".sessiond" / "statcache.sqlite").exists()
        assert state.cache is None or state.cache.is_empty()
        progress = RecordingProgress()
        await snapshot(env.remote, ws, state=state, progress=progress)
    assert len(progress.read) == sum(1 for v in describe(ws).values() if v[0] == "file")


async def test_a_commit_whose_reply_was_lost_is_not_committed_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit lands but every reply is lost: a re-run from the same state
    resends the pending commit (same key) and gets the landed snapshot back;
    a changed workspace is a new state and commits a new snapshot."""
    monkeypatch.setattr(snapshot_mod, "_COMMIT_RETRIES", 1)
    ws = tmp_path / "ws"
    make_workspace(ws)
    async with workspace_env(tmp_path) as env:

        async def ids() -> list[str]:
            listed = await env.client.list_snapshots(env.session_id)
            return [s.snapshot_id for s in listed.snapshots]

        first = await snapshot(env.remote, ws)
        (ws / "README.md").write_text("second state\n")
        real_commit = env.remote.commit
        keys: list[str] = []

        async def reply_lost(request: Any) -> common_pb2.Snapshot:
            keys.append(request.idempotency_key)
            await real_commit(request)
            raise Unavailable("connection reset")

        monkeypatch.setattr(env.remote, "commit", reply_lost)
        with pytest.raises(Unavailable):
            await snapshot(env.remote, ws)
        landed = await ids()
        assert len(landed) == 2 and landed[1] == first.snapshot_id
        assert len(keys) == 2 and len(set(keys)) == 1  # the retry: same key

        monkeypatch.setattr(env.remote, "commit", real_commit)
        rerun = await snapshot(env.remote, ws)
        assert rerun.snapshot_id == landed[0]
        assert await ids() == landed
        _, root, _ = await read_snapshot(env.remote, rerun)
        assert root == describe(ws)

        (ws / "README.md").write_text("third state\n")
        third = await snapshot(env.remote, ws)
        assert third.snapshot_id not in landed
        assert await ids() == [third.snapshot_id, *landed]
        _, root, _ = await read_snapshot(env.remote, third)
        assert root == describe(ws)


async def test_stale_lease_is_fenced(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    make_workspace(ws)
    async with workspace_env(tmp_path) as env:
        await snapshot(env.remote, ws)  # acquires a lease, records it in state.json
        await env.remote.workspace(acquire_lease=True)  # another sandbox takes over
        (ws / "README.md").write_text("late write\n")
        with pytest.raises(Aborted):
            await snapshot(env.remote, ws)


async def test_dedup_within_a_snapshot(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    blob = os.urandom(100_000)
    for i in range(5):
        (ws / f"copy{i}").write_bytes(blob)
    async with workspace_env(tmp_path) as env:
        snap = await snapshot(env.remote, ws)
    assert len(env.remote.packed(DATA)) == 1
    assert snap.stats.bytes == 5 * len(blob) and snap.stats.new_bytes < 2 * len(blob)


async def test_trees_are_packed_apart_from_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trees go into packs of their own or after every data chunk of the
    last pack: a restore reads them level by level with few ranged GETs."""
    monkeypatch.setattr(snapshot_mod, "PACK_BYTES", 64 << 10)
    ws = tmp_path / "ws"
    for d in range(12):
        (ws / f"d{d}").mkdir(parents=True)
        for f in range(4):
            (ws / f"d{d}" / f"f{f}").write_bytes(os.urandom(5000))
    async with workspace_env(tmp_path) as env:
        await snapshot(env.remote, ws)
    packs = [[c.kind for c in chunks] for name, chunks in env.remote.calls if name == "put_pack"]
    assert len(packs) > 2
    assert sum(kinds.count(TREE) for kinds in packs) == 13
    for kinds in packs:
        first_tree = kinds.index(TREE) if TREE in kinds else len(kinds)
        assert all(k == TREE for k in kinds[first_tree:]), kinds


async def test_mid_file_edit_of_a_large_file_uploads_little(tmp_path: Path) -> None:
    """The issue's target: a mid-file edit of a 200 MB file uploads ≤ 4 MiB."""
    ws = tmp_path / "ws"
    ws.mkdir()
    size = 200 << 20
    write_random(ws / "big.bin", size)
    async with workspace_env(tmp_path) as env:
        first = await snapshot(env.remote, ws)
        insert(ws / "big.bin", size // 2, b"an insertion in the middle")
        second = await snapshot(env.remote, ws)
    assert first.stats.new_bytes >= size
    assert second.stats.bytes == size + 26
    assert second.stats.new_bytes <= 4 << 20
    assert second.stats.new_chunks <= 3  # the edited chunk (+ its neighbour) + the root tree


def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        for _ in range(size // (8 << 20)):
            f.write(os.urandom(8 << 20))


def insert(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        tail = f.read()
        f.seek(offset)
        f.write(data + tail)


def test_tree_ids_are_content_addresses() -> None:
    node = wf.serialize_tree([])
    assert wf.chunk_id(b"k" * 32, node) == wf.chunk_id(b"k" * 32, wf.serialize_tree([]))
