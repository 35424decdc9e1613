"""The fake E2B itself (``tests.fakee2b``), driven by the real e2b SDK: the
parts of E2B's behaviour the provider relies on, and that no request can
reach a host path outside a sandbox."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from e2b import (
    E2B,
    AsyncSandbox,
    AuthenticationException,
    CommandExitException,
    FileNotFoundException,
    SandboxNotFoundException,
    SandboxNotRunningException,
)

from tests.fakee2b import FakeE2B
from tests.fakee2b.paths import PathResolutionError, resolve
from tests.helpers import assert_eventually

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def sandbox(fake_e2b: FakeE2B) -> AsyncIterator[AsyncSandbox]:
    client = E2B(
        api_key=fake_e2b.api_key, api_url=fake_e2b.api_url, sandbox_url=fake_e2b.sandbox_url
    )
    sbx = await client.AsyncSandbox.create(timeout=120)
    yield sbx
    await sbx.kill()


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in "ZX"


def test_resolve_stays_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "fs"
    (root / "home/user").mkdir(parents=True)
    (root / "home/user/abs").symlink_to("/etc")
    (root / "home/user/rel").symlink_to("../../../../../etc")
    (root / "home/user/loop").symlink_to("loop")
    assert resolve(root, "/../../etc/passwd") == root / "etc/passwd"
    assert resolve(root, "/home/user/abs/passwd") == root / "etc/passwd"
    assert resolve(root, "/home/user/rel/passwd") == root / "etc/passwd"
    assert resolve(root, "/home/user/abs", follow_final=False) == root / "home/user/abs"
    with pytest.raises(PathResolutionError) as caught:
        resolve(root, "/home/user/loop/x")
    assert caught.value.errno == errno.ELOOP


async def test_files_api_never_reaches_host_paths(sandbox: AsyncSandbox) -> None:
    assert _exists("/etc/hostname")
    await sandbox.commands.run("ln -s /etc/hostname h; ln -s ../../../../../etc up")
    with pytest.raises(FileNotFoundException):
        await sandbox.files.read("/home/user/h")
    with pytest.raises(FileNotFoundException):
        await sandbox.files.read("/home/user/up/hostname")
    with pytest.raises(FileNotFoundException):
        await sandbox.files.read("/../../../../etc/hostname")
    await sandbox.files.write("/../../escape.txt", b"x")
    assert not _exists("/escape.txt")


async def test_credentials_and_dead_sandboxes(fake_e2b: FakeE2B, sandbox: AsyncSandbox) -> None:
    wrong = E2B(api_key="e2b_wrong", api_url=fake_e2b.api_url, sandbox_url=fake_e2b.sandbox_url)
    with pytest.raises(AuthenticationException):
        await wrong.AsyncSandbox.create()
    # envd wants the sandbox's own access token; an unknown sandbox is a 502.
    rpc = "/process.Process/List"
    async with httpx.AsyncClient(base_url=fake_e2b.sandbox_url) as http:
        headers = {"E2b-Sandbox-Id": sandbox.sandbox_id, "Content-Type": "application/json"}
        forged = await http.post(rpc, content=b"{}", headers={**headers, "X-Access-Token": "x"})
        unknown = await http.post(rpc, content=b"{}", headers={**headers, "E2b-Sandbox-Id": "nope"})
    assert (forged.status_code, unknown.status_code) == (401, 502)
    assert "was not found" in unknown.json()["message"]

    await asyncio.to_thread(fake_e2b.kill, sandbox.sandbox_id)
    with pytest.raises(SandboxNotRunningException):
        await sandbox.commands.run("true")
    with pytest.raises(SandboxNotFoundException):
        await sandbox.get_info()
    assert not await sandbox.kill()


async def test_processes_behave_like_envd(fake_e2b: FakeE2B, sandbox: AsyncSandbox) -> None:
    # Exit reports as Go's ProcessState prints them.
    with pytest.raises(CommandExitException) as caught:
        await sandbox.commands.run("exit 7")
    assert (caught.value.exit_code, caught.value.error) == (7, "exit status 7")
    handle = await sandbox.commands.run("sleep 30 & echo $!; wait", background=True)
    await asyncio.sleep(0.2)
    processes = await sandbox.commands.list()
    assert [p.pid for p in processes] == [handle.pid]
    # envd's kill signals the process alone: its child lives on.
    assert await handle.kill()
    with pytest.raises(CommandExitException) as caught:
        await handle.wait()
    assert (caught.value.exit_code, caught.value.error) == (-1, "signal: killed")
    child = int(handle.stdout.split()[0])
    assert _alive(child)
    os.kill(child, 9)
    # The command timeout (Connect-Timeout-Ms) kills the process, as envd does.
    timed = await sandbox.commands.run("sleep 30", background=True, timeout=1)
    pid = timed.pid
    with pytest.raises(Exception):  # noqa: B017 - the SDK's deadline error
        await timed.wait()

    async def killed() -> None:
        assert not _alive(pid)

    await assert_eventually(killed, timeout=10)


async def test_stop_kills_everything(tmp_path: Path) -> None:
    fake = FakeE2B(root=tmp_path / "root").start()
    try:
        client = E2B(api_key=fake.api_key, api_url=fake.api_url, sandbox_url=fake.sandbox_url)
        sbx = await client.AsyncSandbox.create()
        handle = await sbx.commands.run("setsid sleep 300 & sleep 300", background=True)
        await asyncio.sleep(0.3)
        pids = fake.pids(sbx.sandbox_id)
        assert len([p for p in pids if _alive(p)]) >= 2
        await handle.disconnect()
    finally:
        await asyncio.to_thread(fake.stop)

    async def gone() -> None:
        assert not [p for p in pids if _alive(p)]

    await assert_eventually(gone, timeout=10)
