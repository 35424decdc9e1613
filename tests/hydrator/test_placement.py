"""placement.py: path rewriting on parsed JSON, what is (not) placed, and the
real bundled CLI resuming and rewinding a session restored into another
directory."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from claude_agent_sdk import (
    ClaudeAgentOptions,
    ClaudeSDKClient,
    ResultMessage,
    UserMessage,
    project_key_for_directory,
)

from sessiond.client.errors import InvalidArgument
from sessiond.hydrator.placement import place_config, rewrite_line, rewrite_paths
from sessiond.hydrator.restore import restore
from tests.fakeapi import FakeMessagesAPI, cli_env, text, tool_use
from tests.fakeapi.layout import file_history_dir, transcript_path
from tests.hydrator.restore_helpers import (
    FakeRemote,
    MemoryStore,
    config_tree,
    manifest_for,
    tree_from_dir,
)

OLD, NEW = "/old/work", "/new/place/ws"
SID = "0b7c6d2e-1111-4222-8333-444455556666"


# -- rewriting -----------------------------------------------------------------


def test_only_whole_path_strings_into_the_old_cwd_are_rewritten() -> None:
    entry = {
        "cwd": OLD,
        "attachment": {"snapshot": {"workingDirectory": OLD}},
        "message": {
            "content": [
                {
                    "type": "tool_use",
                    "input": {"file_path": f"{OLD}/a/b.py", "command": f"cat {OLD}/x"},
                },
                {"type": "tool_result", "content": f"File created at: {OLD}/a/b.py"},
                {"type": "thinking", "thinking": OLD, "signature": "sig"},
            ]
        },
        "toolUseResult": {"filePath": f"{OLD}/a/b.py"},
        "lookalikes": [f"{OLD}2/x", "/old/workbench", "old/work/x", OLD.upper()],
        "numbers": [1, 2.5, None, True],
    }
    out, changed = rewrite_paths(json.loads(json.dumps(entry)), OLD, NEW)
    assert changed
    assert out["cwd"] == NEW
    assert out["attachment"]["snapshot"]["workingDirectory"] == NEW
    tool_use_, tool_result, thinking = out["message"]["content"]
    assert tool_use_["input"] == {"file_path": f"{NEW}/a/b.py", "command": f"cat {OLD}/x"}
    assert tool_result["content"] == f"File created at: {OLD}/a/b.py"  # prose is history
    assert thinking["thinking"] == OLD  # signed
    assert out["toolUseResult"]["filePath"] == f"{NEW}/a/b.py"
    assert out["lookalikes"] == entry["lookalikes"]
    assert out["numbers"] == entry["numbers"]


def test_file_history_entries_are_rewritten_keys_included() -> None:
    snap = {
        "type": "file-history-snapshot",
        "snapshot": {
            "trackedFileBackups": {
                "rel.md": {"backupFileName": "abc@v2", "realParentDir": OLD},
                f"{OLD}/abs.md": {"backupFileName": None, "realParentDir": f"{OLD}/sub"},
                "/elsewhere/x": {"realParentDir": "/elsewhere"},
            }
        },
    }
    out, _ = rewrite_paths(snap, OLD, NEW)
    tracked = out["snapshot"]["trackedFileBackups"]
    assert tracked["rel.md"]["realParentDir"] == NEW
    assert tracked[f"{NEW}/abs.md"]["realParentDir"] == f"{NEW}/sub"
    assert tracked["/elsewhere/x"] == {"realParentDir": "/elsewhere"}


def test_degenerate_old_cwds_rewrite_nothing() -> None:
    for old in ("/", "", "relative/dir", NEW):
        value = {"cwd": "/x/y", "p": NEW}
        assert rewrite_paths(value, old, NEW) == (value, False)


def test_lines_keep_their_bytes_unless_they_change() -> None:
    untouched = b'{"b": 1,  "a": "\\u00e9 spaced"}\n'
    assert rewrite_line(untouched, OLD, NEW) is None
    assert rewrite_line(b'{"torn": "li', OLD, NEW) is None
    changed = rewrite_line(f'{{"cwd": "{OLD}", "t": "é"}}\n'.encode(), OLD, NEW)
    assert changed == f'{{"cwd":"{NEW}","t":"é"}}\n'.encode()


# -- placing -------------------------------------------------------------------


def _transcript(*entries: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(e).encode() + b"\n" for e in entries)


async def _restore_config(
    tmp_path: Path, files: dict[str, bytes | Path], *, sid: str = SID, key: str = "-old-work"
) -> tuple[Path, Path, Any]:
    s = MemoryStore()
    ws = tmp_path / "ws"
    cfg = tmp_path / "cfg"
    root = s.tree([s.file(b"f", b"x")])
    manifest = manifest_for(
        root,
        config_tree_id=config_tree(s, files),
        source_cwd=OLD.encode(),
        sdk_session_id=sid,
        project_key=key,
    )
    report = await restore(FakeRemote(s, manifest), ws, config_dir=cfg)  # type: ignore[arg-type]
    return ws.resolve(), cfg, report.config


async def test_transcript_subagents_and_checkpoints_are_placed_under_the_new_key(
    tmp_path: Path,
) -> None:
    entry = {"type": "user", "cwd": OLD, "message": {"content": "hi"}}
    fh = {"type": "file-history-delta", "backup": {"realParentDir": f"{OLD}/src"}}
    ws, cfg, report = await _restore_config(
        tmp_path,
        {
            f"projects/-old-work/{SID}.jsonl": _transcript(entry, fh),
            f"projects/-old-work/{SID}/subagents/agent-a1.jsonl": _transcript(entry),
            f"projects/-old-work/{SID}/subagents/agent-a1.meta.json": (
                b'{\n  "agentType": "x",\n  "worktree": "/old/work/sub"\n}\n'
            ),
            f"file-history/{SID}/0123456789abcdef@v1": b"backup bytes",
            # Not taken: other sessions, other config, links.
            "projects/-old-work/someone-else.jsonl": b"{}\n",
            "settings.json": b'{"hooks": {"SessionStart": "curl evil"}}',
            f"file-history/{SID}/link@v1": b"@link:/etc/passwd",
            "file-history/other-session/x@v1": b"nope",
        },
    )
    key = project_key_for_directory(str(ws))
    placed = cfg / "projects" / key / f"{SID}.jsonl"
    lines = [json.loads(line) for line in placed.read_text().splitlines()]
    assert lines[0]["cwd"] == str(ws)
    assert lines[1]["backup"]["realParentDir"] == f"{ws}/src"
    sub = json.loads((cfg / "projects" / key / SID / "subagents" / "agent-a1.jsonl").read_text())
    assert sub["cwd"] == str(ws)
    meta = cfg / "projects" / key / SID / "subagents" / "agent-a1.meta.json"
    assert json.loads(meta.read_text()) == {"agentType": "x", "worktree": f"{ws}/sub"}
    history = cfg / "file-history" / SID
    assert sorted(os.listdir(history)) == ["0123456789abcdef@v1"]
    assert sorted(os.listdir(cfg)) == ["file-history", "projects"]  # no settings.json
    assert sorted(os.listdir(cfg / "projects")) == [key]
    assert sorted(os.listdir(cfg / "file-history")) == [SID]
    assert report.transcript and report.subagent_files == 2 and report.file_history_files == 1
    assert report.rewritten_lines == 4 and report.dropped == 4


async def test_without_a_transcript_only_checkpoints_are_placed(tmp_path: Path) -> None:
    _ws, cfg, report = await _restore_config(tmp_path, {f"file-history/{SID}/a@v1": b"a"})
    assert not report.transcript
    assert (cfg / "file-history" / SID / "a@v1").read_bytes() == b"a"
    assert not (cfg / "projects").exists()


async def test_an_existing_session_in_the_config_dir_is_replaced(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg"
    key = project_key_for_directory(str((tmp_path / "ws").resolve()))
    (cfg / "file-history" / SID).mkdir(parents=True)
    (cfg / "file-history" / SID / "stale@v9").write_text("stale")
    (cfg / "projects" / key).mkdir(parents=True)
    (cfg / "projects" / key / f"{SID}.jsonl").write_text("stale\n")
    (cfg / "projects" / key / "other.jsonl").write_text("kept\n")
    await _restore_config(
        tmp_path,
        {f"projects/k/{SID}.jsonl": b"{}\n", f"file-history/{SID}/fresh@v1": b"f"},
    )
    assert os.listdir(cfg / "file-history" / SID) == ["fresh@v1"]
    assert (cfg / "projects" / key / f"{SID}.jsonl").read_text() == "{}\n"
    assert (cfg / "projects" / key / "other.jsonl").read_text() == "kept\n"


async def test_a_symlinked_transcript_is_never_placed(tmp_path: Path) -> None:
    _ws, cfg, report = await _restore_config(
        tmp_path, {f"projects/-old-work/{SID}.jsonl": b"@link:/etc/passwd"}
    )
    assert not report.transcript
    assert not (cfg / "projects").exists() or not any((cfg / "projects").rglob("*.jsonl"))


@pytest.mark.parametrize("sid", ["../escape", "a/b", "", ".hidden", "x" * 200])
def test_a_hostile_session_id_is_refused(tmp_path: Path, sid: str) -> None:
    (tmp_path / "staging").mkdir()
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(InvalidArgument):
            place_config(fd, "staging", session_id=sid, project_key="", old_cwd=OLD, new_cwd=NEW)
    finally:
        os.close(fd)


# -- the real CLI --------------------------------------------------------------


def _options(cwd: Path, env: dict[str, str], **kw: Any) -> ClaudeAgentOptions:
    return ClaudeAgentOptions(
        cwd=str(cwd),
        env=env,
        permission_mode="bypassPermissions",
        enable_file_checkpointing=True,
        extra_args={"replay-user-messages": None},
        **kw,
    )


async def _turns(client: ClaudeSDKClient, prompts: list[str], ids: list[str]) -> str:
    sid = ""
    for prompt in prompts:
        await client.query(prompt)
        async for m in client.receive_response():
            if isinstance(m, UserMessage) and isinstance(m.content, str) and m.uuid:
                ids.append(m.uuid)
            if isinstance(m, ResultMessage):
                sid = m.session_id
    return sid


@pytest.mark.cli
async def test_cli_resumes_and_rewinds_after_restore_into_another_directory(
    fake_api: FakeMessagesAPI, tmp_path: Path
) -> None:
    old = tmp_path / "first-sandbox" / "work"
    (old / "sub").mkdir(parents=True)
    old = old.resolve()
    (old / "sub" / "old.txt").write_text("original\n")
    notes = old / "notes.md"
    env1 = cli_env(fake_api.base_url, tmp_path / "cli1")
    fake_api.add_turn(
        tool_use("Write", {"file_path": str(notes), "content": "hello\n"}),
        tool_use("Write", {"file_path": str(old / "sub" / "old.txt"), "content": "edited\n"}),
        text("turn one"),
    )
    fake_api.add_turn(
        tool_use("Edit", {"file_path": str(notes), "old_string": "hello", "new_string": "bye"}),
        text("turn two"),
    )
    ids: list[str] = []
    async with ClaudeSDKClient(_options(old, env1)) as client:
        sid = await _turns(client, ["one", "two"], ids)

    # The snapshot, by hand: the workspace and the config state.
    s = MemoryStore()
    history = file_history_dir(env1, sid)
    files: dict[str, bytes | Path] = {
        f"projects/{project_key_for_directory(str(old))}/{sid}.jsonl": transcript_path(
            env1, old, sid
        )
    }
    files.update({f"file-history/{sid}/{p.name}": p for p in history.iterdir()})
    manifest = manifest_for(
        tree_from_dir(s, old),
        config_tree_id=config_tree(s, files),
        source_cwd=os.fsencode(old),
        sdk_session_id=sid,
        project_key=project_key_for_directory(str(old)),
    )

    # A fresh sandbox elsewhere: new cwd, new config dir.
    new = tmp_path / "second-sandbox" / "elsewhere" / "ws"
    env2 = cli_env(fake_api.base_url, tmp_path / "cli2")
    cfg2 = Path(env2["CLAUDE_CONFIG_DIR"])
    report = await restore(FakeRemote(s, manifest), new, config_dir=cfg2)  # type: ignore[arg-type]
    assert report.config is not None and report.config.transcript
    new = new.resolve()
    assert (new / "notes.md").read_text() == "bye\n"

    fake_api.add_turn(
        tool_use(
            "Edit", {"file_path": str(new / "notes.md"), "old_string": "bye", "new_string": "ciao"}
        ),
        text("turn three"),
    )
    before = len(fake_api.requests)
    async with ClaudeSDKClient(_options(new, env2, resume=sid)) as client:
        assert await _turns(client, ["three"], ids) == sid
        # (a) the resumed request carries the earlier turns.
        resumed = fake_api.requests[before]
        assert resumed.user_texts() == ["one", "two", "three"]
        assert resumed.assistant_texts()[:2] == ["turn one", "turn two"]
        assert (new / "notes.md").read_text() == "ciao\n"
        # (b) checkpoints taken in the old directory rewind the new one.
        await client.rewind_files(ids[1])
        assert (new / "notes.md").read_text() == "hello\n"
        assert (new / "sub" / "old.txt").read_text() == "edited\n"
        await client.rewind_files(ids[0])
        assert not (new / "notes.md").exists()
        assert (new / "sub" / "old.txt").read_text() == "original\n"
    assert not (old / "notes.md").exists() or (old / "notes.md").read_text() == "bye\n"
    assert (old / "sub" / "old.txt").read_text() == "edited\n"  # the old place untouched


async def test_a_config_dir_inside_the_workspace_survives_the_swap(tmp_path: Path) -> None:
    s = MemoryStore()
    ws = tmp_path / "ws"
    (ws / ".claude").mkdir(parents=True)
    (ws / "stale").write_text("replaced")
    manifest = manifest_for(
        s.tree([s.file(b"f", b"x")]),
        config_tree_id=config_tree(s, {f"projects/k/{SID}.jsonl": b'{"cwd": "/old/work"}\n'}),
        source_cwd=OLD.encode(),
        sdk_session_id=SID,
    )
    report = await restore(FakeRemote(s, manifest), ws, config_dir=ws / ".claude")  # type: ignore[arg-type]
    key = project_key_for_directory(str(ws.resolve()))
    placed = ws / ".claude" / "projects" / key / f"{SID}.jsonl"
    assert json.loads(placed.read_text()) == {"cwd": str(ws.resolve())}
    assert report.config is not None and report.config.transcript
    assert not (ws / "stale").exists()
