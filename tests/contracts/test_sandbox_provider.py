"""The SandboxProvider contract, run against every provider.

Adding a provider = adding a ``sandbox_provider`` fixture parameter and a
``<name>_provider`` fixture (plus ``<name>_provider_replica``: a second,
independent instance on the same backend, standing for another server
replica). Every test here checks a promise of
``sessiond.server.sandboxes.provider``; provider-specific behaviour lives in
``tests/sandboxes/``.

* ``local`` always runs.
* ``docker`` skips when no Docker engine answers (a plain skip: a machine
  without Docker is a normal configuration), builds the image if missing.
* ``e2b`` uses ``e2b_provider`` / ``e2b_provider_replica`` from
  ``tests/fixtures/e2b.py`` (a provider bound to the local fake); skips while
  those fixtures do not exist.

Commands are real processes; no test asserts on timing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from sessiond.client.errors import InvalidArgument, NotFound
from sessiond.server.sandboxes.docker import DockerSandboxProvider
from sessiond.server.sandboxes.local import LocalSandboxProvider
from sessiond.server.sandboxes.provider import (
    ExecEvent,
    SandboxInfo,
    SandboxProvider,
    SandboxSpec,
    run,
)
from tests.helpers import assert_eventually
from tests.sandboxes import SPAWN_GRANDCHILD, collect, docker_sandbox_image, pid_state

MiB = 1 << 20
NewSandbox = Callable[..., Awaitable[SandboxInfo]]
# A well-formed id that no provider ever handed out.
NEVER_CREATED = "sbx-" + "0" * 24

# -- providers ------------------------------------------------------------------


@pytest.fixture
async def local_provider(tmp_path: Path) -> AsyncIterator[SandboxProvider]:
    provider = LocalSandboxProvider(tmp_path / "sandboxes")
    yield provider
    await provider.close()


@pytest.fixture
async def local_provider_replica(tmp_path: Path) -> AsyncIterator[SandboxProvider]:
    provider = LocalSandboxProvider(tmp_path / "sandboxes")
    yield provider
    await provider.close()


@pytest.fixture(scope="session")
def docker_image() -> str:
    return docker_sandbox_image()


@pytest.fixture
async def docker_provider(docker_image: str) -> AsyncIterator[SandboxProvider]:
    provider = DockerSandboxProvider(docker_image)
    yield provider
    await provider.close()


@pytest.fixture
async def docker_provider_replica(docker_image: str) -> AsyncIterator[SandboxProvider]:
    provider = DockerSandboxProvider(docker_image)
    yield provider
    await provider.close()


@pytest.fixture(params=["local", "e2b", "docker"])
def sandbox_provider(request: pytest.FixtureRequest) -> SandboxProvider:
    name = f"{request.param}_provider"
    try:
        provider = request.getfixturevalue(name)
    except pytest.FixtureLookupError:
        pytest.skip(f"{request.param}: no {name} fixture yet (expected in tests/fixtures/)")
    assert isinstance(provider, SandboxProvider)
    return provider


@pytest.fixture
def sandbox_replica(
    request: pytest.FixtureRequest, sandbox_provider: SandboxProvider
) -> SandboxProvider:
    """Another instance of the same provider on the same backend."""
    name = f"{request.node.callspec.params['sandbox_provider']}_provider_replica"
    try:
        replica = request.getfixturevalue(name)
    except pytest.FixtureLookupError:
        pytest.skip(f"no {name} fixture: cannot act as a second replica")
    assert isinstance(replica, SandboxProvider) and replica is not sandbox_provider
    return replica


@pytest.fixture
async def new_sandbox(sandbox_provider: SandboxProvider) -> AsyncIterator[NewSandbox]:
    """``await new_sandbox(**env)``: a sandbox destroyed after the test."""
    made: list[str] = []

    async def make(**env: str) -> SandboxInfo:
        spec = SandboxSpec(session_id=f"ses-{uuid.uuid4().hex[:12]}", env=env)
        info = await sandbox_provider.create(spec)
        made.append(info.sandbox_id)
        return info

    yield make
    for sandbox_id in made:
        await sandbox_provider.destroy(sandbox_id)


async def python(
    provider: SandboxProvider,
    sandbox_id: str,
    code: str,
    *args: str,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
) -> tuple[int, bytes, bytes]:
    return await run(provider, sandbox_id, ["python3", "-c", code, *args], env=env, stdin=stdin)


async def listdir(provider: SandboxProvider, sandbox_id: str, path: str) -> list[str]:
    code, out, err = await python(
        provider, sandbox_id, "import json,os,sys; print(json.dumps(os.listdir(sys.argv[1])))", path
    )
    assert code == 0, err
    return sorted(json.loads(out))


# -- create / describe ------------------------------------------------------------


async def test_create_gives_empty_separate_sandboxes(
    sandbox_provider: SandboxProvider, new_sandbox: NewSandbox
) -> None:
    a = await new_sandbox()
    await sandbox_provider.put_file(a.sandbox_id, f"{a.workdir}/only-in-a.txt", b"a")
    b = await new_sandbox()
    assert a.sandbox_id != b.sandbox_id
    for info in (a, b):
        assert info.provider == sandbox_provider.name
        assert info.workdir.startswith("/") and info.config_dir.startswith("/")
        assert info.state == "running"
    assert await listdir(sandbox_provider, b.sandbox_id, b.workdir) == []
    assert await listdir(sandbox_provider, b.sandbox_id, b.config_dir) == []
    assert await listdir(sandbox_provider, a.sandbox_id, a.workdir) == ["only-in-a.txt"]
    with pytest.raises((NotFound, InvalidArgument)):
        await sandbox_provider.get_file(b.sandbox_id, f"{a.workdir}/only-in-a.txt")


async def test_describe(sandbox_provider: SandboxProvider, new_sandbox: NewSandbox) -> None:
    info = await new_sandbox()
    described = await sandbox_provider.describe(info.sandbox_id)
    assert (described.sandbox_id, described.workdir, described.config_dir) == (
        info.sandbox_id,
        info.workdir,
        info.config_dir,
    )
    assert described.state == "running"
    with pytest.raises(NotFound):
        await sandbox_provider.describe(NEVER_CREATED)


# -- exec -------------------------------------------------------------------------

STREAMER = """
import os, sys, time
print("ready", flush=True)
deadline = time.monotonic() + 120
while not os.path.exists("go"):
    if time.monotonic() > deadline:
        sys.exit(9)
    time.sleep(0.01)
