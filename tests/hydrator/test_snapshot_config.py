"""The Claude config state that rides along, and limits enforced while walking."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from sessiond.client.errors import InvalidArgument, ResourceExhausted
from sessiond.hydrator import snapshot as snapshot_module
from sessiond.hydrator.configstate import project_key, transcript_position
from sessiond.hydrator.snapshot import snapshot
from sessiond.hydrator.walk import Limits

from .snapshot_helpers import read_snapshot, workspace_env

SID = "3f2b9a8e-0000-4000-8000-000000000001"


def make_config(config: Path, cwd: Path) -> Path:
    key = project_key(cwd)
    project = config / "projects" / key
    (project / SID / "subagents").mkdir(parents=True)
    lines = [
        {"type": "queue-operation"},
        {"type": "user", "uuid": "u1", "cwd": str(cwd)},
        {"type": "assistant", "uuid": "a1"},
        {"type": "last-prompt"},
    ]
    body = "".join(json.dumps(x) + "\n" for x in lines)
    (project / f"{SID}.jsonl").write_text(body + '{"type": "user", "uuid": "partial"')
    (project / SID / "subagents" / "agent-1.jsonl").write_text('{"uuid": "s1"}\n')
    (project / SID / "subagents" / "agent-1.meta.json").write_text("{}")
    (project / "other-session.jsonl").write_text("{}\n")  # not ours: never taken
    hist = config / "file-history" / SID
    hist.mkdir(parents=True)
    (hist / "0123456789abcdef@v1").write_text("old contents\n")
    (config / "file-history" / "other").mkdir()
    (config / ".claude.json").write_text("{}")
    return project


def test_transcript_position() -> None:
    data = b'{"uuid": "a"}\n{"type": "x"}\n\n{"uuid": "b"}\n{"type": "cost"}\n'
    pos = transcript_position(data)
    assert (pos.uuid, pos.seq) == ("b", 4)
    assert transcript_position(b"").seq == 0


@pytest.mark.parametrize("include_transcript", [False, True])
async def test_config_state_rides_along(tmp_path: Path, include_transcript: bool) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "f").write_text("x")
    config = tmp_path / "config"
    make_config(config, ws)
    key = project_key(ws).encode()
    sid = SID.encode()
    async with workspace_env(tmp_path) as env:
        snap = await snapshot(
            env.remote, ws, config_dir=config, sdk_session_id=SID,
            include_transcript=include_transcript,
        )  # fmt: skip
        manifest, _, tree = await read_snapshot(env.remote, snap)
    assert (manifest.transcript_uuid, manifest.transcript_seq) == ("a1", 4)
    assert (snap.transcript_uuid, snap.transcript_seq) == ("a1", 4)
    assert snap.file_history_included
    assert manifest.sdk_session_id == SID and manifest.project_key == project_key(ws)
    history = {
        b"file-history": tree[b"file-history"],
        b"file-history/" + sid: tree[b"file-history/" + sid],
        b"file-history/" + sid + b"/0123456789abcdef@v1": (
            "file", 0o644, b"old contents\n",
        ),
    }  # fmt: skip
    if not include_transcript:
        assert tree == history
        return
    p = b"projects/" + key + b"/"
    main = tree.pop(p + sid + b".jsonl")
    assert main[0] == "file" and main[2].endswith(b'"last-prompt"}\n')  # partial line left out
    assert tree.pop(p + sid + b"/subagents/agent-1.jsonl")[2] == b'{"uuid": "s1"}\n'
    assert tree.pop(p + sid + b"/subagents/agent-1.meta.json")[2] == b"{}"
    assert {k for k in tree if k.startswith(b"projects")} == {
        b"projects", p[:-1], p + sid, p + sid + b"/subagents",
    }  # fmt: skip
    assert {k: v for k, v in tree.items() if not k.startswith(b"projects")} == history


async def test_no_config_state_without_session(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    async with workspace_env(tmp_path) as env:
        snap = await snapshot(env.remote, ws, config_dir=tmp_path / "config")
        manifest, root, _ = await read_snapshot(env.remote, snap)
    assert manifest.config_tree_id == b"" and root == {}
    assert not snap.file_history_included


async def test_file_limit_names_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = tmp_path / "ws"
    (ws / "many").mkdir(parents=True)
    for i in range(20):
        (ws / "many" / f"f{i}").write_text("")
    real = Limits.from_proto

    def small(limits: Any) -> Limits:
        return dataclasses.replace(real(limits), max_files=10)

    monkeypatch.setattr(snapshot_module.Limits, "from_proto", staticmethod(small))
    async with workspace_env(tmp_path) as env:
        with pytest.raises(ResourceExhausted, match="max_files") as info:
            await snapshot(env.remote, ws)
    assert "many" in str(info.value)
    assert "commit" not in env.remote.names() and "put_manifest" not in env.remote.names()


async def test_missing_working_directory_is_invalid(tmp_path: Path) -> None:
    async with workspace_env(tmp_path) as env:
        with pytest.raises(InvalidArgument):
            await snapshot(env.remote, tmp_path / "nope")
