"""DockerSandboxProvider without a Docker engine: configuration, error
translation when the engine is unreachable, and the shell snippets the
provider runs inside containers — executed here with the host's ``/bin/sh``
against real processes. Behaviour against an engine is the contract suite."""

from __future__ import annotations

import io
import os
import secrets
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from sessiond.client.errors import InvalidArgument, NotFound, Unavailable
from sessiond.server.sandboxes import docker as docker_provider
from sessiond.server.sandboxes.docker import DockerSandboxProvider
from sessiond.server.sandboxes.provider import SandboxProvider, SandboxSpec
from sessiond.server.sandboxes.registry import open_sandbox_provider

SOME_ID = "sbx-" + "1" * 24


def test_registry_docker(tmp_path: Path) -> None:
    provider = open_sandbox_provider("docker", data_dir=tmp_path)
    assert isinstance(provider, DockerSandboxProvider) and isinstance(provider, SandboxProvider)
    assert provider.image == "sessiond-sandbox"
    provider = open_sandbox_provider(
        "docker:registry.example:5000/team/img:v1?network=n&mem_limit=2g"
        "&nano_cpus=1000000000&pids_limit=512",
        data_dir=tmp_path,
        server_address="host.docker.internal:50051",
    )
    assert isinstance(provider, DockerSandboxProvider)
    assert provider.image == "registry.example:5000/team/img:v1"


@pytest.mark.parametrize(
    "url", ["docker?pids_limit=lots", "docker?privileged=1", "docker:img?nano_cpus=-5"]
)
def test_registry_docker_bad_options(tmp_path: Path, url: str) -> None:
    with pytest.raises(InvalidArgument):
        open_sandbox_provider(url, data_dir=tmp_path)


@pytest.fixture
def unreachable() -> Iterator[DockerSandboxProvider]:
    client = docker.DockerClient(base_url="unix:///nonexistent/docker.sock", version="1.44")
    yield DockerSandboxProvider(client=client)
    client.close()  # a client passed in stays the caller's to close


async def test_unreachable_engine_is_unavailable(unreachable: DockerSandboxProvider) -> None:
    with pytest.raises(Unavailable):
        await unreachable.create(SandboxSpec("ses"))
    with pytest.raises(Unavailable):
        await unreachable.describe(SOME_ID)
    with pytest.raises(Unavailable):
        await unreachable.exec(SOME_ID, ["true"])
    with pytest.raises(Unavailable):
        await unreachable.get_file(SOME_ID, "/workspace/f")
    with pytest.raises(Unavailable):
        await unreachable.destroy(SOME_ID)
    await unreachable.close()


async def test_default_client_unreachable_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    provider = DockerSandboxProvider()  # connects nothing yet
    with pytest.raises(Unavailable):
        await provider.describe(SOME_ID)
    await provider.close()


async def test_arguments_are_checked_before_the_engine(
    unreachable: DockerSandboxProvider,
) -> None:
    # Only sessiond sandboxes are reachable: ids of other containers are NotFound.
    for bad_id in ("my-database", "../x", ""):
        with pytest.raises(NotFound):
            await unreachable.describe(bad_id)
    for path in ("relative", "/workspace/../etc/passwd", "/a\0b"):
        with pytest.raises(InvalidArgument):
            await unreachable.get_file(SOME_ID, path)
        with pytest.raises(InvalidArgument):
            await unreachable.put_file(SOME_ID, path, b"")
    with pytest.raises(InvalidArgument):
        await unreachable.put_file(SOME_ID, "/workspace/f", b"", mode=0o4755)
    with pytest.raises(InvalidArgument):
        await unreachable.exec(SOME_ID, [])
    with pytest.raises(InvalidArgument):
        await unreachable.exec(SOME_ID, ["true"], cwd="workspace")
    with pytest.raises(InvalidArgument):
        await unreachable.create(SandboxSpec("ses", env={"BAD=NAME": "v"}))


def test_tar_of_one_file() -> None:
    data = os.urandom(100_000)
    raw = docker_provider._tar_one("f.bin", data, 0o640)
    with tarfile.open(fileobj=io.BytesIO(raw)) as archive:
        member = archive.next()
        assert member is not None and archive.next() is None
        assert (member.name, member.isreg(), member.size, member.mode) == (
            "f.bin",
            True,
            len(data),
            0o640,
        )
        content = archive.extractfile(member)
        assert content is not None and content.read() == data


# -- the shell snippets, run for real --------------------------------------------


def sh(
    script: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["sh", "-c", script, *args], capture_output=True, env=env, timeout=60)


def test_stdin_wrapper(tmp_path: Path) -> None:
    stdin = tmp_path / "stdin"
    stdin.write_bytes(b"line one\n\0binary\xff")
    done = sh(docker_provider._STDIN_WRAPPER, str(stdin), "cat")
    assert (done.returncode, done.stdout) == (0, stdin.read_bytes())
    # argv reaches the command untouched: no word splitting, no expansion.
    args = ["a b", "$HOME", "'q'", '"d"', "*", ""]
    done = sh(docker_provider._STDIN_WRAPPER, str(stdin), "printf", "[%s]", *args)
    assert done.stdout.decode() == "".join(f"[{a}]" for a in args)
    assert sh(docker_provider._STDIN_WRAPPER, str(tmp_path / "missing"), "cat").returncode == 126
    assert sh(docker_provider._STDIN_WRAPPER, str(stdin), "no-such-cmd-sessiond").returncode == 127


@pytest.fixture
def marked_sleepers() -> Iterator[tuple[str, dict[str, subprocess.Popen[bytes]]]]:
    """Sleepers with markers under a random prefix (so a host-wide kill by
    pattern cannot touch anybody else's processes) and one without."""
    prefix = secrets.token_hex(6)
    procs = {}
    for name, marker in (("one", f"{prefix}01"), ("two", f"{prefix}02"), ("bare", "")):
        env = {"PATH": os.environ["PATH"]}
        if marker:
            env[docker_provider.MARK_EXEC] = marker
        procs[name] = subprocess.Popen(["sleep", "1000"], env=env, start_new_session=True)
    yield prefix, procs
    for proc in procs.values():
        proc.kill()
        proc.wait()


def test_kill_script(marked_sleepers: tuple[str, dict[str, subprocess.Popen[bytes]]]) -> None:
    prefix, procs = marked_sleepers
    mark = docker_provider.MARK_EXEC
    assert sh(docker_provider._KILL_SCRIPT, "sh", f"{mark}={prefix}01").returncode == 0
    assert procs["one"].wait(timeout=30) == -9
    assert procs["two"].poll() is None and procs["bare"].poll() is None
    # kill_all's pattern: any marker (here: any under our prefix).
    assert sh(docker_provider._KILL_SCRIPT, "sh", f"{mark}={prefix}[0-9a-f]*").returncode == 0
    assert procs["two"].wait(timeout=30) == -9
    assert procs["bare"].poll() is None


def test_put_file_parent_script(tmp_path: Path) -> None:
    parent = tmp_path / "a b" / "c"
    done = sh('mkdir -p -- "$1" && id -u && id -g', "sh", str(parent))
    assert done.returncode == 0 and parent.is_dir()
    assert [int(x) for x in done.stdout.split()] == [os.getuid(), os.getgid()]
