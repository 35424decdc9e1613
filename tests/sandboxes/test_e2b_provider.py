"""E2BSandboxProvider through the real e2b SDK against the local fake E2B
(``tests.fakee2b``): what is specific to E2B — the SDK really goes through the
control API and envd, error translation at the edge, sandboxes dying behind
our back, pausing — plus the shared contracts checked here too, since the
contract suite runs the same provider."""

from __future__ import annotations

import asyncio
import os
import random
import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from sessiond.client.errors import InvalidArgument, NotFound, Unavailable
from sessiond.server.sandboxes.e2b import KILLED, E2BSandboxProvider, exit_code, shell_command
from sessiond.server.sandboxes.provider import ExecEvent, SandboxProvider, SandboxSpec, run
from tests.fakee2b import FakeE2B, Isolation
from tests.helpers import assert_eventually

pytestmark = pytest.mark.timeout(120)

Factory = Callable[..., E2BSandboxProvider]


async def _create(provider: E2BSandboxProvider, **env: str) -> str:
    info = await provider.create(SandboxSpec(session_id="sess-1", env=env))
    return info.sandbox_id


async def _collect(execution: object) -> list[ExecEvent]:
    return [event async for event in execution.events()]  # type: ignore[attr-defined]


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


async def test_is_a_sandbox_provider(e2b_provider: E2BSandboxProvider) -> None:
    assert isinstance(e2b_provider, SandboxProvider)
    assert e2b_provider.name == "e2b"
    assert "e2b_fake" not in repr(e2b_provider)


async def test_create_describe_and_records_the_real_api_path(
    e2b_provider: E2BSandboxProvider, fake_e2b: FakeE2B
) -> None:
    fake_e2b.clear_calls()
    info = await e2b_provider.create(SandboxSpec(session_id="sess-42", env={"A": "1"}))
    assert (info.provider, info.state) == ("e2b", "running")
    assert (info.workdir, info.config_dir) == ("/home/user/workspace", "/home/user/.claude")
    assert fake_e2b.host_path(info.sandbox_id, info.workdir).is_dir()
    assert fake_e2b.host_path(info.sandbox_id, info.config_dir).is_dir()
    assert list(fake_e2b.host_path(info.sandbox_id, info.workdir).iterdir()) == []
    described = await e2b_provider.describe(info.sandbox_id)
    assert described == info

    sid = info.sandbox_id
    code, out, _ = await run(e2b_provider, sid, ["echo", "hi"])
    await e2b_provider.put_file(sid, "/home/user/workspace/f", b"x")
    assert await e2b_provider.get_file(sid, "/home/user/workspace/f") == b"x"

    calls = [(c.plane, c.method, c.path, c.status) for c in fake_e2b.calls()]
    assert calls[0] == ("api", "POST", "/v2/sandboxes", 201)
    assert ("envd", "POST", "/filesystem.Filesystem/MakeDir", 200) in calls
    assert ("api", "GET", f"/sandboxes/{sid}", 200) in calls
    assert ("envd", "POST", "/process.Process/Start", 200) in calls
    assert ("envd", "POST", "/files", 200) in calls
    assert ("envd", "GET", "/files", 200) in calls
    # Every call carried the right credential; every envd call named the sandbox.
    assert all(c.authorized for c in fake_e2b.calls())
    assert all(c.sandbox_id == sid for c in fake_e2b.calls("envd"))
    # The SDK's own clients: REST/files via httpx, envd RPCs via connectrpc.
    agents = {c.user_agent.split("/")[0] for c in fake_e2b.calls()}
    assert agents == {"e2b-python-sdk", "connectrpc"}
    async with httpx.AsyncClient() as http:
        response = await http.get(
            f"{fake_e2b.api_url}/v2/sandboxes",
            params={"metadata": "sessiond_session=sess-42"},
            headers={"X-API-KEY": fake_e2b.api_key},
        )
    listed = response.json()
    assert [s["sandboxID"] for s in listed] == [sid]
    assert (code, out) == (0, b"hi\n")


async def test_streams_stdout_and_stderr_in_order(e2b_provider: E2BSandboxProvider) -> None:
    sid = await _create(e2b_provider)
    script = "for i in 1 2 3; do echo out$i; echo err$i >&2; sleep 0.05; done"
    execution = await e2b_provider.exec(sid, ["sh", "-c", script])
    events = await _collect(execution)
    assert await execution.wait() == 0
    out = b"".join(e.data for e in events if e.stream == "stdout")
    err = b"".join(e.data for e in events if e.stream == "stderr")
    assert (out, err) == (b"out1\nout2\nout3\n", b"err1\nerr2\nerr3\n")
    # Streamed as produced, not delivered at the end in one piece.
    assert len([e for e in events if e.stream == "stdout"]) >= 2


