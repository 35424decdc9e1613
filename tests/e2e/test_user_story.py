"""The product's user story, end to end, on PostgreSQL + SeaweedFS with the
real Claude Code CLI: a ticket system sends a prompt; sessiond hydrates a
sandbox, runs the turn, streams the answer; after the idle timeout it
snapshots the session and destroys the sandbox; the next prompt hydrates a
fresh sandbox in a different directory and the agent carries on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sessiond.api.v1 import common_pb2, sessions_pb2
from sessiond.client import AsyncClient
from tests.e2e.agent_env import ALLOWLIST, server_environ
from tests.fakeapi import FakeMessagesAPI, text, tool_use
from tests.fakeapi.recorded import RecordedRequest
from tests.fakeapi.steps import Step
from tests.fixtures.server import RunningServer, run_server
from tests.helpers import assert_eventually

pytestmark = pytest.mark.cli


async def run(client: AsyncClient, session_id: str, prompt: str) -> list[sessions_pb2.QueryEvent]:
    return [event async for event in client.query(session_id, prompt, deadline=300)]


def messages(events: list[sessions_pb2.QueryEvent]) -> list[dict[str, object]]:
    return [json.loads(e.message.json) for e in events if e.HasField("message")]


async def test_suspend_on_idle_and_resume_in_a_fresh_sandbox(
    postgres_url: str, s3_blob_url: str, fake_api: FakeMessagesAPI, tmp_path: Path
) -> None:
    async with run_server(
        tmp_path / "server",
        postgres_url,
        s3_blob_url,
        environ=server_environ(fake_api),
        env_allowlist=ALLOWLIST,
        idle_timeout=1.0,
        lease_ttl=10.0,
    ) as server:
        await user_story(server, fake_api)


async def user_story(server: RunningServer, fake_api: FakeMessagesAPI) -> None:
    client = await server.client()
    session = await client.create_session(labels={"ticket": "T-1"})
    sid = session.session_id

    # Turn 1: the agent writes notes.md with Write and data.txt with Bash.
    def turn1_write(req: RecordedRequest) -> Step:
        cwd = _cwd_of(req)
        return tool_use("Write", {"file_path": f"{cwd}/notes.md", "content": "hello from turn 1\n"})

    fake_api.add_turn(
        turn1_write,
        tool_use("Bash", {"command": "echo 42 > data.txt"}),
        text("Wrote notes.md and data.txt."),
    )
    events1 = await run(client, sid, "Please take notes.")
    msgs1 = messages(events1)
    assert msgs1[-1]["type"] == "result"
    assert any(e.status.phase == sessions_pb2.QueryStatus.PHASE_HYDRATING for e in events1)
    first = await client.get_session(sid)
    sandbox1 = Path(first.sandbox_cwd)
    assert (sandbox1 / "notes.md").read_text() == "hello from turn 1\n"
    assert (sandbox1 / "data.txt").read_text() == "42\n"
    # The allowlist kept the server's storage secret out of the sandbox.
    assert "server-only-secret" not in json.dumps(fake_api.requests[-1].body)

    # The idle timeout passes: the session is snapshotted and its sandbox goes.
    async def suspended() -> common_pb2.Session:
        s = await client.get_session(sid)
        assert s.state == common_pb2.SESSION_STATE_SUSPENDED, s.state
        return s

    after_idle = await assert_eventually(suspended, timeout=60)
    assert after_idle.latest_snapshot_id
    assert not sandbox1.exists()

    # Turn 2 hydrates a fresh sandbox in another directory and carries on.
    fake_api.add_turn(tool_use("Bash", {"command": "cat notes.md"}), text("Done reading."))
    events2 = await run(client, sid, "What did you write?")
    assert messages(events2)[-1]["type"] == "result"
    second = await client.get_session(sid)
    assert second.sandbox_cwd and Path(second.sandbox_cwd) != sandbox1
    assert (Path(second.sandbox_cwd) / "data.txt").read_text() == "42\n"

    requests = [r for r in fake_api.requests if "What did you write?" in r.all_text()]
    history = requests[0].all_text()
    assert "Please take notes." in history
    assert "Wrote notes.md and data.txt." in history
    # The agent's `cat notes.md` returned what turn 1 wrote.
    assert "hello from turn 1" in requests[-1].last_tool_result_text()
    assert second.turn_count == 2


def _cwd_of(req: RecordedRequest) -> str:
    """The agent's cwd, from the environment note the CLI sends."""
    body = json.dumps(req.body)
    marker = "Primary working directory: "
    start = body.index(marker) + len(marker)
    return body[start:].split("\\n", 1)[0]
