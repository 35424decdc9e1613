"""Building snapshot trees by hand for the restore tests (no snapshot side,
no server): an in-memory chunk store, node constructors, and a reader that
describes a directory without following anything."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sessiond.api.v1 import common_pb2, format_pb2, workspace_pb2
from sessiond.client import workspace_format as wf

KEY = bytes(range(32))


@dataclass
class MemoryStore:
    """Chunks by id, as (zstd frame, raw length); ``source`` is a ChunkSource."""

    key: bytes = KEY
    chunks: dict[bytes, tuple[bytes, int]] = field(default_factory=dict)
    requests: list[list[bytes]] = field(default_factory=list)

    def put(self, data: bytes) -> bytes:
        cid = wf.chunk_id(self.key, data)
        self.chunks[cid] = (wf.compress(data), len(data))
        return cid

    def tree(self, nodes: Sequence[format_pb2.Node]) -> bytes:
        """A well-formed tree (sorted)."""
        return self.put(wf.serialize_tree(nodes))

    def raw_tree(self, nodes: Sequence[format_pb2.Node]) -> bytes:
        """A tree exactly as given: unsorted, duplicate, anything."""
        return self.put(format_pb2.Tree(nodes=list(nodes)).SerializeToString())

    async def source(self, ids: Sequence[bytes]) -> list[tuple[bytes, int]]:
        self.requests.append(list(ids))
        return [self.chunks[i] for i in ids]

    def file(
        self,
        name: bytes,
        data: bytes,
        *,
        mode: int = 0o644,
        mtime_ns: int = 1_600_000_000_123_456_789,
        chunk_size: int = 1 << 20,
    ) -> format_pb2.Node:
        ids = [self.put(data[i : i + chunk_size]) for i in range(0, len(data), chunk_size)]
        return format_pb2.Node(
            name=name, type=wf.FILE, mode=mode, mtime_ns=mtime_ns, size=len(data), chunk_ids=ids
        )

    def dir(
        self,
        name: bytes,
        children: Sequence[format_pb2.Node],
        *,
        mode: int = 0o755,
        mtime_ns: int = 1_500_000_000_000_000_000,
    ) -> format_pb2.Node:
        return format_pb2.Node(
            name=name, type=wf.DIR, mode=mode, mtime_ns=mtime_ns, subtree_id=self.tree(children)
        )


def link(name: bytes, target: bytes, mtime_ns: int = 1_400_000_000_000_000_000) -> format_pb2.Node:
    return format_pb2.Node(name=name, type=wf.SYMLINK, link_target=target, mtime_ns=mtime_ns)


def describe(root: Path) -> dict[bytes, tuple[object, ...]]:
    """relpath → (kind, mode, mtime_ns, content or link target), nothing followed."""
    out: dict[bytes, tuple[object, ...]] = {}
    base = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(base):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, base)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path), st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            else:
                with open(path, "rb") as f:
                    out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, f.read())
    return out


def snapshot_of(root: Path) -> dict[bytes, tuple[object, ...]]:
    """describe() plus the root's own mode and mtime: "untouched" means equal."""
    st = os.lstat(root)
    return {b".": ("root", st.st_mode, st.st_mtime_ns, st.st_ino), **describe(root)}