async def test_exit_codes_and_kill(e2b_provider: E2BSandboxProvider) -> None:
    sid = await _create(e2b_provider)
    assert (await run(e2b_provider, sid, ["true"]))[0] == 0
    assert (await run(e2b_provider, sid, ["sh", "-c", "exit 3"]))[0] == 3
    execution = await e2b_provider.exec(sid, ["sleep", "60"])
    await execution.kill()
    assert await asyncio.wait_for(execution.wait(), 10) == KILLED
    await execution.kill()  # idempotent


async def test_argv_is_not_shell_parsed(e2b_provider: E2BSandboxProvider) -> None:
    sid = await _create(e2b_provider)
    argv = ["printf", "%s|", "a b", "$HOME", "'q'", "; rm -rf /", "-n"]
    code, out, _ = await run(e2b_provider, sid, argv)
    assert (code, out) == (0, b"a b|$HOME|'q'|; rm -rf /|-n|")


async def test_env_cwd_and_stdin(e2b_provider: E2BSandboxProvider, fake_e2b: FakeE2B) -> None:
    sid = await _create(e2b_provider, SANDBOX_VAR="from-spec", SHARED="spec")
    code, out, _ = await run(
        e2b_provider,
        sid,
        ["sh", "-c", 'echo "$SANDBOX_VAR $SHARED $EXTRA"'],
        env={"SHARED": "exec", "EXTRA": "x y"},
    )
    assert (code, out) == (0, b"from-spec exec x y\n")

    execution = await e2b_provider.exec(sid, ["sh", "-c", "echo here > marker; pwd"])
    events = await _collect(execution)
    assert await execution.wait() == 0
    assert await e2b_provider.get_file(sid, "/home/user/workspace/marker") == b"here\n"
    if fake_e2b.isolation is Isolation.NAMESPACE:
        assert b"".join(e.data for e in events) == b"/home/user/workspace\n"
    elsewhere = await e2b_provider.exec(
        sid, ["sh", "-c", "echo there > m2"], cwd="/home/user/.claude"
    )
    assert await elsewhere.wait() == 0
    assert await e2b_provider.get_file(sid, "/home/user/.claude/m2") == b"there\n"

    payload = bytes(random.Random(1).choices(b"abcdefgh\n", k=300_000))
    code, out, _ = await run(e2b_provider, sid, ["cat"], stdin=payload)
    assert (code, out) == (0, payload)
    assert (await run(e2b_provider, sid, ["wc", "-c"], stdin=b""))[1].strip() == b"0"
    # A command that exits without reading its stdin is not an error.
    assert (await run(e2b_provider, sid, ["true"], stdin=b"ignored" * 100_000))[0] == 0

    with pytest.raises(InvalidArgument):
        await e2b_provider.exec(sid, ["true"], cwd="/home/user/nowhere")
    with pytest.raises(InvalidArgument):
        await e2b_provider.exec(sid, [])


async def test_files(e2b_provider: E2BSandboxProvider, fake_e2b: FakeE2B) -> None:
    sid = await _create(e2b_provider)
    blob = random.Random(7).randbytes(5 << 20)
    await e2b_provider.put_file(sid, "/home/user/workspace/deep/dir/blob.bin", blob)
    assert await e2b_provider.get_file(sid, "/home/user/workspace/deep/dir/blob.bin") == blob
    host = fake_e2b.host_path(sid, "/home/user/workspace/deep/dir/blob.bin")
    assert host.read_bytes() == blob

    await e2b_provider.put_file(sid, "/home/user/workspace/run.sh", b"#!/bin/sh\necho ran\n", 0o755)
    code, out, _ = await run(e2b_provider, sid, ["./run.sh"])
    assert (code, out) == (0, b"ran\n")
    assert host.parent.parent.parent.joinpath("run.sh").stat().st_mode & 0o777 == 0o755
    await e2b_provider.put_file(sid, "/home/user/workspace/run.sh", b"data", 0o600)
    assert host.parent.parent.parent.joinpath("run.sh").stat().st_mode & 0o777 == 0o600

    with pytest.raises(NotFound):
        await e2b_provider.get_file(sid, "/home/user/workspace/missing")
    with pytest.raises(InvalidArgument):
        await e2b_provider.get_file(sid, "/home/user/workspace")
    # Only regular files are read: a FIFO or a link to a device could stream forever.
    code, _, err = await run(e2b_provider, sid, ["sh", "-c", "mkfifo fifo; ln -s /dev/zero zero"])
    assert code == 0, err
    for special in ("fifo", "zero"):
        with pytest.raises(InvalidArgument):
            await e2b_provider.get_file(sid, f"/home/user/workspace/{special}")
    with pytest.raises(InvalidArgument):
        await e2b_provider.put_file(sid, "relative/path", b"")


