"""Helpers for the snapshot-side tests: an in-process server on SQLite, a
remote that records (and can fail) calls, a progress that records which
files were read, and a reader that turns a committed snapshot back into a
description of its tree."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sessiond.api.v1 import common_pb2, workspace_pb2
from sessiond.client import AsyncClient
from sessiond.client import workspace_format as wf
from sessiond.hydrator.progress import Progress
from sessiond.hydrator.remote import PendingChunk, WorkspaceRemote
from tests.fixtures.server import RunningServer, run_server


@dataclass
class Env:
    server: RunningServer
    client: AsyncClient
    remote: RecordingRemote
    session_id: str


@asynccontextmanager
async def workspace_env(tmp: Path) -> AsyncIterator[Env]:
    """A server (SQLite + local blobs), a tenant, a session and its remote."""
    async with run_server(tmp / "server", f"sqlite:///{tmp / 'meta.db'}") as server:
        client = await server.client()
        session = await client.create_session()
        remote = RecordingRemote(client, session.session_id)
        yield Env(server, client, remote, session.session_id)


class RecordingRemote(WorkspaceRemote):
    """Records every call (name, detail); ``fail_next[name]`` raises once."""

    def __init__(self, client: AsyncClient, session_id: str) -> None:
        super().__init__(client, session_id)
        self.calls: list[tuple[str, Any]] = []
        self.fail_next: dict[str, Exception] = {}

    def _check(self, name: str) -> None:
        exc = self.fail_next.pop(name, None)
        if exc is not None:
            raise exc

    def reset(self) -> None:
        self.calls.clear()

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def packed(self, kind: int | None = None) -> list[PendingChunk]:
        out = [c for name, chunks in self.calls if name == "put_pack" for c in chunks]
        return [c for c in out if kind is None or c.kind == kind]

    async def workspace(self, *, acquire_lease: bool = False) -> workspace_pb2.Workspace:
        self.calls.append(("workspace", acquire_lease))
        return await super().workspace(acquire_lease=acquire_lease)

    async def missing(self, chunk_ids: Sequence[bytes]) -> set[bytes]:
        self.calls.append(("missing", len(chunk_ids)))
        self._check("missing")
        return await super().missing(chunk_ids)

    async def put_pack(self, chunks: Sequence[PendingChunk]) -> workspace_pb2.PutPackResponse:
        self.calls.append(("put_pack", list(chunks)))
        self._check("put_pack")
        return await super().put_pack(chunks)

    async def put_manifest(self, manifest: bytes) -> str:
        self.calls.append(("put_manifest", manifest))
        self._check("put_manifest")
        return await super().put_manifest(manifest)

    async def commit(self, request: workspace_pb2.CommitSnapshotRequest) -> common_pb2.Snapshot:
        self.calls.append(("commit", request.idempotency_key))
        self._check("commit")
        return await super().commit(request)


@dataclass
class RecordingProgress(Progress):
    read: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    def file_read(self, relpath: bytes, nbytes: int) -> None:
        self.read.append(relpath)
        super().file_read(relpath, nbytes)


async def read_tree(remote: WorkspaceRemote, key: bytes, tree_id: bytes) -> dict[bytes, tuple]:
    """relpath → ("file", mode, content) | ("dir", mode) | ("link", target)."""
    out: dict[bytes, tuple] = {}

    async def fetch(ids: list[bytes]) -> list[bytes]:
        got = []
        async for chunk in remote.get_chunks(ids):
            got.append(wf.open_chunk(key, chunk.chunk_id, chunk.data, chunk.raw_length))
        return got

    async def walk(tid: bytes, prefix: bytes) -> None:
        (data,) = await fetch([tid])
        for node in wf.parse_tree(data).nodes:
            rel = prefix + node.name
            if node.type == wf.DIR:
                out[rel] = ("dir", node.mode)
                await walk(node.subtree_id, rel + b"/")
            elif node.type == wf.SYMLINK:
                out[rel] = ("link", node.link_target)
            else:
                content = b"".join(await fetch(list(node.chunk_ids))) if node.chunk_ids else b""
                assert len(content) == node.size
                out[rel] = ("file", node.mode, content)

    await walk(tree_id, b"")
    return out


async def read_snapshot(
    remote: WorkspaceRemote, snap: common_pb2.Snapshot
) -> tuple[Any, dict[bytes, tuple], dict[bytes, tuple]]:
    """(manifest, workspace tree, config tree) of a committed snapshot."""
    ws = await remote.workspace()
    resp = await remote.get_manifest(snapshot_id=snap.snapshot_id)
    manifest = wf.parse_manifest(resp.manifest)
    root = await read_tree(remote, ws.chunk_key, manifest.root_tree_id)
    config = (
        await read_tree(remote, ws.chunk_key, manifest.config_tree_id)
        if manifest.config_tree_id
        else {}
    )
    return manifest, root, config


def describe(root: Path) -> dict[bytes, tuple]:
    """The same description of a directory on disk (nothing followed;
    ``.sessiond`` left out)."""
    out: dict[bytes, tuple] = {}
    base = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(base):
        if dirpath == base and b".sessiond" in dirnames:
            dirnames.remove(b".sessiond")
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, base)
            st = os.lstat(path)
            if os.path.islink(path):
                out[rel] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                out[rel] = ("dir", wf.node_mode(st.st_mode))
            elif os.path.isfile(path):
                with open(path, "rb") as f:
                    out[rel] = ("file", wf.node_mode(st.st_mode), f.read())
    return out


def make_workspace(root: Path) -> None:
    """A small tree with the awkward cases."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text("hello\n")
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "pkg" / "mod.py").write_text("x = 1\n" * 100)
    (root / "src" / "main.py").write_text("print('hi')\n")
    (root / "empty").write_bytes(b"")
    (root / "big.bin").write_bytes(os.urandom(3 << 20))
    os.symlink("src/main.py", root / "rel-link")
    os.symlink("/etc/passwd", root / "abs-link")
    os.symlink("../../outside", root / "src" / "escape")
    os.symlink("does-not-exist", root / "dangling")
    os.mkdir(root / "emptydir")
    odd = os.fsencode(root) + b"/caf\xe9-\xff.txt"  # not UTF-8
    with open(odd, "wb") as f:
        f.write(b"latin-1 name\n")
    (root / "script.sh").write_text("#!/bin/sh\n")
    os.chmod(root / "script.sh", 0o4755)  # setuid: must be stripped
