"""LocalSandboxProvider: put_file/get_file/cwd never leave the sandbox.

The agent runs arbitrary code: anything under the workdir may be a symlink
or a FIFO it planted. Paths must not reach the provider's own files, another
sandbox, or the host.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sessiond.client.errors import InvalidArgument, NotFound
from sessiond.server.sandboxes.local import LocalSandboxProvider
from sessiond.server.sandboxes.provider import SandboxInfo, SandboxSpec, run


@pytest.fixture
async def provider(tmp_path: Path) -> AsyncIterator[LocalSandboxProvider]:
    p = LocalSandboxProvider(tmp_path / "root")
    yield p
    await p.close()


@pytest.fixture
async def sandbox(provider: LocalSandboxProvider) -> SandboxInfo:
    return await provider.create(SandboxSpec("ses"))


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    d = tmp_path / "outside"
    d.mkdir()
    (d / "secret").write_bytes(b"host secret")
    return d


async def test_symlinked_directory_is_refused(
    provider: LocalSandboxProvider, sandbox: SandboxInfo, outside: Path
) -> None:
    work = Path(sandbox.workdir)
    (work / "link").symlink_to(outside)
    with pytest.raises(InvalidArgument):
        await provider.get_file(sandbox.sandbox_id, f"{work}/link/secret")
    with pytest.raises(InvalidArgument):
        await provider.put_file(sandbox.sandbox_id, f"{work}/link/planted", b"x")
    with pytest.raises(InvalidArgument):
        await provider.put_file(sandbox.sandbox_id, f"{work}/link/new/dir/planted", b"x")
    assert sorted(os.listdir(outside)) == ["secret"]
    # Even a symlink that stays inside the sandbox is refused: no following at all.
    (work / "real").mkdir()
    (work / "inner").symlink_to(work / "real")
    with pytest.raises(InvalidArgument):
        await provider.put_file(sandbox.sandbox_id, f"{work}/inner/f", b"x")


async def test_symlinked_file_is_refused_and_replaced_not_followed(
    provider: LocalSandboxProvider, sandbox: SandboxInfo, outside: Path
) -> None:
    work = Path(sandbox.workdir)
    (work / "f").symlink_to(outside / "secret")
    with pytest.raises(InvalidArgument):
        await provider.get_file(sandbox.sandbox_id, f"{work}/f")
    # put_file replaces the link itself; the target is untouched.
    await provider.put_file(sandbox.sandbox_id, f"{work}/f", b"mine")
    assert not (work / "f").is_symlink()
    assert (work / "f").read_bytes() == b"mine"
    assert (outside / "secret").read_bytes() == b"host secret"


async def test_fifo_does_not_hang_get_file(
    provider: LocalSandboxProvider, sandbox: SandboxInfo
) -> None:
    os.mkfifo(Path(sandbox.workdir) / "pipe")
    with pytest.raises(InvalidArgument):
        await asyncio.wait_for(
            provider.get_file(sandbox.sandbox_id, f"{sandbox.workdir}/pipe"), timeout=30
        )


async def test_directories_are_not_files(
    provider: LocalSandboxProvider, sandbox: SandboxInfo
) -> None:
    await provider.put_file(sandbox.sandbox_id, f"{sandbox.workdir}/d/f", b"x")
    with pytest.raises(InvalidArgument):
        await provider.get_file(sandbox.sandbox_id, f"{sandbox.workdir}/d")
    with pytest.raises(InvalidArgument):
        await provider.put_file(sandbox.sandbox_id, f"{sandbox.workdir}/d", b"x")
    with pytest.raises(InvalidArgument):
        await provider.get_file(sandbox.sandbox_id, sandbox.workdir)
    # A file where a parent directory should be.
    with pytest.raises(InvalidArgument):
        await provider.put_file(sandbox.sandbox_id, f"{sandbox.workdir}/d/f/g", b"x")
    with pytest.raises(NotFound):
        await provider.get_file(sandbox.sandbox_id, f"{sandbox.workdir}/d/f/g")


async def test_provider_files_and_other_places_are_out_of_reach(
    provider: LocalSandboxProvider, sandbox: SandboxInfo, outside: Path
) -> None:
    other = await provider.create(SandboxSpec("other"))
    await provider.put_file(other.sandbox_id, f"{other.workdir}/theirs", b"t")
    base = provider.root / sandbox.sandbox_id
    for path in (
        f"{base}/sandbox.json",  # holds the env: credentials
        f"{base}/pgids",
        str(base),
        f"{base}/elsewhere/f",
        f"{other.workdir}/theirs",
        str(outside / "secret"),
        "/etc/passwd",
        f"{sandbox.workdir}//./../work/x",
    ):
        with pytest.raises(InvalidArgument):
            await provider.get_file(sandbox.sandbox_id, path)
        with pytest.raises(InvalidArgument):
            await provider.put_file(sandbox.sandbox_id, path, b"x")
    assert (outside / "secret").read_bytes() == b"host secret"


async def test_all_four_areas_are_writable(
    provider: LocalSandboxProvider, sandbox: SandboxInfo
) -> None:
    base = provider.root / sandbox.sandbox_id
    for area in ("work", "config", "tmp", "home"):
        path = f"{base}/{area}/x/y"
        await provider.put_file(sandbox.sandbox_id, path, area.encode(), mode=0o600)
        assert await provider.get_file(sandbox.sandbox_id, path) == area.encode()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    # Redundant slashes and "." components are fine.
    assert await provider.get_file(sandbox.sandbox_id, f"{base}//work/./x/y") == b"work"


async def test_bad_modes_and_ids(provider: LocalSandboxProvider, sandbox: SandboxInfo) -> None:
    for mode in (0o4755, -1, 0o1000):
        with pytest.raises(InvalidArgument):
            await provider.put_file(sandbox.sandbox_id, f"{sandbox.workdir}/f", b"", mode=mode)
    for bad_id in ("../../etc", "sbx-XYZ", "", sandbox.sandbox_id + "/.."):
        with pytest.raises(NotFound):
            await provider.get_file(bad_id, f"{sandbox.workdir}/f")
        with pytest.raises(NotFound):
            await provider.describe(bad_id)
        with pytest.raises(NotFound):
            await provider.exec(bad_id, ["true"])
        await provider.destroy(bad_id)  # nothing to do, nothing raised


async def test_cwd_must_stay_inside(
    provider: LocalSandboxProvider, sandbox: SandboxInfo, outside: Path
) -> None:
    (Path(sandbox.workdir) / "link").symlink_to(outside)
    for cwd in (str(outside), "/", f"{sandbox.workdir}/link", str(provider.root)):
        with pytest.raises(InvalidArgument):
            await provider.exec(sandbox.sandbox_id, ["true"], cwd=cwd)
    code, out, _ = await run(provider, sandbox.sandbox_id, ["pwd"])
    assert (code, out.decode().strip()) == (0, sandbox.workdir)