async def test_output_is_back_pressured_not_lost(e2b_provider: E2BSandboxProvider) -> None:
    sid = await _create(e2b_provider)
    size = 12 << 20
    execution = await e2b_provider.exec(sid, ["head", "-c", str(size), "/dev/zero"])
    total = 0
    async for event in execution.events():
        total += len(event.data)
        await asyncio.sleep(0)
    assert (await execution.wait(), total) == (0, size)
    # wait() without reading discards the output instead of blocking on it.
    unread = await e2b_provider.exec(sid, ["head", "-c", str(size), "/dev/zero"])
    assert await asyncio.wait_for(unread.wait(), 30) == 0


async def test_kill_reaches_grandchildren(
    e2b_provider: E2BSandboxProvider, fake_e2b: FakeE2B
) -> None:
    sid = await _create(e2b_provider)
    script = "sleep 300 & echo $!; sh -c 'sleep 301' & wait"
    execution = await e2b_provider.exec(sid, ["sh", "-c", script])
    first = await anext(aiter(execution.events()))
    grandchild = int(first.data.split()[0])
    assert _alive(grandchild)
    await execution.kill()
    assert await asyncio.wait_for(execution.wait(), 10) == KILLED

    async def gone() -> None:
        assert not _alive(grandchild)
        assert not [p for p in fake_e2b.pids(sid) if _alive(p)]

    await assert_eventually(gone)


async def test_destroy(e2b_provider: E2BSandboxProvider, fake_e2b: FakeE2B) -> None:
    sid = await _create(e2b_provider)
    running = await e2b_provider.exec(sid, ["sh", "-c", "sleep 300 & sleep 300"])
    await e2b_provider.destroy(sid)
    assert await asyncio.wait_for(running.wait(), 15) == KILLED
    await e2b_provider.destroy(sid)  # idempotent
    assert sid not in fake_e2b.sandbox_ids()
    assert not [p for p in fake_e2b.pids(sid) if _alive(p)]
    with pytest.raises(NotFound):
        await e2b_provider.describe(sid)
    with pytest.raises(NotFound):
        await e2b_provider.exec(sid, ["true"])
    with pytest.raises(NotFound):
        await e2b_provider.get_file(sid, "/home/user/workspace/x")
    await e2b_provider.destroy("iunknownsandbox00")


async def test_killed_behind_our_back_is_not_found(
    e2b_provider: E2BSandboxProvider, fake_e2b: FakeE2B
) -> None:
    sid = await _create(e2b_provider)
    running = await e2b_provider.exec(sid, ["sleep", "300"])
    await asyncio.to_thread(fake_e2b.kill, sid)
    # The stream was cut; the SDK's health probe confirms the sandbox is gone.
    assert await asyncio.wait_for(running.wait(), 15) == KILLED
    with pytest.raises(NotFound):
        await e2b_provider.exec(sid, ["true"])
    with pytest.raises(NotFound):
        await e2b_provider.put_file(sid, "/home/user/workspace/x", b"x")
    with pytest.raises(NotFound):
        await e2b_provider.describe(sid)
    await running.kill()  # nothing left to kill: not an error


async def test_sandbox_timeout_ends_it(e2b_provider: E2BSandboxProvider) -> None:
    info = await e2b_provider.create(SandboxSpec(session_id="s", timeout_seconds=1))

    async def expired() -> None:
        try:
            await e2b_provider.describe(info.sandbox_id)
        except NotFound:
            return
        raise AssertionError("the sandbox outlived its timeout")

    await assert_eventually(expired, timeout=10)


async def test_second_instance_reaches_a_sandbox(
    e2b_provider: E2BSandboxProvider, e2b_provider_factory: Factory, fake_e2b: FakeE2B
) -> None:
    sid = await _create(e2b_provider, FROM_SPEC="yes")
    await e2b_provider.put_file(sid, "/home/user/workspace/a", b"first")
    other = e2b_provider_factory()
    fake_e2b.clear_calls()
    code, out, _ = await run(other, sid, ["sh", "-c", 'cat a; echo " $FROM_SPEC"'])
    assert (code, out) == (0, b"first yes\n")
    assert ("api", "POST", f"/v2/sandboxes/{sid}/connect") in [
        (c.plane, c.method, c.path) for c in fake_e2b.calls()
    ]
    await other.destroy(sid)
    with pytest.raises(NotFound):
        await e2b_provider.exec(sid, ["true"])


