"""Two server replicas on one PostgreSQL and one bucket, as separate
processes: concurrent turns spread over both land exactly once, in order per
session, with no snapshot lost; a replica killed with SIGKILL mid-turn leaves
a session the other replica resumes."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from sessiond.api.v1 import common_pb2, transcripts_pb2
from sessiond.client import AsyncClient, Unavailable
from sessiond.server.core.sealing import MasterKey
from tests.e2e.agent_env import ALLOWLIST, server_environ
from tests.fakeapi import FakeMessagesAPI, text
from tests.fakeapi.recorded import RecordedRequest
from tests.fakeapi.steps import Step
from tests.fixtures.services import free_port
from tests.helpers import clean_env, sessiond_cmd, spawn_server, wait_serving

pytestmark = pytest.mark.cli

SESSIONS = 5
TURNS = 4


@dataclass
class Replica:
    target: str
    proc: subprocess.Popen[bytes]


def _reply(req: RecordedRequest) -> Step | None:
    prompt = req.user_texts()[-1] if req.user_texts() else ""
    if prompt.startswith("slow:"):
        return text(f"reply to {prompt}").slow(delay=30)
    return text(f"reply to {prompt}")


@pytest.fixture
def replicas(
    postgres_url: str, s3_blob_url: str, fake_api: FakeMessagesAPI, tmp_path: Path
) -> list[Replica]:
    ports = [free_port(), free_port()]
    advertise = "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)
    env = clean_env(
        **server_environ(fake_api),
        SESSIOND_DATABASE_URL=postgres_url,
        SESSIOND_BLOB_URL=s3_blob_url,
        SESSIOND_AUTH="api-key",
        SESSIOND_ADVERTISE_ADDRESS=advertise,
        SESSIOND_ENV_ALLOWLIST=",".join(ALLOWLIST),
        SESSIOND_LEASE_TTL="3",
        SESSIOND_IDLE_TIMEOUT="3600",
        SESSIOND_DRAIN_SECONDS="5",
        # Replicas share one master key (each would otherwise generate its own).
        SESSIOND_MASTER_KEY=MasterKey.generate().encode(),
    )
    started = []
    for i, port in enumerate(ports):
        data = tmp_path / f"replica{i}"
        data.mkdir()
        proc = spawn_server(
            ["--listen", f"127.0.0.1:{port}", "--data-dir", str(data)], cwd=data, env=env
        )
        started.append(Replica(f"127.0.0.1:{port}", proc))
    try:
        for r in started:
            wait_serving(r.target, r.proc, timeout=60)
        yield started  # type: ignore[misc]
    finally:
        for r in started:
            if r.proc.poll() is None:
                r.proc.send_signal(signal.SIGTERM)
        for r in started:
            try:
                r.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                r.proc.kill()
                r.proc.wait()


def _api_key(postgres_url: str, tmp_path: Path) -> str:
    out = subprocess.run(
        sessiond_cmd("admin", "--database-url", postgres_url, "tenants", "create", "acme"),
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env=clean_env(),
    ).stdout
    return next(line.split()[1] for line in out.splitlines() if line.startswith("api_key"))


async def _turn(client: AsyncClient, sid: str, prompt: str) -> str:
    result = ""
    async for event in client.query(sid, prompt, deadline=600):
        if event.HasField("message") and event.message.type == "result":
            result = json.loads(event.message.json).get("result", "")
    return result


async def _user_and_replies(client: AsyncClient, session: common_pb2.Session) -> list[str]:
    """User prompts and assistant texts of the main transcript, in order."""
    key = transcripts_pb2.SessionKey(
        project_key=_project_key(session), session_id=session.sdk_session_id
    )
    out = []
    async for page in client.load_entries(key):
        for raw in page:
            entry = json.loads(raw)
            if entry.get("type") not in ("user", "assistant"):
                continue
            content = entry["message"]["content"]
            if isinstance(content, str):
                out.append(content)
            else:
                out += [b["text"] for b in content if b.get("type") == "text"]
    return [t for t in out if t.startswith(("s", "reply to", "slow:", "after"))]


def _project_key(session: common_pb2.Session) -> str:
    from claude_agent_sdk import project_key_for_directory

    return str(project_key_for_directory(session.sandbox_cwd))


async def test_two_replicas_serialize_turns_and_survive_a_kill(
    replicas: list[Replica], postgres_url: str, fake_api: FakeMessagesAPI, tmp_path: Path
) -> None:
    fake_api.respond_with(_reply)
    token = await asyncio.to_thread(_api_key, postgres_url, tmp_path)
    clients = [AsyncClient(r.target, token=token, timeout=120) for r in replicas]
    try:
        policy = common_pb2.SnapshotPolicy(after_each_turn=True)
        sids = [
            (await clients[0].create_session(snapshot_policy=policy)).session_id
            for _ in range(SESSIONS)
        ]
        calls = [
            _turn(clients[(s + t) % 2], sid, f"s{s} turn {t}")
            for t in range(TURNS)
            for s, sid in enumerate(sids)
        ]
        results = await asyncio.gather(*calls)
        assert all(r.startswith("reply to s") for r in results), results

        for s, sid in enumerate(sids):
            session = await clients[1].get_session(sid)
            assert session.turn_count == TURNS
            seq = await _user_and_replies(clients[0], session)
            prompts = [t for t in seq if t.startswith("s")]
            # Every turn exactly once, and each prompt immediately followed by
            # its own reply: turns never interleaved.
            assert sorted(prompts) == sorted(f"s{s} turn {t}" for t in range(TURNS))
            for i, item in enumerate(seq):
                if item.startswith("s"):
                    assert seq[i + 1] == f"reply to {item}"
            snaps = (await clients[0].list_snapshots(sid)).snapshots
            assert len(snaps) == TURNS
            assert session.latest_snapshot_id == snaps[0].snapshot_id

        # A replica dies with SIGKILL in the middle of a turn.
        victim = sids[0]
        slow = asyncio.ensure_future(_turn(clients[0], victim, "slow: never finishes"))
        await asyncio.to_thread(lambda: _wait_for_prompt(fake_api, "slow: never finishes"))
        replicas[0].proc.send_signal(signal.SIGKILL)
        with pytest.raises(Unavailable):
            await slow
        # The other replica takes the session over once the lease expires.
        reply = await _turn(clients[1], victim, "after the crash")
        assert reply == "reply to after the crash"
        session = await clients[1].get_session(victim)
        assert session.state == common_pb2.SESSION_STATE_ACTIVE
        seq = await _user_and_replies(clients[1], session)
        assert seq[-2:] == ["after the crash", "reply to after the crash"]
    finally:
        for c in clients:
            await c.close()


def _wait_for_prompt(api: FakeMessagesAPI, prompt: str, timeout: float = 120) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(prompt in r.user_texts()[-1:] for r in api.requests):
            return
        time.sleep(0.05)
    raise AssertionError(f"the fake API never saw {prompt!r}")
