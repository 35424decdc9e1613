"""inotify change tracking and the watch loop: only dirty directories are
rescanned; a final snapshot on stop/SIGTERM."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from sessiond.api.v1 import common_pb2
from sessiond.hydrator import trees
from sessiond.hydrator.snapshot import SnapshotState, snapshot
from sessiond.hydrator.watch import Inotify, watch

from .snapshot_helpers import RecordingProgress, describe, read_snapshot, workspace_env


@pytest.fixture
def no_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trees, "RACY_WINDOW_NS", 0)


def tree(root: Path) -> None:
    for d in ("a/x", "a/y", "b"):
        (root / d).mkdir(parents=True)
        for i in range(5):
            (root / d / f"f{i}.txt").write_text(f"{d} {i}\n")


def watched(root: Path) -> Inotify:
    tracker = Inotify()
    assert tracker.take() is None  # nothing watched yet: a full walk first
    for dirpath, _, _ in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        tracker.add(b"" if rel == "." else os.fsencode(rel), os.fsencode(dirpath))
    return tracker


def test_inotify_marks_the_directory_of_a_change(tmp_path: Path) -> None:
    tree(tmp_path)
    tracker = watched(tmp_path)
    try:
        assert tracker.take() == set()
        (tmp_path / "a" / "x" / "f0.txt").write_text("changed")
        assert tracker.take() == {b"a/x"}
        (tmp_path / "b" / "new").mkdir()
        os.chmod(tmp_path / "a" / "y" / "f1.txt", 0o600)
        assert tracker.take() == {b"b", b"a/y"}
        (tmp_path / "a" / "y" / "f1.txt").unlink()
        assert tracker.take() == {b"a/y"}
        tracker.give_back({b"a"})
        assert tracker.take() == {b"a"}
    finally:
        tracker.close()


def test_inotify_directory_move_forces_a_full_walk(tmp_path: Path) -> None:
    tree(tmp_path)
    tracker = watched(tmp_path)
    try:
        tracker.take()
        os.rename(tmp_path / "a" / "x", tmp_path / "b" / "x")
        assert tracker.take() is None
        assert tracker.take() == set()
    finally:
        tracker.close()


@pytest.mark.usefixtures("no_racy_window")
async def test_inotify_snapshot_rescans_only_dirty_directories(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    tree(ws)
    tracker = Inotify()
    state = SnapshotState(take_dirty=tracker.take, return_dirty=tracker.give_back,
                          on_scan=tracker.add)  # fmt: skip
    try:
        async with workspace_env(tmp_path) as env:
            await snapshot(env.remote, ws, state=state)
            (ws / "a" / "x" / "f3.txt").write_text("edited\n")
            (ws / "b" / "g.txt").write_text("new\n")
            shutil.rmtree(ws / "a" / "y")
            progress = RecordingProgress()
            snap = await snapshot(env.remote, ws, state=state, progress=progress)
            _, root, _ = await read_snapshot(env.remote, snap)
            assert root == describe(ws)
            assert sorted(progress.read) == [b"a/x/f3.txt", b"b/g.txt"]
            # Scanned: a (lost y), a/x (5 files), b (6 entries); not the root, not a/y.
            assert progress.files_seen == 1 + 5 + 6
            progress = RecordingProgress()
            again = await snapshot(env.remote, ws, state=state, progress=progress)
            assert progress.files_seen == 0 and progress.read == []
            assert again.stats.files == snap.stats.files == 11
    finally:
        tracker.close()


@pytest.mark.parametrize("use_inotify", [True, False])
async def test_watch_snapshots_periodically_and_once_more_on_stop(
    tmp_path: Path, use_inotify: bool
) -> None:
    ws = tmp_path / "ws"
    tree(ws)
    stop = asyncio.Event()
    async with workspace_env(tmp_path) as env:
        task = asyncio.create_task(
            watch(env.remote, ws, interval=0.05, stop=stop, use_inotify=use_inotify)
        )
        await _until(lambda: env.remote.names().count("commit") >= 1)
        (ws / "b" / "late.txt").write_text("late\n")
        await _until(lambda: env.remote.names().count("commit") >= 2)
        commits_before_stop = env.remote.names().count("commit")
        stop.set()
        assert await asyncio.wait_for(task, 30) == 0
        latest = (await env.remote.workspace()).latest_snapshot
        _, root, _ = await read_snapshot(env.remote, latest)
    assert latest.trigger == common_pb2.SNAPSHOT_TRIGGER_SHUTDOWN
    assert root == describe(ws)
    # Idle periods commit nothing: only the change and the final one did.
    assert env.remote.names().count("commit") == commits_before_stop + 1


async def _until(predicate: object, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)
