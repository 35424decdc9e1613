"""Fork and time travel with the real CLI, and the errors a caller gets when
the session, the sandbox or the runner is in the wrong state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sessiond.api.v1 import common_pb2, sessions_pb2
from sessiond.client import AsyncClient, FailedPrecondition, NotFound, Unavailable
from tests.e2e.agent_env import ALLOWLIST, server_environ
from tests.fakeapi import FakeMessagesAPI, api_error, text, tool_use
from tests.fixtures.server import RunningServer, run_server

pytestmark = pytest.mark.cli


async def run(client: AsyncClient, session_id: str, prompt: str) -> list[sessions_pb2.QueryEvent]:
    return [e async for e in client.query(session_id, prompt, deadline=300)]


def assistant_uuid(events: list[sessions_pb2.QueryEvent]) -> str:
    uuids = [
        e.message.uuid for e in events if e.HasField("message") and e.message.type == "assistant"
    ]
    assert uuids and uuids[-1]
    return uuids[-1]


@pytest.fixture
async def server(metadata_url: str, fake_api: FakeMessagesAPI, tmp_path: Path) -> RunningServer:
    async with run_server(
        tmp_path / "server",
        metadata_url,
        environ=server_environ(fake_api),
        env_allowlist=ALLOWLIST,
        idle_timeout=3600,
    ) as running:
        yield running  # type: ignore[misc]


async def test_fork_at_turn_one_keeps_turn_one_workspace(
    server: RunningServer, fake_api: FakeMessagesAPI
) -> None:
    client = await server.client()
    sid = (
        await client.create_session(snapshot_policy=common_pb2.SnapshotPolicy(after_each_turn=True))
    ).session_id
    fake_api.add_turn(tool_use("Bash", {"command": "echo one > state.txt"}), text("Turn one done."))
    events1 = await run(client, sid, "first")
    turn1_msg = assistant_uuid(events1)
    fake_api.add_turn(tool_use("Bash", {"command": "echo two > state.txt"}), text("Turn two done."))
    await run(client, sid, "second")
    snaps = (await client.list_snapshots(sid)).snapshots
    assert len(snaps) == 2

    fork = await client.fork(sid, at_message_uuid=turn1_msg)
    assert fork.forked_from_session_id == sid
    assert fork.state == common_pb2.SESSION_STATE_SUSPENDED
    assert (
        fork.sdk_session_id
        and fork.sdk_session_id != (await client.get_session(sid)).sdk_session_id
    )

    # The fork hydrates turn 1's workspace and turn 1's conversation only.
    fake_api.add_turn(tool_use("Bash", {"command": "cat state.txt"}), text("Fork read it."))
    await run(client, fork.session_id, "what is in state.txt?")
    req = [r for r in fake_api.requests if "what is in state.txt?" in r.all_text()][-1]
    assert "one" in (req.last_tool_result_text() or "")
    first_request = next(r for r in fake_api.requests if "what is in state.txt?" in r.all_text())
    history_text = first_request.all_text()
    assert "first" in history_text and "Turn one done." in history_text
    assert "Turn two done." not in history_text

    # The original keeps turn 2's workspace.
    original = await client.get_session(sid)
    assert (Path(original.sandbox_cwd) / "state.txt").read_text() == "two\n"


async def test_query_errors(server: RunningServer, fake_api: FakeMessagesAPI) -> None:
    client = await server.client()
    with pytest.raises(NotFound):
        await run(client, "no-such-session", "hi")
    sid = (await client.create_session()).session_id
    await client.delete_session(sid)
    with pytest.raises(FailedPrecondition):
        await run(client, sid, "hi")


async def test_runner_crash_is_a_clean_error_and_the_session_resumes(
    server: RunningServer, fake_api: FakeMessagesAPI
) -> None:
    client = await server.client()
    sid = (await client.create_session()).session_id
    fake_api.add_turn(tool_use("Bash", {"command": "echo kept > kept.txt"}), text("ok"))
    await run(client, sid, "first")
    await client.suspend(sid)
    # The model API fails persistently: the CLI gives up, the runner exits 1.
    failing = True
    fake_api.respond_with(
        lambda req: api_error(400, "invalid_request_error", "broken") if failing else None
    )
    with pytest.raises(Unavailable) as err:
        await run(client, sid, "this turn fails")
    assert "runner exited" in str(err.value)
    failing = False
    # The session is still usable, with its last snapshot's files.
    fake_api.add_turn(tool_use("Bash", {"command": "cat kept.txt"}), text("still here"))
    events = await run(client, sid, "are you there?")
    assert (
        json.loads([e for e in events if e.HasField("message")][-1].message.json)["type"]
        == "result"
    )
    assert "kept" in (fake_api.requests[-1].last_tool_result_text() or "")


async def test_sandbox_that_fails_to_start(
    metadata_url: str, fake_api: FakeMessagesAPI, tmp_path: Path
) -> None:
    from sessiond.server.sandboxes.e2b import E2BSandboxProvider

    # An E2B endpoint that refuses connections: creation fails.
    dead = E2BSandboxProvider(
        api_key="k",
        api_url="http://127.0.0.1:9",
        sandbox_url="http://127.0.0.1:9",
        request_timeout_seconds=2,
    )
    async with run_server(
        tmp_path / "s", metadata_url, environ=server_environ(fake_api), provider=dead
    ) as running:
        client = await running.client()
        sid = (await client.create_session()).session_id
        with pytest.raises(Unavailable) as err:
            await run(client, sid, "hi")
        assert "sandbox failed to start" in str(err.value)
        session = await client.get_session(sid)
        assert session.state == common_pb2.SESSION_STATE_NEW
        assert not session.sandbox_id
