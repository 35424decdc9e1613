"""User story (issue: transcripts): an agent mirrors its transcript to
sessiond; its container and local config vanish; a new process in a new
container resumes the conversation from sessiond alone."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import pytest
from claude_agent_sdk import ClaudeAgentOptions, project_key_for_directory

from sessiond.api.v1 import transcripts_pb2
from sessiond.client import AsyncClient, SessiondSessionStore
from sessiond.client.transcript_files import export_session, import_local_session
from tests.fakeapi import FakeMessagesAPI, cli_env, text, tool_use
from tests.fakeapi.turns import run_turn
from tests.fixtures.server import RunningServer

pytestmark = pytest.mark.cli

ROOT = Path(__file__).resolve().parents[2]


async def _all_entries(
    server: RunningServer, token: str, project_key: str, sid: str
) -> list[dict[str, object]]:
    async with AsyncClient(server.target, token=token) as client:
        key = transcripts_pb2.SessionKey(project_key=project_key, session_id=sid)
        return [json.loads(e) async for page in client.load_entries(key) for e in page]


async def test_resume_from_sessiond_after_config_dir_is_gone(
    sessiond_server: RunningServer, fake_api: FakeMessagesAPI, tmp_path: Path
) -> None:
    _, token = await sessiond_server.new_tenant()
    cwd = tmp_path / "work"
    cwd.mkdir()
    first_config = tmp_path / "container1"
    env1 = cli_env(fake_api.base_url, first_config)

    fake_api.add_turn(
        tool_use("Write", {"file_path": str(cwd / "notes.md"), "content": "pelican\n"}),
        text("Noted: the secret word is PELICAN."),
    )
    store = SessiondSessionStore(sessiond_server.target, token=token)
    turn1 = await run_turn(
        "Remember the secret word pelican.",
        ClaudeAgentOptions(
            cwd=str(cwd),
            env=env1,
            permission_mode="bypassPermissions",
            session_store=store,
            session_store_flush="eager",
        ),
    )
    await store.close()
    sid = turn1.session_id
    assert "Noted: the secret word is PELICAN." in turn1.assistant_texts()

    # The container is gone: its whole config dir (transcripts included).
    shutil.rmtree(first_config)

    # Turn 2: a new Python process, a new config dir, resume=<sid>, store only.
    fake_api.add_turn(text("The word was PELICAN."))
    env2 = cli_env(fake_api.base_url, tmp_path / "container2")
    spec = {
        "target": sessiond_server.target,
        "token": token,
        "cwd": str(cwd),
        "env": env2,
        "session_id": sid,
        "prompt": "What was the secret word?",
    }
    # The server runs in this event loop: the child must not block it.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.e2e.resume_turn",
        json.dumps(spec),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    assert proc.returncode == 0, err.decode()[-3000:]
    assert out.decode().strip().splitlines()[-1] == sid

    turn2_request = fake_api.requests[-1]
    sent = turn2_request.all_text()
    assert "Remember the secret word pelican." in sent
    assert "Noted: the secret word is PELICAN." in sent
    assert "What was the secret word?" in sent

    entries = await _all_entries(sessiond_server, token, project_key_for_directory(str(cwd)), sid)
    uuids = [e["uuid"] for e in entries if "uuid" in e]
    assert len(uuids) == len(set(uuids)), "duplicate uuids in the store"
    texts = json.dumps(entries)
    assert "What was the secret word?" in texts and "The word was PELICAN." in texts


async def test_import_local_session_then_export_into_another_cwd(
    sessiond_server: RunningServer, fake_api: FakeMessagesAPI, tmp_path: Path
) -> None:
    _, token = await sessiond_server.new_tenant()
    old_cwd, new_cwd = tmp_path / "old", tmp_path / "elsewhere" / "new"
    old_cwd.mkdir()
    new_cwd.mkdir(parents=True)
    config = tmp_path / "c1" / "config"
    fake_api.add_turn(text("First answer: 42."))
    turn1 = await run_turn(
        "Question one.",
        ClaudeAgentOptions(
            cwd=str(old_cwd),
            env=cli_env(fake_api.base_url, tmp_path / "c1", config_dir=config),
            permission_mode="bypassPermissions",
        ),
    )
    sid = turn1.session_id
    store = SessiondSessionStore(sessiond_server.target, token=token)
    await import_local_session(store, sid, config_dir=config)
    await import_local_session(store, sid, config_dir=config)  # idempotent
    shutil.rmtree(tmp_path / "c1")

    new_config = tmp_path / "c2" / "config"
    main = await export_session(
        store,
        project_key=project_key_for_directory(str(old_cwd)),
        session_id=sid,
        config_dir=new_config,
        cwd=str(new_cwd),
    )
    await store.close()
    assert main.parent.name == project_key_for_directory(str(new_cwd))

    fake_api.add_turn(text("Second answer."))
    await run_turn(
        "Question two.",
        ClaudeAgentOptions(
            cwd=str(new_cwd),
            env=cli_env(fake_api.base_url, tmp_path / "c2", config_dir=new_config),
            permission_mode="bypassPermissions",
            resume=sid,
        ),
    )
    sent = fake_api.requests[-1].all_text()
    assert "Question one." in sent and "First answer: 42." in sent
    entries = [json.loads(line) for line in main.read_text().splitlines()]
    uuids = [e["uuid"] for e in entries if "uuid" in e]
    assert len(uuids) == len(set(uuids))
