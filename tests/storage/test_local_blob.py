"""LocalBlobStore behaviour beyond the shared contract: the on-disk layout,
temporary files, symlinks planted in the store, and limits of a file system."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sessiond.client.errors import InvalidArgument, NotFound, Unavailable
from sessiond.server.storage.local_blob import LocalBlobStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LocalBlobStore]:
    root = tmp_path / "root"
    root.mkdir()
    s = LocalBlobStore(root)
    try:
        yield s
    finally:
        await s.close()


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


async def test_layout_and_permissions(store: LocalBlobStore) -> None:
    await store.put("packs/ab/cd", b"data")
    path = store.root / "packs" / "ab" / "cd"
    assert path.read_bytes() == b"data"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert files(store.root) == ["packs/ab/cd"]  # no temporary file left


async def test_crash_leftover_temp_files_are_invisible(store: LocalBlobStore) -> None:
    await store.put("d/k", b"x")
    (store.root / "d" / ".~0123456789abcdef.tmp").write_bytes(b"half-written")
    assert [i.key async for i in store.list()] == ["d/k"]


async def test_put_stream_cancelled_leaves_no_temp_file(store: LocalBlobStore) -> None:
    started = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield b"x" * (2 << 20)
        started.set()
        await asyncio.sleep(3600)
        yield b"never"

    task = asyncio.create_task(store.put_stream("k", slow()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert files(store.root) == []


async def test_symlinked_directory_is_not_followed(store: LocalBlobStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"not yours")
    (store.root / "evil").symlink_to(outside)
    with pytest.raises(Unavailable, match="symlink"):
        await store.get("evil/secret")
    with pytest.raises(Unavailable, match="symlink"):
        await store.put("evil/new", b"x")
    assert sorted(os.listdir(outside)) == ["secret"]
    assert [i.key async for i in store.list()] == []
    with pytest.raises(Unavailable, match="symlink"):
        await store.delete("evil/secret")
    assert (outside / "secret").exists()


async def test_symlinked_file_is_not_followed(store: LocalBlobStore, tmp_path: Path) -> None:
    (tmp_path / "target").write_bytes(b"outside")
    (store.root / "link").symlink_to(tmp_path / "target")
    with pytest.raises(Unavailable, match="symlink"):
        await store.get("link")
    # Replacing the key replaces the link itself, never the file it points at.
    await store.put("link", b"inside")
    assert (tmp_path / "target").read_bytes() == b"outside"
    assert await store.get("link") == b"inside"


async def test_key_and_its_prefix_cannot_coexist(store: LocalBlobStore) -> None:
    await store.put("a", b"1")
    with pytest.raises(InvalidArgument, match="conflicts"):
        await store.put("a/b", b"2")
    await store.put("c/d", b"3")
    with pytest.raises(InvalidArgument, match="conflicts"):
        await store.put("c", b"4")
    with pytest.raises(InvalidArgument, match="conflicts"):
        await store.put("c", b"4", if_absent=True)
    with pytest.raises(NotFound):
        await store.get("c")


async def test_overlong_component_is_invalid(store: LocalBlobStore) -> None:
    with pytest.raises(InvalidArgument, match="too long"):
        await store.put("x" * 300, b"1")


async def test_missing_root_is_unavailable(tmp_path: Path) -> None:
    s = LocalBlobStore(tmp_path / "gone")
    try:
        with pytest.raises(Unavailable, match="root"):
            await s.get("k")
        with pytest.raises(Unavailable, match="root"):
            await s.ping()
    finally:
        await s.close()