async def test_paused_sandbox_is_stopped_then_resumed_by_use(
    e2b_provider: E2BSandboxProvider, fake_e2b: FakeE2B
) -> None:
    sid = await _create(e2b_provider)
    await e2b_provider.put_file(sid, "/home/user/workspace/kept", b"kept")
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{fake_e2b.api_url}/sandboxes/{sid}/pause", headers={"X-API-KEY": fake_e2b.api_key}
        )
    assert response.status_code == 204
    assert (await e2b_provider.describe(sid)).state == "stopped"
    # The cached handle is stale; the provider reconnects, which resumes.
    assert await e2b_provider.get_file(sid, "/home/user/workspace/kept") == b"kept"
    assert (await e2b_provider.describe(sid)).state == "running"


async def test_wrong_api_key_is_unavailable_and_never_echoed(
    e2b_provider_factory: Factory, fake_e2b: FakeE2B
) -> None:
    secret = "e2b_wrong_" + os.urandom(8).hex()
    provider = e2b_provider_factory(api_key=secret)
    fake_e2b.clear_calls()
    with pytest.raises(Unavailable) as caught:
        await provider.create(SandboxSpec(session_id="s"))
    assert secret not in str(caught.value)
    assert "API key" in str(caught.value)
    assert [(c.path, c.status, c.authorized) for c in fake_e2b.calls()] == [
        ("/v2/sandboxes", 401, False)
    ]
    with pytest.raises(Unavailable):
        await provider.describe("isomesandbox0000")


async def test_server_errors_are_unavailable(
    e2b_provider: E2BSandboxProvider, fake_e2b: FakeE2B
) -> None:
    fake_e2b.fail_next("api", 500, path_contains="/v2/sandboxes")
    with pytest.raises(Unavailable):
        await e2b_provider.create(SandboxSpec(session_id="s"))
    sid = await _create(e2b_provider)
    fake_e2b.fail_next("envd", 500, path_contains="/files")
    with pytest.raises(Unavailable):
        await e2b_provider.put_file(sid, "/home/user/workspace/x", b"x")
    fake_e2b.fail_next("envd", 500, path_contains="/process.Process/Start")
    with pytest.raises(Unavailable):
        await e2b_provider.exec(sid, ["true"])
    assert (await run(e2b_provider, sid, ["true"]))[0] == 0


async def test_unreachable_e2b_is_unavailable(e2b_provider_factory: Factory) -> None:
    provider = e2b_provider_factory(api_url="http://127.0.0.1:9", request_timeout_seconds=2)
    with pytest.raises(Unavailable):
        await provider.create(SandboxSpec(session_id="s"))


async def test_malformed_ids_are_rejected_before_any_request(
    e2b_provider: E2BSandboxProvider, fake_e2b: FakeE2B
) -> None:
    fake_e2b.clear_calls()
    for bad in ("../templates/x", "a/b", "", "x" * 200):
        with pytest.raises(InvalidArgument):
            await e2b_provider.describe(bad)
        with pytest.raises(InvalidArgument):
            await e2b_provider.exec(bad, ["true"])
    assert fake_e2b.calls() == []


def test_exit_code_and_command_helpers() -> None:
    assert exit_code(0, None) == 0
    assert exit_code(3, "exit status 3") == 3
    assert exit_code(-1, "signal: killed") == KILLED == 137
    assert exit_code(-1, "signal: terminated") == 143
    assert exit_code(-1, "signal: segmentation fault (core dumped)") == 139
    assert exit_code(-1, "something else") == -1
    assert re.search(r"setsid -w -- echo 'a b'", shell_command(["echo", "a b"]))


def test_translate_mode_fake_still_runs_commands_and_files(tmp_path: Path) -> None:
    async def scenario(fake: FakeE2B) -> None:
        provider = E2BSandboxProvider(
            api_key=fake.api_key, api_url=fake.api_url, sandbox_url=fake.sandbox_url
        )
        sid = await _create(provider)
        code, out, _ = await run(provider, sid, ["sh", "-c", "pwd; echo $HOME"])
        workdir = fake.host_path(sid, "/home/user/workspace")
        assert (code, out.split()) == (0, [str(workdir).encode(), str(workdir.parent).encode()])
        await provider.put_file(sid, "/home/user/workspace/f", b"data")
        assert (await run(provider, sid, ["cat", "f"]))[1] == b"data"
        await provider.destroy(sid)

    with FakeE2B(isolation="translate", root=tmp_path) as fake:
        assert fake.isolation is Isolation.TRANSLATE
        asyncio.run(scenario(fake))
