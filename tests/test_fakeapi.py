"""The fake Messages API, first on its own, then driving the real bundled CLI.

CLI tests (marked ``cli``) spawn ``claude_agent_sdk``'s bundled Claude Code
binary; nothing about the CLI is mocked.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from claude_agent_sdk import (
    AssistantMessage,
    ClaudeAgentOptions,
    ClaudeSDKClient,
    InMemorySessionStore,
    ResultMessage,
    UserMessage,
    project_key_for_directory,
)
from claude_agent_sdk.types import SessionKey, SessionStoreEntry

from tests.fakeapi import (
    FakeMessagesAPI,
    RecordedRequest,
    api_error,
    bundled_cli,
    cli_env,
    text,
    tool_use,
)
from tests.fakeapi.layout import file_history_dir, transcript_path
from tests.fakeapi.turns import run_turn

JSON = dict[str, Any]
TOOLS = [{"name": "Write", "input_schema": {"type": "object"}}]


# -- the fake on its own (no CLI) ------------------------------------------------


def _post(
    api: FakeMessagesAPI, body: JSON, path: str = "/v1/messages?beta=true"
) -> tuple[int, str, bytes]:
    host, port = api.base_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, resp.getheader("content-type") or "", data


def _sse(data: bytes) -> list[tuple[str, JSON]]:
    events = []
    for frame in data.decode().strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def _request(*, tools: bool = True, **extra: Any) -> JSON:
    body: JSON = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    if tools:
        body["tools"] = TOOLS
    return body


def test_streams_text_and_tool_use_as_sse() -> None:
    with FakeMessagesAPI() as api:
        api.script(text("hello world") + tool_use("Write", {"file_path": "/x", "content": "y"}))
        status, ctype, data = _post(api, _request(stream=True))
    assert status == 200 and ctype.startswith("text/event-stream")
    events = _sse(data)
    names = [e for e, _ in events]
    assert names[:2] == ["message_start", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]
    assert all(d["type"] == e for e, d in events)
    deltas = [d for e, d in events if e == "content_block_delta"]
    text_out = "".join(d["delta"]["text"] for d in deltas if d["index"] == 0)
    tool_json = "".join(d["delta"]["partial_json"] for d in deltas if d["index"] == 1)
    assert text_out == "hello world"
    assert json.loads(tool_json) == {"file_path": "/x", "content": "y"}
    starts = [d["content_block"] for e, d in events if e == "content_block_start"]
    assert starts[1]["type"] == "tool_use" and starts[1]["input"] == {}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_non_streaming_json_and_count_tokens() -> None:
    with FakeMessagesAPI() as api:
        api.script(text("plain"))
        status, ctype, data = _post(api, _request(stream=False))
        assert status == 200 and ctype == "application/json"
        message = json.loads(data)
        assert message["content"] == [{"type": "text", "text": "plain"}]
        assert message["stop_reason"] == "end_turn" and message["model"] == "m"
        status, _, data = _post(api, _request(), "/v1/messages/count_tokens?beta=true")
        assert status == 200 and json.loads(data)["input_tokens"] > 0
        assert len(api.requests) == 1  # count_tokens is not a messages request


def test_script_then_rules_then_default_and_side_requests_do_not_consume() -> None:
    with FakeMessagesAPI() as api:
        api.add_turn(tool_use("Bash", {"command": "true"}), text("first"))

        def echo(req: RecordedRequest) -> Any:
            return text(f"echo {req.last_tool_result_text()}") if req.tool_results() else None

        api.respond_with(echo)
        replies = []
        for body in (
            _request(stream=False),
            _request(tools=False, stream=False),  # side request: canned reply
            _request(stream=False),
            _request(
                stream=False,
                messages=[
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "t", "content": "42"}],
                    }
                ],
            ),
            _request(stream=False),
        ):
            replies.append(json.loads(_post(api, body)[2])["content"][0])
        assert [r.get("name") or r.get("text") for r in replies] == [
            "Bash",
            "Fake side reply",
            "first",
            "echo 42",
            "ok",
        ]
        assert len(api.requests) == 4 and len(api.side_requests) == 1 and api.pending == 0


def test_add_turn_rejects_a_turn_that_does_not_end_once() -> None:
    api = FakeMessagesAPI()
    with pytest.raises(ValueError):
        api.add_turn(text("too early"), text("end"))
    with pytest.raises(ValueError):
        api.add_turn(tool_use("Bash", {"command": "true"}))
    api.add_turn(api_error(529, "overloaded_error"), text("fine"))
    assert api.pending == 2


def test_error_steps_use_the_api_envelope() -> None:
    with FakeMessagesAPI() as api:
        api.script(api_error(400, "invalid_request_error", "bad"))
        status, _, data = _post(api, _request(stream=True))
    assert status == 400
    assert json.loads(data) == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "bad"},
    }


def test_a_failing_responder_is_reported() -> None:
    def broken(req: RecordedRequest) -> Any:
        raise KeyError("oops")

    with pytest.raises(AssertionError, match="responder failed"), FakeMessagesAPI() as api:
        api.respond_with(broken)
        assert _post(api, _request(stream=True))[0] == 500


# -- the real CLI ----------------------------------------------------------------


def _options(cwd: Path, env: dict[str, str], **kw: Any) -> ClaudeAgentOptions:
    return ClaudeAgentOptions(cwd=str(cwd), env=env, permission_mode="bypassPermissions", **kw)


def _entries(path: Path) -> list[JSON]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    return d.resolve()


@pytest.mark.cli
async def test_cli_text_turn(
    fake_api: FakeMessagesAPI, agent_env: dict[str, str], cwd: Path
) -> None:
    fake_api.script(text("hello from the fake"))
    turn = await run_turn("say hello", _options(cwd, agent_env))

    assert turn.assistant_texts() == ["hello from the fake"]
    assert turn.result.subtype == "success" and turn.result.result == "hello from the fake"
    [req] = fake_api.requests
    assert req.path == "/v1/messages?beta=true" and req.body["stream"] is True
    assert req.headers["anthropic-version"] == "2023-06-01"
    assert req.session_id == turn.session_id
    assert fake_api.last_user_texts() == ["say hello"]
    assert "Write" in req.tool_names and "Bash" in req.tool_names
    assert fake_api.side_requests == [] and fake_api.pending == 0
    assert transcript_path(agent_env, cwd, turn.session_id).is_file()


@pytest.mark.cli
def test_cli_print_mode_from_a_sync_test(tmp_path: Path, cwd: Path) -> None:
    """Plain ``claude -p`` in a subprocess, no SDK: the env is all it needs."""
    with FakeMessagesAPI() as api:
        api.script(text("printed"))
        env = {**os.environ, **cli_env(api.base_url, tmp_path / "cli")}
        out = subprocess.run(
            [str(bundled_cli()), "-p", "hi", "--output-format", "json"],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    assert json.loads(out.stdout)["result"] == "printed"
    assert api.last_user_texts() == ["hi"]


@pytest.mark.cli
async def test_cli_processes_share_one_fake(fake_api: FakeMessagesAPI, tmp_path: Path) -> None:
    """Concurrent CLIs; a rule answers each from its own request."""
    fake_api.respond_with(lambda req: text(f"echo: {req.user_texts()[-1]}"))
    runs = []
    for i in range(3):
        work = tmp_path / f"w{i}"
        work.mkdir()
        env = cli_env(fake_api.base_url, tmp_path / f"cli{i}")
        runs.append(run_turn(f"prompt {i}", _options(work, env)))
    turns = await asyncio.gather(*runs)
    assert [t.result.result for t in turns] == [f"echo: prompt {i}" for i in range(3)]
    assert {r.session_id for r in fake_api.requests} == {t.session_id for t in turns}


@pytest.mark.cli
async def test_cli_runs_write_and_bash(
    fake_api: FakeMessagesAPI, agent_env: dict[str, str], cwd: Path
) -> None:
    notes = cwd / "notes.md"
    fake_api.add_turn(
        tool_use("Write", {"file_path": str(notes), "content": "# Notes\nhello\n"}),
        tool_use("Bash", {"command": "echo hi > data.txt", "description": "Write data"}),
        text("done"),
    )
    turn = await run_turn("make two files", _options(cwd, agent_env))

    assert turn.result.subtype == "success" and turn.result.num_turns == 3
    assert notes.read_text() == "# Notes\nhello\n"
    assert (cwd / "data.txt").read_text() == "hi\n"
    first, second, third = fake_api.requests
    assert first.tool_results() == []
    assert "File created successfully" in (second.last_tool_result_text() or "")
    [write_use, bash_use] = third.tool_uses()
    assert [b["tool_use_id"] for b in third.tool_results()] == [write_use["id"], bash_use["id"]]
    assert third.tool_results()[-1].get("is_error") is not True
    assert all(r.user_texts() == ["make two files"] for r in fake_api.requests)


@pytest.mark.cli
async def test_cli_resume_in_a_new_process_sees_the_history(
    fake_api: FakeMessagesAPI, tmp_path: Path, cwd: Path
) -> None:
    config = tmp_path / "shared-config"
    env1 = cli_env(fake_api.base_url, tmp_path / "p1", config_dir=config)
    fake_api.add_turn(text("the answer is 42"))
    turn1 = await run_turn("what is the answer?", _options(cwd, env1))

    # A separate process with its own tmp/home; only CLAUDE_CONFIG_DIR is shared.
    env2 = cli_env(fake_api.base_url, tmp_path / "p2", config_dir=config)
    fake_api.add_turn(text("still 42"))
    turn2 = await run_turn("and now?", _options(cwd, env2, resume=turn1.session_id))

    assert turn2.session_id == turn1.session_id
    req = fake_api.requests[-1]
    assert req.user_texts() == ["what is the answer?", "and now?"]
    assert req.assistant_texts() == ["the answer is 42"]
    assert req.session_id == turn1.session_id
    entries = _entries(transcript_path(env2, cwd, turn1.session_id))
    prompts = [
        e["message"]["content"]
        for e in entries
        if e["type"] == "user" and isinstance(e["message"]["content"], str)
    ]
    assert prompts == ["what is the answer?", "and now?"]


@pytest.mark.cli
async def test_cli_file_checkpoints_and_rewind(
    fake_api: FakeMessagesAPI, agent_env: dict[str, str], cwd: Path
) -> None:
    notes, old = cwd / "notes.md", cwd / "old.txt"
    old.write_text("original\n")
    fake_api.add_turn(
        tool_use("Write", {"file_path": str(notes), "content": "hello\n"}),
        tool_use("Write", {"file_path": str(old), "content": "edited\n"}),  # overwrite
        text("turn one"),
    )
    fake_api.add_turn(
        tool_use("Edit", {"file_path": str(notes), "old_string": "hello", "new_string": "bye"}),
        text("turn two"),
    )
    options = _options(
        cwd,
        agent_env,
        enable_file_checkpointing=True,
        extra_args={"replay-user-messages": None},
    )
    prompt_ids: list[str] = []
    async with ClaudeSDKClient(options) as client:
        for prompt in ("one", "two"):
            await client.query(prompt)
            async for m in client.receive_response():
                if isinstance(m, UserMessage) and isinstance(m.content, str) and m.uuid:
                    prompt_ids.append(m.uuid)
                if isinstance(m, ResultMessage):
                    session_id = m.session_id
        assert (notes.read_text(), old.read_text()) == ("bye\n", "edited\n")

        history = file_history_dir(agent_env, session_id)
        backups = {p.name: p.read_text() for p in history.iterdir()}
        entries = _entries(transcript_path(agent_env, cwd, session_id))
        snapshots = [e for e in entries if e["type"] == "file-history-snapshot"]
        deltas = [e for e in entries if e["type"] == "file-history-delta"]

        # One snapshot per prompt, keyed by the prompt's uuid; deltas for files
        # first touched mid-turn. A file the turn created has backupFileName None,
        # one it overwrote is copied first (the Write of old.txt -> "<hash>@v1").
        assert [s["messageId"] for s in snapshots] == prompt_ids
        real_cwd = str(cwd)  # the fixture resolved it
        by_path = {d["trackingPath"]: d["backup"] for d in deltas}
        assert by_path["notes.md"]["backupFileName"] is None
        assert by_path["old.txt"]["backupFileName"] in backups
        assert {b["realParentDir"] for b in by_path.values()} == {real_cwd}
        tracked = snapshots[1]["snapshot"]["trackedFileBackups"]
        assert {k: v["version"] for k, v in tracked.items()} == {"notes.md": 2, "old.txt": 2}
        assert backups[tracked["notes.md"]["backupFileName"]] == "hello\n"
        assert backups[by_path["old.txt"]["backupFileName"]] == "original\n"

        await client.rewind_files(prompt_ids[1])
        assert (notes.read_text(), old.read_text()) == ("hello\n", "edited\n")
        await client.rewind_files(prompt_ids[0])
        assert not notes.exists() and old.read_text() == "original\n"


class _TimedStore(InMemorySessionStore):
    """InMemorySessionStore that remembers when each append happened."""

    def __init__(self) -> None:
        super().__init__()
        self.appends: list[tuple[float, str | None, int]] = []
        self.loads: list[SessionKey] = []

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        self.appends.append((time.monotonic(), key.get("subpath"), len(entries)))
        await super().append(key, entries)

    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        self.loads.append(key)
        return await super().load(key)


@pytest.mark.cli
@pytest.mark.parametrize("flush", ["batched", "eager"])
async def test_cli_mirrors_transcript_to_session_store(
    fake_api: FakeMessagesAPI, tmp_path: Path, cwd: Path, flush: str
) -> None:
    env = cli_env(fake_api.base_url, tmp_path / "a")
    store = _TimedStore()
    fake_api.add_turn(
        tool_use("Bash", {"command": "sleep 1", "description": "Wait"}), text("slept")
    )
    turn = await run_turn(
        "wait a bit", _options(cwd, env, session_store=store, session_store_flush=flush)
    )
    sid = turn.session_id
    key: SessionKey = {"project_key": project_key_for_directory(str(cwd)), "session_id": sid}
    mirrored = await InMemorySessionStore.load(store, key)
    assert mirrored is not None
    local = _entries(transcript_path(env, cwd, sid))

    # Same entries in the same order, minus the CLI's api-request bookkeeping.
    local_only = Counter(e["type"] for e in local) - Counter(e["type"] for e in mirrored)
    assert set(local_only) <= {"api-request", "api-request-shape", "api-request-blob"}
    assert [e for e in local if e["type"] not in local_only] == mirrored

    # The Bash tool sleeps 1 s after the tool_use reaches us: eager appends land
    # inside that window, batched ones only after the turn's result.
    sleep_done = turn.started + turn.first(AssistantMessage) + 0.9
    before_tool_done = [a for a in store.appends if a[0] < sleep_done]
    if flush == "eager":
        assert before_tool_done, "eager mode should append while the turn is running"
        assert len(store.appends) >= 3
    else:
        assert before_tool_done == [], "batched mode appends only at the end of the turn"
        assert len(store.appends) <= 3

    # Store-backed resume: a fresh CLAUDE_CONFIG_DIR with no local transcript.
    env2 = cli_env(fake_api.base_url, tmp_path / "b")
    fake_api.add_turn(text("resumed"))
    turn2 = await run_turn("again", _options(cwd, env2, session_store=store, resume=sid))
    assert turn2.session_id == sid and turn2.result.subtype == "success"
    assert store.loads[0]["project_key"] == key["project_key"]
    assert fake_api.requests[-1].user_texts() == ["wait a bit", "again"]