class FakeRemote:
    """The WorkspaceRemote calls restore() makes, served from a MemoryStore
    (for the hostile corpus: no server would ever hand these out)."""

    session_id = "sess-1"

    def __init__(
        self,
        store: MemoryStore,
        manifest: format_pb2.Manifest | None,
        *,
        limits: workspace_pb2.WorkspaceLimits | None = None,
        manifest_bytes: bytes | None = None,
        manifest_id: str | None = None,
    ) -> None:
        self.store = store
        self.epoch = 0
        self.limits = limits or workspace_pb2.WorkspaceLimits()
        self.manifest = manifest_bytes or (
            manifest.SerializeToString(deterministic=True) if manifest else b""
        )
        self.manifest_id = manifest_id or wf.manifest_id(store.key, self.manifest)
        self.has_snapshot = manifest is not None or manifest_bytes is not None

    async def workspace(self, *, acquire_lease: bool = False) -> workspace_pb2.Workspace:
        self.epoch += acquire_lease
        ws = workspace_pb2.Workspace(
            session_id=self.session_id,
            chunk_key=self.store.key,
            lease_epoch=self.epoch,
            limits=self.limits,
            sdk_session_id="sdk-1",
        )
        if self.has_snapshot:
            ws.latest_snapshot.CopyFrom(
                common_pb2.Snapshot(snapshot_id="snap-1", manifest_id=self.manifest_id)
            )
        return ws

    async def get_manifest(
        self, *, snapshot_id: str = "", manifest_id: str = ""
    ) -> workspace_pb2.GetManifestResponse:
        return workspace_pb2.GetManifestResponse(
            manifest_id=self.manifest_id, manifest=self.manifest
        )

    async def get_chunks(self, chunk_ids: Sequence[bytes]) -> AsyncIterator[workspace_pb2.Chunk]:
        for frame, raw in await self.store.source(chunk_ids):
            yield workspace_pb2.Chunk(chunk_id=chunk_ids[0], data=frame, raw_length=raw)
            chunk_ids = chunk_ids[1:]


def manifest_for(
    root_id: bytes,
    *,
    config_tree_id: bytes = b"",
    source_cwd: bytes = b"/old/work",
    sdk_session_id: str = "",
    project_key: str = "",
) -> format_pb2.Manifest:
    return format_pb2.Manifest(
        version=wf.FORMAT_VERSION,
        root_tree_id=root_id,
        config_tree_id=config_tree_id,
        source_cwd=source_cwd,
        sdk_session_id=sdk_session_id,
        project_key=project_key,
    )


def tree_from_dir(store: MemoryStore, path: Path, *, skip: frozenset[bytes] = frozenset()) -> bytes:
    """A tree of a real directory (a stand-in for the snapshot side)."""
    nodes = []
    with os.scandir(os.fsencode(path)) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        if e.name in skip:
            continue
        st = e.stat(follow_symlinks=False)
        if e.is_symlink():
            nodes.append(link(e.name, os.readlink(e.path), mtime_ns=st.st_mtime_ns))
        elif e.is_dir(follow_symlinks=False):
            sub = tree_from_dir(store, Path(os.fsdecode(e.path)))
            nodes.append(
                format_pb2.Node(
                    name=e.name,
                    type=wf.DIR,
                    mode=wf.node_mode(st.st_mode),
                    mtime_ns=st.st_mtime_ns,
                    subtree_id=sub,
                )
            )
        else:
            with open(e.path, "rb") as f:
                data = f.read()
            nodes.append(
                store.file(e.name, data, mode=wf.node_mode(st.st_mode), mtime_ns=st.st_mtime_ns)
            )
    return store.tree(nodes)


def config_tree(store: MemoryStore, files: dict[str, bytes | Path]) -> bytes:
    """A config tree from {"projects/k/sid.jsonl": bytes or a real file, …}
    (strings ending in "@link:<target>" make symlinks)."""
    spec: dict[str, object] = {}
    for rel, content in files.items():
        parts = rel.split("/")
        d = spec
        for p in parts[:-1]:
            d = d.setdefault(p, {})  # type: ignore[assignment]
        d[parts[-1]] = content
    return _config_nodes(store, spec)


def _config_nodes(store: MemoryStore, spec: dict[str, object]) -> bytes:
    nodes = []
    for name, v in spec.items():
        if isinstance(v, dict):
            nodes.append(
                format_pb2.Node(
                    name=name.encode(), type=wf.DIR, mode=0o700, subtree_id=_config_nodes(store, v)
                )
            )
        elif isinstance(v, bytes) and v.startswith(b"@link:"):
            nodes.append(link(name.encode(), v[6:]))
        else:
            data = v.read_bytes() if isinstance(v, Path) else v
            nodes.append(store.file(name.encode(), data, mode=0o600))  # type: ignore[arg-type]
    return store.tree(nodes)
