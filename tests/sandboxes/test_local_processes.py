"""LocalSandboxProvider: processes — what kill, kill_all and destroy reach,
what they must spare, and that output is neither lost nor held open."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sessiond.client.errors import NotFound
from sessiond.server.sandboxes.local import MARK_SANDBOX, LocalSandboxProvider, make_removable
from sessiond.server.sandboxes.provider import SandboxInfo, SandboxSpec, run
from tests.helpers import assert_eventually
from tests.sandboxes import collect

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")


@pytest.fixture
async def provider(tmp_path: Path) -> AsyncIterator[LocalSandboxProvider]:
    p = LocalSandboxProvider(tmp_path / "root")
    yield p
    await p.close()


@pytest.fixture
async def sandbox(provider: LocalSandboxProvider) -> AsyncIterator[SandboxInfo]:
    info = await provider.create(SandboxSpec("ses"))
    yield info
    await provider.destroy(info.sandbox_id)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


async def gone(*pids: int) -> None:
    async def check() -> None:
        assert not [p for p in pids if alive(p)]

    await assert_eventually(check, timeout=30)


# Leaves behind, then exits: a daemon in its own session (keeps the env), and
# a process with an empty environment in its own session (keeps only its cwd).
ESCAPEES = """
import subprocess
daemon = subprocess.Popen(["sleep", "1000"], start_new_session=True)
bare = subprocess.Popen(["/bin/sleep", "1001"], start_new_session=True, env={})
print(daemon.pid, bare.pid, flush=True)
"""


async def escapees(provider: LocalSandboxProvider, sandbox: SandboxInfo) -> tuple[int, int]:
    code, out, err = await run(provider, sandbox.sandbox_id, ["python3", "-c", ESCAPEES])
    assert code == 0, err
    daemon, bare = (int(x) for x in out.split())
    assert alive(daemon) and alive(bare)
    return daemon, bare


async def test_destroy_reaches_processes_that_left_the_group(
    provider: LocalSandboxProvider, sandbox: SandboxInfo
) -> None:
    daemon, bare = await escapees(provider, sandbox)
    await provider.destroy(sandbox.sandbox_id)
    await gone(daemon, bare)


async def test_kill_all_reaches_them_too_and_a_replica_can_do_it(
    provider: LocalSandboxProvider, sandbox: SandboxInfo
) -> None:
    daemon, bare = await escapees(provider, sandbox)
    replica = LocalSandboxProvider(provider.root)
    await replica.kill_all(sandbox.sandbox_id)
    await gone(daemon, bare)
    assert await run(provider, sandbox.sandbox_id, ["true"]) == (0, b"", b"")


async def test_kill_reaches_a_descendant_in_its_own_session(
    provider: LocalSandboxProvider, sandbox: SandboxInfo
) -> None:
    execution = await provider.exec(
        sandbox.sandbox_id,
        [
            "python3",
            "-c",
            "import subprocess\n"
            "p = subprocess.Popen(['sleep', '1000'], start_new_session=True)\n"
            "print(p.pid, flush=True)\n"
            "p.wait()\n",
        ],
    )
    first = await asyncio.wait_for(anext(execution.events()), timeout=60)
    escaped = int(first.data)
    other = await provider.exec(sandbox.sandbox_id, ["sh", "-c", "echo $$; exec sleep 1002"])
    other_pid = int((await asyncio.wait_for(anext(other.events()), timeout=60)).data)
    await execution.kill()
    assert await execution.wait() == 128 + signal.SIGKILL
    await gone(escaped)
    # kill() is about one execution: the sandbox's other commands live on.
    assert alive(other_pid)
    await other.kill()
    assert await other.wait() == 128 + signal.SIGKILL


@pytest.fixture
def stranger(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process group that has nothing to do with any sandbox."""
    proc = subprocess.Popen(["sleep", "1000"], cwd=tmp_path, start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


async def test_tampered_pgids_do_not_kill_strangers(
    provider: LocalSandboxProvider,
    sandbox: SandboxInfo,
    stranger: subprocess.Popen[bytes],
) -> None:
    assert await run(provider, sandbox.sandbox_id, ["true"]) == (0, b"", b"")
    # The agent can write this file (it runs as the server's user).
    pgids = provider.root / sandbox.sandbox_id / "pgids"
    pgids.write_text(pgids.read_text() + f"{stranger.pid}\n{os.getpgrp()}\n1\n")
    await provider.kill_all(sandbox.sandbox_id)
    await provider.destroy(sandbox.sandbox_id)
    assert stranger.poll() is None
    assert alive(os.getpid())


async def test_background_child_does_not_hold_output_open(
    provider: LocalSandboxProvider, sandbox: SandboxInfo
) -> None:
    execution = await provider.exec(
        sandbox.sandbox_id, ["sh", "-c", "sleep 1000 & echo started; echo $! >&2"]
    )
    code, out, err = await asyncio.wait_for(collect(execution), timeout=60)
    assert (code, out) == (0, b"started\n")
    background = int(err)
    assert alive(background)  # not ours to kill: the command only exited
    await provider.kill_all(sandbox.sandbox_id)
    await gone(background)


async def test_output_is_not_lost_when_the_consumer_lags(
    provider: LocalSandboxProvider, sandbox: SandboxInfo
) -> None:
    size = 12 << 20  # more than the pipe, reader and queue buffers together
    execution = await provider.exec(
        sandbox.sandbox_id,
        [
            "python3",
            "-c",
            f"import sys; sys.stdout.buffer.write(bytes(range(256)) * {size // 256})",
        ],
    )
    events = execution.events()
    got = bytearray((await anext(events)).data)
    await asyncio.sleep(0.5)  # let every buffer fill and the command block
    async for event in events:
        got.extend(event.data)
    assert await execution.wait() == 0
    assert len(got) == size and got == bytes(range(256)) * (size // 256)


async def test_output_buffered_before_exit_survives_wait_first(
    provider: LocalSandboxProvider, sandbox: SandboxInfo
) -> None:
    size = 1 << 20  # fits in the buffers: the command can exit unread
    execution = await provider.exec(
        sandbox.sandbox_id, ["python3", "-c", f"import sys; sys.stdout.buffer.write(b'x' * {size})"]
    )
    assert await asyncio.wait_for(execution.wait(), timeout=60) == 0
    code, out, _ = await collect(execution)
    assert (code, len(out)) == (0, size)


async def test_stdin_not_read_is_no_error(
    provider: LocalSandboxProvider, sandbox: SandboxInfo
) -> None:
    assert await run(provider, sandbox.sandbox_id, ["true"], stdin=b"x" * (8 << 20)) == (
        0,
        b"",
        b"",
    )


async def test_not_executable_is_126(provider: LocalSandboxProvider, sandbox: SandboxInfo) -> None:
    await provider.put_file(sandbox.sandbox_id, f"{sandbox.workdir}/script", b"#!/bin/sh\n")
    code, _, err = await run(provider, sandbox.sandbox_id, [f"{sandbox.workdir}/script"])
    assert code == 126 and b"script" in err
    code, _, _ = await run(provider, sandbox.sandbox_id, ["./no-such-file"])
    assert code == 127


def marked(sandbox_id: str) -> list[int]:
    needle = f"{MARK_SANDBOX}={sandbox_id}".encode()
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{name}/environ", "rb") as f:
                if needle in f.read().split(b"\0") and alive(int(name)):
                    found.append(int(name))
    return found


async def test_exec_racing_destroy_leaves_nothing_running(
    provider: LocalSandboxProvider,
) -> None:
    for _ in range(5):
        info = await provider.create(SandboxSpec("race"))
        replica = LocalSandboxProvider(provider.root)
        starts = [provider.exec(info.sandbox_id, ["sleep", "1000"]) for _ in range(10)]
        results = await asyncio.gather(
            *starts[:5], replica.destroy(info.sandbox_id), *starts[5:], return_exceptions=True
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        assert all(isinstance(r, NotFound) for r in failures), failures
        for result in results:
            if result is not None and not isinstance(result, BaseException):
                # Started before the destroy committed: killed by it.
                assert await asyncio.wait_for(result.wait(), timeout=30) != 0

        async def nothing_left(sandbox_id: str = info.sandbox_id) -> None:
            assert marked(sandbox_id) == []

        await assert_eventually(nothing_left, timeout=30)
        with pytest.raises(NotFound):
            await provider.exec(info.sandbox_id, ["true"])


async def test_destroy_removes_what_the_agent_locked(
    provider: LocalSandboxProvider, tmp_path: Path
) -> None:
    info = await provider.create(SandboxSpec("ses"))
    outside = tmp_path / "outside-file"
    outside.write_bytes(b"keep")
    outside.chmod(0o444)
    script = (
        "import os\n"
        "os.makedirs('a/b/c'); open('a/b/c/f', 'w').write('x'); os.chmod('a/b/c/f', 0o400)\n"
        "os.chmod('a/b/c', 0o000); os.chmod('a/b', 0o500); os.chmod('a', 0o500)\n"
        f"os.symlink({str(outside)!r}, 'link'); os.chmod('.', 0o500)\n"
    )
    code, _, err = await run(provider, info.sandbox_id, ["python3", "-c", script])
    assert code == 0, err
    await provider.destroy(info.sandbox_id)
    assert not (provider.root / info.sandbox_id).exists()
    assert os.listdir(provider.root / ".trash") == []
    assert outside.read_bytes() == b"keep"
    assert stat.S_IMODE(outside.stat().st_mode) == 0o444


def test_make_removable_never_follows_symlinks(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir(mode=0o500)
    tree = tmp_path / "tree"
    (tree / "x" / "y").mkdir(parents=True)
    (tree / "x" / "link").symlink_to(target)
    (tree / "x" / "y").chmod(0o000)
    (tree / "x").chmod(0o100)
    make_removable(tree)
    for d in (tree, tree / "x", tree / "x" / "y"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE(target.stat().st_mode) == 0o500


async def test_destroy_from_another_process(provider: LocalSandboxProvider) -> None:
    """A replica is another process: it can destroy what this one started,
    and this one's Execution sees its command killed."""
    info = await provider.create(SandboxSpec("ses"))
    execution = await provider.exec(info.sandbox_id, ["sleep", "1000"])
    code = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from sessiond.server.sandboxes.local import LocalSandboxProvider\n"
        "asyncio.run(LocalSandboxProvider(Path(sys.argv[1])).destroy(sys.argv[2]))\n"
    )
    replica = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, str(provider.root), info.sandbox_id
    )
    assert await asyncio.wait_for(replica.wait(), timeout=60) == 0
    assert await asyncio.wait_for(execution.wait(), timeout=60) == 128 + signal.SIGKILL
    assert marked(info.sandbox_id) == []
    assert not (provider.root / info.sandbox_id).exists()