for i in range(1000):
    print(f"line {i}", file=sys.stdout if i % 2 == 0 else sys.stderr, flush=True)
    if i % 100 == 0:
        time.sleep(0.01)
"""


async def test_output_streams_incrementally_in_order(
    sandbox_provider: SandboxProvider, new_sandbox: NewSandbox
) -> None:
    info = await new_sandbox()
    execution = await sandbox_provider.exec(info.sandbox_id, ["python3", "-c", STREAMER])
    events = execution.events()
    # The command blocks until "go" exists, which we create only after the
    # first event arrived: a provider that buffers until exit fails here.
    first = await asyncio.wait_for(anext(events), timeout=120)
    assert first == ExecEvent("stdout", b"ready\n")
    await sandbox_provider.put_file(info.sandbox_id, f"{info.workdir}/go", b"")
    out, err = bytearray(first.data), bytearray()
    async for event in events:
        (out if event.stream == "stdout" else err).extend(event.data)
    assert await execution.wait() == 0
    assert out.decode() == "ready\n" + "".join(f"line {i}\n" for i in range(0, 1000, 2))
    assert err.decode() == "".join(f"line {i}\n" for i in range(1, 1000, 2))


@pytest.mark.parametrize("code", [0, 3, 255])
async def test_exit_code(
    sandbox_provider: SandboxProvider, new_sandbox: NewSandbox, code: int
) -> None:
    info = await new_sandbox()
    got, out, err = await python(
        sandbox_provider, info.sandbox_id, f"import sys; print('bye'); sys.exit({code})"
    )
    assert (got, out, err) == (code, b"bye\n", b"")


async def test_command_not_found_is_exit_127(
    sandbox_provider: SandboxProvider, new_sandbox: NewSandbox
) -> None:
    info = await new_sandbox()
    code, _, _ = await run(sandbox_provider, info.sandbox_id, ["no-such-command-sessiond"])
    assert code == 127


async def test_env(
    sandbox_provider: SandboxProvider, new_sandbox: NewSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Server-side secrets must never leak into a sandbox.
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "server-secret")
    monkeypatch.setenv("SESSIOND_DATABASE_URL", "postgresql://u:server-secret@db/x")
    info = await new_sandbox(FROM_SPEC="spec", OVERRIDDEN="spec")
    code, out, err = await python(
        sandbox_provider,
        info.sandbox_id,
        "import json, os; print(json.dumps(dict(os.environ)))",
        env={"FROM_CALL": "call", "OVERRIDDEN": "call"},
    )
    assert code == 0, err
    env = json.loads(out)
    assert env["FROM_SPEC"] == "spec"
    assert env["FROM_CALL"] == "call"
    assert env["OVERRIDDEN"] == "call"
    assert env["CLAUDE_CONFIG_DIR"] == info.config_dir
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert "SESSIOND_DATABASE_URL" not in env
    assert not any("server-secret" in value for value in env.values())
    # Per-call env is per call.
    code, out, _ = await python(
        sandbox_provider, info.sandbox_id, "import json, os; print(json.dumps(dict(os.environ)))"
    )
    assert "FROM_CALL" not in json.loads(out)


async def test_stdin_is_delivered_then_closed(
    sandbox_provider: SandboxProvider, new_sandbox: NewSandbox
) -> None:
    info = await new_sandbox()
    data = random.Random(1).randbytes(300 * 1024)  # more than a pipe buffer
    code, out, err = await python(
        sandbox_provider,
        info.sandbox_id,
        "import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())",
        stdin=data,
    )
    assert (code, out.decode().strip(), err) == (0, hashlib.sha256(data).hexdigest(), b"")
    # No stdin: the command reads end-of-file at once rather than hanging.
    assert await run(sandbox_provider, info.sandbox_id, ["cat"]) == (0, b"", b"")
    assert await run(sandbox_provider, info.sandbox_id, ["cat"], stdin=b"") == (0, b"", b"")


async def test_cwd(sandbox_provider: SandboxProvider, new_sandbox: NewSandbox) -> None:
    info = await new_sandbox()
    code, out, _ = await python(sandbox_provider, info.sandbox_id, "import os; print(os.getcwd())")
    assert (code, out.decode().strip()) == (0, info.workdir)
    await sandbox_provider.put_file(info.sandbox_id, f"{info.workdir}/sub/dir/f", b"")
    execution = await sandbox_provider.exec(
        info.sandbox_id,
        ["python3", "-c", "import os; print(os.getcwd())"],
        cwd=f"{info.workdir}/sub/dir",
    )
    code, out, _ = await collect(execution)
    assert (code, out.decode().strip()) == (0, f"{info.workdir}/sub/dir")
    for bad in (f"{info.workdir}/missing", f"{info.workdir}/sub/dir/f", "sub", ""):
        with pytest.raises(InvalidArgument):
            await sandbox_provider.exec(info.sandbox_id, ["true"], cwd=bad)
    with pytest.raises(InvalidArgument):
        await sandbox_provider.exec(info.sandbox_id, [])


async def test_kill_kills_children(
    sandbox_provider: SandboxProvider, new_sandbox: NewSandbox
) -> None:
    info = await new_sandbox()
    execution = await sandbox_provider.exec(info.sandbox_id, ["python3", "-c", SPAWN_GRANDCHILD])
    events = execution.events()
    first = await asyncio.wait_for(anext(events), timeout=60)
    grandchild = int(first.data.decode().split()[0])
    assert await pid_state(sandbox_provider, info.sandbox_id, grandchild) == "alive"

    await execution.kill()
    async for _ in events:
        pass
    assert await execution.wait() == 128 + 9  # SIGKILL

    async def grandchild_gone() -> None:
        assert await pid_state(sandbox_provider, info.sandbox_id, grandchild) == "gone"

    await assert_eventually(grandchild_gone, timeout=30)
    await execution.kill()  # idempotent


async def test_kill_all_stops_every_command_and_keeps_files(
    sandbox_provider: SandboxProvider, new_sandbox: NewSandbox
) -> None:
    info = await new_sandbox()
    await sandbox_provider.put_file(info.sandbox_id, f"{info.workdir}/kept", b"kept")
    executions, grandchildren = [], []
    for _ in range(2):
        execution = await sandbox_provider.exec(
            info.sandbox_id, ["python3", "-c", SPAWN_GRANDCHILD]
        )
        first = await asyncio.wait_for(anext(execution.events()), timeout=60)
        executions.append(execution)
        grandchildren.append(int(first.data.decode().split()[0]))

    await sandbox_provider.kill_all(info.sandbox_id)

    for execution in executions:
        assert await asyncio.wait_for(execution.wait(), timeout=60) == 128 + 9

    async def all_gone() -> None:
        for pid in grandchildren:
            assert await pid_state(sandbox_provider, info.sandbox_id, pid) == "gone"

    await assert_eventually(all_gone, timeout=30)
    # The sandbox lives on, files and all.
    assert await sandbox_provider.get_file(info.sandbox_id, f"{info.workdir}/kept") == b"kept"
    assert await run(sandbox_provider, info.sandbox_id, ["true"]) == (0, b"", b"")
    with pytest.raises(NotFound):
        await sandbox_provider.kill_all(NEVER_CREATED)


# -- files ------------------------------------------------------------------------


async def test_put_get_round_trip(
    sandbox_provider: SandboxProvider, new_sandbox: NewSandbox
) -> None:
    info = await new_sandbox()
    data = random.Random(2).randbytes(5 * MiB)
    path = f"{info.workdir}/deep/er/blob.bin"
    await sandbox_provider.put_file(info.sandbox_id, path, data, mode=0o755)
    assert await sandbox_provider.get_file(info.sandbox_id, path) == data
    code, out, err = await python(
        sandbox_provider,
        info.sandbox_id,
        "import hashlib, os, sys\n"
        "p = sys.argv[1]\n"
        "print(oct(os.stat(p).st_mode & 0o777), hashlib.sha256(open(p, 'rb').read()).hexdigest())\n"
        "open(p, 'ab').write(b'!')\n",  # the agent may modify what it was given
        path,
    )
    assert code == 0, err
    assert out.decode().split() == ["0o755", hashlib.sha256(data).hexdigest()]
    assert await sandbox_provider.get_file(info.sandbox_id, path) == data + b"!"
    # Overwrite (shorter), and an empty file in the config dir.
    await sandbox_provider.put_file(info.sandbox_id, path, b"short")
    assert await sandbox_provider.get_file(info.sandbox_id, path) == b"short"
    await sandbox_provider.put_file(info.sandbox_id, f"{info.config_dir}/empty", b"")
    assert await sandbox_provider.get_file(info.sandbox_id, f"{info.config_dir}/empty") == b""


async def test_get_missing_file_is_not_found(
    sandbox_provider: SandboxProvider, new_sandbox: NewSandbox
) -> None:
    info = await new_sandbox()
    with pytest.raises(NotFound):
        await sandbox_provider.get_file(info.sandbox_id, f"{info.workdir}/missing")
    with pytest.raises(NotFound):
        await sandbox_provider.get_file(info.sandbox_id, f"{info.workdir}/no/such/dir/f")
    with pytest.raises(NotFound):
        await sandbox_provider.get_file(NEVER_CREATED, f"{info.workdir}/missing")


async def test_path_escapes_are_invalid(
    sandbox_provider: SandboxProvider, new_sandbox: NewSandbox
) -> None:
    info = await new_sandbox()
    await sandbox_provider.put_file(info.sandbox_id, f"{info.workdir}/a/f", b"x")
    bad = [
        f"{info.workdir}/../../../../etc/passwd",
        f"{info.workdir}/a/../a/f",
        "a/f",
        "",
        f"{info.workdir}/a/f\0",
    ]
    for path in bad:
        with pytest.raises(InvalidArgument):
            await sandbox_provider.get_file(info.sandbox_id, path)
        with pytest.raises(InvalidArgument):
            await sandbox_provider.put_file(info.sandbox_id, path, b"evil")
    assert await sandbox_provider.get_file(info.sandbox_id, f"{info.workdir}/a/f") == b"x"


# -- destroy ----------------------------------------------------------------------


async def test_destroy_kills_commands_and_forgets_the_sandbox(
    sandbox_provider: SandboxProvider, new_sandbox: NewSandbox
) -> None:
    info = await new_sandbox()
    execution = await sandbox_provider.exec(info.sandbox_id, ["python3", "-c", SPAWN_GRANDCHILD])
    await asyncio.wait_for(anext(execution.events()), timeout=60)

    await sandbox_provider.destroy(info.sandbox_id)

    assert await asyncio.wait_for(execution.wait(), timeout=60) != 0
    with pytest.raises(NotFound):
        await sandbox_provider.describe(info.sandbox_id)
    with pytest.raises(NotFound):
        await sandbox_provider.exec(info.sandbox_id, ["true"])
    with pytest.raises(NotFound):
        await sandbox_provider.get_file(info.sandbox_id, f"{info.workdir}/f")
    with pytest.raises(NotFound):
        await sandbox_provider.put_file(info.sandbox_id, f"{info.workdir}/f", b"x")
    await sandbox_provider.destroy(info.sandbox_id)  # idempotent
    await sandbox_provider.destroy(NEVER_CREATED)


async def test_another_replica_can_use_and_destroy_a_sandbox(
    sandbox_provider: SandboxProvider, sandbox_replica: SandboxProvider, new_sandbox: NewSandbox
) -> None:
    info = await new_sandbox(FROM_SPEC="spec")
    execution = await sandbox_provider.exec(info.sandbox_id, ["python3", "-c", SPAWN_GRANDCHILD])
    first = await asyncio.wait_for(anext(execution.events()), timeout=60)
    grandchild = int(first.data.decode().split()[0])

    described = await sandbox_replica.describe(info.sandbox_id)
    assert (described.workdir, described.config_dir) == (info.workdir, info.config_dir)
    code, out, _ = await python(
        sandbox_replica, info.sandbox_id, "import os; print(os.environ['FROM_SPEC'])"
    )
    assert (code, out) == (0, b"spec\n")
    await sandbox_replica.put_file(info.sandbox_id, f"{info.workdir}/from-replica", b"r")
    assert await sandbox_provider.get_file(info.sandbox_id, f"{info.workdir}/from-replica") == b"r"
    assert await pid_state(sandbox_replica, info.sandbox_id, grandchild) == "alive"

    # A replica taking over the session stops the turn the first one left running.
    await sandbox_replica.kill_all(info.sandbox_id)
    assert await asyncio.wait_for(execution.wait(), timeout=60) == 128 + 9

    # The replica's destroy kills what the first one started.
    execution = await sandbox_provider.exec(info.sandbox_id, ["python3", "-c", SPAWN_GRANDCHILD])
    await asyncio.wait_for(anext(execution.events()), timeout=60)
    await sandbox_replica.destroy(info.sandbox_id)
    assert await asyncio.wait_for(execution.wait(), timeout=60) != 0
    with pytest.raises(NotFound):
        await sandbox_provider.describe(info.sandbox_id)
    with pytest.raises(NotFound):
        await sandbox_provider.exec(info.sandbox_id, ["true"])
