"""restore() end to end: snapshot (the real snapshot side) → restore into
another directory through a real in-process server, and the local contract
(state, stat cache, leftovers, no snapshot yet) against a fake remote."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from claude_agent_sdk import ClaudeAgentOptions, ClaudeSDKClient

from sessiond.client.errors import Aborted
from sessiond.hydrator import trees
from sessiond.hydrator.materialize import BATCH_BYTES
from sessiond.hydrator.restore import restore
from sessiond.hydrator.snapshot import SnapshotState, snapshot
from sessiond.hydrator.statcache import StatCache
from sessiond.hydrator.statefile import STATE_FILE, load_state
from tests.fakeapi import FakeMessagesAPI, cli_env, text, tool_use
from tests.fakeapi.turns import run_turn
from tests.hydrator.restore_helpers import FakeRemote, MemoryStore, manifest_for
from tests.hydrator.snapshot_helpers import (
    RecordingProgress,
    describe,
    make_workspace,
    workspace_env,
)


@pytest.fixture
def no_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trees, "RACY_WINDOW_NS", 0)


def mtimes(root: Path) -> dict[bytes, int]:
    base = os.fsencode(root)
    out = {}
    for dirpath, dirnames, filenames in os.walk(base):
        if dirpath == base and b".sessiond" in dirnames:
            dirnames.remove(b".sessiond")
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, base)] = os.lstat(path).st_mtime_ns
    return out


@pytest.mark.usefixtures("no_racy_window")
async def test_snapshot_then_restore_elsewhere_is_exact_and_the_next_snapshot_reads_nothing(
    tmp_path: Path,
) -> None:
    first = tmp_path / "sandbox-a" / "ws"
    make_workspace(first)
    (first / "many").mkdir()
    for i in range(700):  # more distinct chunks than one GetChunks batch
        (first / "many" / f"{i:04}.txt").write_text(f"file {i}\n" * (i % 7))
    (first / "large.bin").write_bytes(os.urandom(BATCH_BYTES + (5 << 20)))
    (first / "ro").mkdir()
    (first / "ro" / "f").write_text("read only")
    os.chmod(first / "ro", 0o555)
    second = tmp_path / "sandbox-b" / "restored"
    async with workspace_env(tmp_path) as env:
        snap = await snapshot(env.remote, first)
        seen: list[tuple[int, int]] = []
        report = await restore(env.remote, second, progress=lambda d, t: seen.append((d, t)))
        assert describe(second) == describe(first)
        assert mtimes(second) == mtimes(first)
        assert report.snapshot_id == snap.snapshot_id
        assert report.files == snap.stats.files and report.bytes == snap.stats.bytes
        assert seen and seen[-1][1] == report.bytes
        # The stat cache written by restore makes the next snapshot incremental.
        progress = RecordingProgress()
        again = await snapshot(env.remote, second, progress=progress, state=SnapshotState())
        assert progress.read == []
        assert again.stats.new_bytes == 0 and again.parent_snapshot_id == snap.snapshot_id


async def test_the_lease_moves_to_the_restored_sandbox(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    make_workspace(a)
    async with workspace_env(tmp_path) as env:
        await snapshot(env.remote, a)
        epoch_a = load_state(a / ".sessiond")
        report = await restore(env.remote, b)
        state = json.loads((b / ".sessiond" / STATE_FILE).read_text())
        assert state["lease_epoch"] == report.lease_epoch > epoch_a["lease_epoch"]  # type: ignore[index]
        assert state["session_id"] == env.session_id
        assert state["snapshot_id"] == report.snapshot_id
        # The old sandbox is fenced off; the new one snapshots fine.
        (a / "late.txt").write_text("too late")
        with pytest.raises(Aborted):
            await snapshot(env.remote, a)
        await snapshot(env.remote, b)


async def test_restore_replaces_an_existing_workspace_and_an_older_snapshot_can_be_chosen(
    tmp_path: Path,
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "v").write_text("one")
    target = tmp_path / "target"
    async with workspace_env(tmp_path) as env:
        one = await snapshot(env.remote, ws)
        (ws / "v").write_text("two")
        (ws / "added").write_text("new")
        await snapshot(env.remote, ws)
        target.mkdir()
        (target / "stray").write_text("removed by the restore")
        await restore(env.remote, target)
        assert sorted(os.listdir(target)) == [".sessiond", "added", "v"]
        await restore(env.remote, target, snapshot_id=one.snapshot_id)
        assert (target / "v").read_text() == "one" and not (target / "added").exists()
    assert [n for n in os.listdir(tmp_path) if "sessiond-" in n] == []  # no staging, no old


async def test_a_session_without_a_snapshot_gets_an_empty_cwd_and_the_lease(
    tmp_path: Path,
) -> None:
    remote = FakeRemote(MemoryStore(), None)
    report = await restore(remote, tmp_path / "new")  # type: ignore[arg-type]
    assert report.snapshot_id == "" and report.lease_epoch == 1
    assert os.listdir(tmp_path / "new") == [".sessiond"]
    assert load_state(tmp_path / "new" / ".sessiond") == {
        "version": 1,
        "session_id": "sess-1",
        "snapshot_id": "",
        "manifest_id": "",
        "lease_epoch": 1,
        "sdk_session_id": "sdk-1",
        "cwd": str((tmp_path / "new").resolve()),
    }


async def test_restore_writes_the_stat_cache_and_keeps_the_target_mode(tmp_path: Path) -> None:
    s = MemoryStore()
    sub = s.dir(b"d", [s.file(b"g", b"gg")])
    root = s.tree([s.file(b"f", b"ff"), sub])
    ws = tmp_path / "ws"
    ws.mkdir(mode=0o750)
    os.chmod(ws, 0o750)
    await restore(FakeRemote(s, manifest_for(root)), ws)  # type: ignore[arg-type]
    assert (ws.stat().st_mode & 0o777) == 0o750
    cache = StatCache.load(ws / ".sessiond", root=str(ws.resolve()), chunk_key=s.key)
    assert cache.lookup(b"d/g", os.lstat(ws / "d" / "g")) == tuple(s.file(b"g", b"gg").chunk_ids)
    assert cache.lookup(b"f", os.lstat(ws / "f")) is not None
    assert cache.has_tree(root) and cache.has_tree(sub.subtree_id)


async def test_leftovers_of_an_interrupted_restore_are_removed(tmp_path: Path) -> None:
    for leftover in (".ws.sessiond-staging-abc", ".ws.sessiond-old-def"):
        (tmp_path / leftover / "x").mkdir(parents=True)
    (tmp_path / ".other.sessiond-old-1").mkdir()  # not ours to remove
    s = MemoryStore()
    await restore(FakeRemote(s, manifest_for(s.tree([]))), tmp_path / "ws")  # type: ignore[arg-type]
    assert sorted(os.listdir(tmp_path)) == [".other.sessiond-old-1", "ws"]


@pytest.fixture
def mount_point(tmp_path: Path) -> Iterator[Path]:
    vol = tmp_path / "vol"
    vol.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(vol)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield vol
    finally:
        subprocess.run(["umount", "-l", str(vol)], check=False)


async def test_a_mount_point_is_restored_in_place(tmp_path: Path, mount_point: Path) -> None:
    (mount_point / "stray").write_text("old content")
    os.symlink(tmp_path, mount_point / ".sessiond")  # a hostile state dir is not kept
    s = MemoryStore()
    root = s.tree([s.file(b"top", b"top"), s.dir(b"d", [s.file(b"f", b"ff")])])
    await restore(FakeRemote(s, manifest_for(root)), mount_point)  # type: ignore[arg-type]
    assert os.stat(mount_point).st_dev != os.stat(tmp_path).st_dev  # still the mount
    assert sorted(os.listdir(mount_point)) == [".sessiond", "d", "top"]
    assert not (mount_point / ".sessiond").is_symlink()
    assert (mount_point / "d" / "f").read_text() == "ff"
    cache = StatCache.load(mount_point / ".sessiond", root=str(mount_point), chunk_key=s.key)
    assert cache.lookup(b"top", os.lstat(mount_point / "top")) is not None


@pytest.mark.cli
async def test_cli_session_snapshotted_and_restored_elsewhere_resumes_and_rewinds(
    fake_api: FakeMessagesAPI, tmp_path: Path
) -> None:
    """The user story: a turn in sandbox A writes files with checkpoints,
    A is snapshotted (workspace + transcript + file history) and destroyed,
    sandbox B restores into another directory and config dir, and the CLI
    there sees the history and can rewind to A's checkpoints."""
    a = (tmp_path / "sandbox-a" / "work").resolve()
    a.mkdir(parents=True)
    (a / "kept.txt").write_text("original\n")
    env_a = cli_env(fake_api.base_url, tmp_path / "cli-a")
    fake_api.add_turn(
        tool_use("Write", {"file_path": str(a / "notes.md"), "content": "hello\n"}),
        tool_use("Write", {"file_path": str(a / "kept.txt"), "content": "edited\n"}),
        text("turn one"),
    )
    options: dict[str, Any] = {
        "permission_mode": "bypassPermissions",
        "enable_file_checkpointing": True,
        "extra_args": {"replay-user-messages": None},
    }
    turn = await run_turn("one", ClaudeAgentOptions(cwd=str(a), env=env_a, **options))
    [prompt] = turn.prompt_uuids()
    b = tmp_path / "sandbox-b" / "somewhere" / "else"
    env_b = cli_env(fake_api.base_url, tmp_path / "cli-b")
    async with workspace_env(tmp_path) as env:
        await snapshot(
            env.remote,
            a,
            config_dir=Path(env_a["CLAUDE_CONFIG_DIR"]),
            include_transcript=True,
            sdk_session_id=turn.session_id,
        )
        report = await restore(env.remote, b, config_dir=Path(env_b["CLAUDE_CONFIG_DIR"]))
    assert report.config is not None and report.config.transcript
    assert report.config.file_history_files >= 1
    b = b.resolve()

    fake_api.add_turn(text("turn two"))
    before = len(fake_api.requests)
    opts_b = ClaudeAgentOptions(cwd=str(b), env=env_b, resume=turn.session_id, **options)
    async with ClaudeSDKClient(opts_b) as client:
        await client.query("two")
        async for _ in client.receive_response():
            pass
        assert fake_api.requests[before].user_texts() == ["one", "two"]
        assert fake_api.requests[before].assistant_texts() == ["turn one"]
        await client.rewind_files(prompt)
    assert not (b / "notes.md").exists()
    assert (b / "kept.txt").read_text() == "original\n"
    assert (a / "kept.txt").read_text() == "edited\n"  # A's copy is not B's business
