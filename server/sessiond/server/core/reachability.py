"""Walking a tenant's trees into a reachable set (:class:`GcReach`), shared
by GC (which must know *everything* a root reaches, so any tree it cannot
read stops it) and ``check`` (which reports the tree and walks on).

Trees are read in windows of stored bytes through the workspace's chunk
reader and opened — unsealed, decompressed, re-hashed — with
:meth:`Workspaces.open_stored_chunk`, exactly as PutManifest reads them.
Memory: one window of trees (``WINDOW_BYTES``) and the ids they name; the
set itself lives in the database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from sessiond.client import workspace_format as fmt
from sessiond.client.errors import DataLoss, InvalidArgument, NotFound

from ..storage.metadata import GcReach, MetadataStore
from ..storage.records import ChunkLocation
from .chunk_reader import StoredChunk
from .workspace import Workspaces

#: Trees handed out per round.
TREES_PER_ROUND = 256
#: Stored bytes of trees held at once.
WINDOW_BYTES = 8 << 20

#: Called for a tree that cannot be walked: (tree id, its location if it is
#: indexed, what is wrong).
OnDamage = Callable[[bytes, ChunkLocation | None, str], Awaitable[None]]


class Unwalkable(DataLoss):
    """A reachable tree could not be read, so what it reaches is unknown."""


@dataclass
class WalkStats:
    trees: int = 0
    tree_bytes: int = 0


async def walk(
    meta: MetadataStore,
    workspaces: Workspaces,
    tenant_id: str,
    reach: GcReach,
    *,
    on_damage: OnDamage | None = None,
    check_alive: Callable[[], None] = lambda: None,
) -> WalkStats:
    """Expand every tree in ``reach`` (its roots added by the caller) until
    the set is closed. A tree that is not indexed, whose pack cannot be read,
    or that does not open or parse goes to ``on_damage``; without one,
    :class:`Unwalkable` is raised. ``check_alive`` runs between rounds (GC
    raises there once its lease is lost)."""
    stats = WalkStats()

    async def damaged(tid: bytes, loc: ChunkLocation | None, why: str) -> None:
        if on_damage is None:
            raise Unwalkable(f"tenant {tenant_id}: tree {tid.hex()[:16]}… {why}")
        await on_damage(tid, loc, why)

    while trees := await reach.next_trees(TREES_PER_ROUND):
        check_alive()
        found = await meta.chunks.lookup(tenant_id, trees)
        locs: list[ChunkLocation] = []
        for tid in trees:
            loc = found.get(tid)
            if loc is None:
                await damaged(tid, None, "is not in the chunk index")
            elif loc.kind != "tree":
                await damaged(tid, loc, "is indexed as a data chunk, not a tree")
            else:
                locs.append(loc)
        async for window in _read(workspaces, locs):
            for item in window:
                loc = item.location
                if isinstance(item, ReadFailure):
                    await damaged(loc.chunk_id, loc, item.why)
                    continue
                try:
                    plain = await workspaces.open_stored_chunk(tenant_id, loc, item.frame)
                    tree = fmt.parse_tree(plain)
                except (DataLoss, InvalidArgument) as exc:
                    await damaged(loc.chunk_id, loc, f"does not open: {exc}")
                    continue
                stats.trees += 1
                stats.tree_bytes += loc.length
                children: list[tuple[bytes, bool]] = []
                for node in tree.nodes:
                    if node.type == fmt.DIR:
                        children.append((bytes(node.subtree_id), True))
                    elif node.type == fmt.FILE:
                        children.extend((bytes(c), False) for c in node.chunk_ids)
                if children:
                    await reach.add(children, parent=loc.chunk_id)
    return stats


@dataclass(frozen=True, slots=True)
class ReadFailure:
    """A chunk whose stored bytes could not be fetched, and why."""

    location: ChunkLocation
    why: str


async def _read(
    workspaces: Workspaces, locs: list[ChunkLocation]
) -> AsyncIterator[list[StoredChunk | ReadFailure]]:
    """Windows of stored frames; a window whose read fails (a pack gone or
    short) is retried chunk by chunk so the failure names each chunk."""
    window: list[ChunkLocation] = []
    size = 0
    for loc in locs:
        window.append(loc)
        size += loc.length
        if size >= WINDOW_BYTES:
            yield await read_each(workspaces, window)
            window, size = [], 0
    if window:
        yield await read_each(workspaces, window)


async def read_each(
    workspaces: Workspaces, locs: list[ChunkLocation]
) -> list[StoredChunk | ReadFailure]:
    """The stored frames of ``locs`` (one coalesced read when it works);
    a chunk whose bytes cannot be fetched comes back as a failure naming why."""
    try:
        return list(await workspaces.reader.read(locs))
    except (DataLoss, NotFound):
        pass
    out: list[StoredChunk | ReadFailure] = []
    for loc in locs:
        try:
            out.extend(await workspaces.reader.read([loc]))
        except (DataLoss, NotFound) as exc:
            out.append(ReadFailure(loc, f"cannot be read from pack {loc.pack_id[:16]}…: {exc}"))
    return out
