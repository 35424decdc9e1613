"""Workspaces: the server side of snapshot and restore (no grpc here).

Write order is the invariant (restic lineage): a pack object is stored before
its chunks are indexed; a manifest is accepted only when every tree and chunk
it reaches is indexed; a snapshot becomes visible only in the transaction
that checks the caller's lease epoch. A crash anywhere leaves unreferenced
garbage, never a snapshot that points at missing data.

Encryption at rest happens here, between the verified upload and storage
and between storage and the response (:mod:`.sealing`): hydrators send and
receive plain zstd frames and manifests and never see a data key or a
sealed byte.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from sessiond.client import workspace_format as fmt
from sessiond.client.errors import (
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)

from ..storage.blob import BlobStore
from ..storage.metadata import MetadataStore
from ..storage.records import (
    ChunkLocation,
    ManifestRecord,
    NewSnapshot,
    PackRecord,
    SessionRecord,
    SessionState,
    SnapshotRecord,
)
from .chunk_reader import ChunkReader, StoredChunk
from .keyring import KEY_CACHE_SECONDS, Keyring
from .limits import WorkspaceLimits
from .packs import ChunkSpec, check_header, manifest_key, pack_key, seal_pack
from .sealing import KeyUnavailable, Sealer

log = logging.getLogger(__name__)

# Bytes a sealed frame adds (format byte, nonce, tag), for quota reservations.
SEAL_OVERHEAD = 1 + 12 + 16

TRIGGERS = ("manual", "idle", "turn", "shutdown", "watch", "import", "fork", "restore")


@dataclass(frozen=True, slots=True)
class WorkspaceInfo:
    session: SessionRecord
    chunk_key: bytes
    latest: SnapshotRecord | None
    limits: WorkspaceLimits


class Workspaces:
    """``keyring`` seals what is stored; without one, objects are stored
    as-is (format byte 0x00) and sealed ones cannot be read."""

    def __init__(
        self,
        meta: MetadataStore,
        blobs: BlobStore,
        limits: WorkspaceLimits | None = None,
        *,
        pack_slots: int = 4,
        keyring: Keyring | None = None,
    ) -> None:
        self._meta = meta
        self._blobs = blobs
        self.limits = limits or WorkspaceLimits()
        self.reader = ChunkReader(blobs)
        self.keyring = keyring or Keyring(meta.tenants, None, encrypt=False)
        # Cached like data keys (and for as long): a tenant deleted and
        # created again gets a new chunk key, which must not be shadowed.
        self._keys: dict[str, tuple[float, bytes]] = {}
        # A pack is held in memory while it is verified and stored; bound how
        # many are in flight so server memory stays bounded whatever the load.
        self._pack_slots = asyncio.Semaphore(pack_slots)

    async def _chunk_key(self, tenant_id: str) -> bytes:
        now = time.monotonic()
        cached = self._keys.get(tenant_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        key = (await self._meta.tenants.get(tenant_id)).chunk_key
        if len(self._keys) > 10_000:
            self._keys.clear()
        self._keys[tenant_id] = (now + KEY_CACHE_SECONDS, key)
        return key

    async def sealer(self, tenant_id: str, *, refresh: bool = False) -> Sealer:
        """The tenant's :class:`Sealer` (for ``check --read-data`` and other
        readers of stored objects). Errors as :meth:`Keyring.sealer`."""
        return await self.keyring.sealer(tenant_id, refresh=refresh)

    async def open_stored_chunk(
        self, tenant_id: str, location: ChunkLocation, stored: bytes
    ) -> bytes:
        """The plaintext of a chunk from its stored bytes (as :class:`ChunkReader`
        returns them): unsealed, decompressed and checked against its id.
        ``DataLoss`` naming the chunk if any step fails."""
        key = await self._chunk_key(tenant_id)
        frames = await self._open_stored(tenant_id, [StoredChunk(location, stored)])
        return await asyncio.to_thread(
            fmt.open_chunk, key, location.chunk_id, frames[0].frame, location.raw_length
        )

    async def _open_stored(self, tenant_id: str, stored: list[StoredChunk]) -> list[StoredChunk]:
        """``stored`` with each frame unsealed (in a worker thread)."""
        sealer = await self.keyring.sealer(tenant_id)
        try:
            return await asyncio.to_thread(_open_frames, sealer, stored)
        except KeyUnavailable:
            # Sealed by a replica that created the tenant's data key after
            # this one cached the tenant as keyless: look again, once.
            sealer = await self.keyring.sealer(tenant_id, refresh=True)
            return await asyncio.to_thread(_open_frames, sealer, stored)

    async def _live_session(self, tenant_id: str, session_id: str) -> SessionRecord:
        record = await self._meta.sessions.get(tenant_id, session_id)
        if record.state is SessionState.DELETED:
            raise FailedPrecondition(f"session {session_id} is deleted")
        return record

    # -- GetWorkspace --------------------------------------------------------

    async def info(self, tenant_id: str, session_id: str, *, acquire: bool) -> WorkspaceInfo:
        session = await self._live_session(tenant_id, session_id)
        if acquire:
            session = await self._meta.sessions.bump_epoch(tenant_id, session_id)
        latest = None
        if session.latest_snapshot_id:
            latest = await self._meta.snapshots.get(tenant_id, session.latest_snapshot_id)
        return WorkspaceInfo(
            session=session,
            chunk_key=await self._chunk_key(tenant_id),
            latest=latest,
            limits=self.limits,
        )

    # -- MissingChunks -------------------------------------------------------

    async def missing(self, tenant_id: str, session_id: str, ids: Sequence[bytes]) -> list[bytes]:
        self._check_ids(ids)
        await self._live_session(tenant_id, session_id)
        return await self._meta.chunks.missing(tenant_id, ids)

    def _check_ids(self, ids: Sequence[bytes]) -> None:
        if len(ids) > self.limits.max_chunks_per_request:
            raise ResourceExhausted(
                f"{len(ids)} chunk ids, over the limit of {self.limits.max_chunks_per_request}"
            )
        for i, cid in enumerate(ids):
            if len(cid) != fmt.CHUNK_ID_BYTES:
                raise InvalidArgument(f"chunk_ids[{i}] is not a {fmt.CHUNK_ID_BYTES}-byte id")

    # -- PutPack -------------------------------------------------------------

    async def put_pack(
        self,
        tenant_id: str,
        session_id: str,
        chunks: list[ChunkSpec],
        data: AsyncIterator[bytes],
    ) -> tuple[str, int, int]:
        """Verify, store and index one pack. Returns (pack id, chunks newly
        indexed, stored bytes)."""
        total = check_header(chunks, self.limits)
        await self._live_session(tenant_id, session_id)
        # Reserve the stored size (frames + sealing overhead) against the
        # tenant's quota before reading a byte: a refused upload stores nothing.
        reservation = total + SEAL_OVERHEAD * len(chunks)
        await self._meta.quotas.reserve_bytes(tenant_id, reservation)
        try:
            async with self._pack_slots:
                return await self._put_pack(tenant_id, chunks, data, total)
        finally:
            # Indexed packs now count as stored; failed ones never will.
            await self._meta.quotas.release_bytes(tenant_id, reservation)

    async def _put_pack(
        self, tenant_id: str, chunks: list[ChunkSpec], data: AsyncIterator[bytes], total: int
    ) -> tuple[str, int, int]:
        buf = bytearray()
        async for piece in data:
            buf += piece
            if len(buf) > total:
                raise InvalidArgument(f"pack data exceeds the {total} bytes its header announces")
        if len(buf) != total:
            raise InvalidArgument(f"pack data is {len(buf)} bytes, header announces {total}")
        key = await self._chunk_key(tenant_id)
        sealer = await self.keyring.sealer(tenant_id)
        # Verified, then sealed chunk by chunk: nothing unverified is sealed
        # and nothing unsealed is stored. seal_pack empties buf before it
        # copies out the stored form, so about two packs' worth is held.
        sealed = await asyncio.to_thread(seal_pack, key, sealer, chunks, buf)
        del buf
        pid, body, lengths = sealed.pack_id, sealed.data, sealed.lengths
        del sealed
        blob_key = pack_key(tenant_id, pid)
        size = len(body)
        # Data first: the pack object is durable before any index row names it.
        await self._blobs.put(blob_key, body)
        locations = []
        offset = 0
        for c, length in zip(chunks, lengths, strict=True):
            locations.append(
                ChunkLocation(
                    chunk_id=c.chunk_id,
                    pack_id=pid,
                    blob_key=blob_key,
                    offset=offset,
                    length=length,
                    raw_length=c.raw_length,
                    kind=c.kind,
                )
            )
            offset += length
        stored = await self._meta.chunks.add_pack(
            tenant_id, PackRecord(pack_id=pid, blob_key=blob_key, size=size), locations
        )
        # Pack ids are content hashes: a GC that deleted an identical earlier
        # pack (object under its row lock, then the row) between our put and
        # our index commit would leave rows naming a deleted object. Such a GC
        # has finished by now, so one look settles it.
        if not await self._blobs.exists(blob_key):
            await self._blobs.put(blob_key, body)
        del body
        return pid, stored, size

    # -- GetChunks -----------------------------------------------------------

    async def locate(self, tenant_id: str, ids: Sequence[bytes]) -> list[ChunkLocation]:
        found = await self._meta.chunks.lookup(tenant_id, ids)
        out = []
        for cid in ids:
            loc = found.get(cid)
            if loc is None:
                raise DataLoss(f"chunk {cid.hex()[:16]}… is not stored")
            out.append(loc)
        return out

    async def get_chunks(
        self, tenant_id: str, session_id: str, ids: Sequence[bytes]
    ) -> AsyncIterator[list[StoredChunk]]:
        """The chunks' zstd frames (unsealed) in request order, in windows of
        bounded size. ``DataLoss`` if a chunk is not stored, its pack is
        gone, or its stored bytes do not authenticate (naming the chunk)."""
        self._check_ids(ids)
        await self._live_session(tenant_id, session_id)
        locations = await self.locate(tenant_id, ids)
        async for window in self.reader.read_windows(locations):
            yield await self._open_stored(tenant_id, window)

    # -- PutManifest / GetManifest ---------------------------------------------

    async def put_manifest(self, tenant_id: str, session_id: str, data: bytes) -> str:
        if len(data) > self.limits.max_manifest_bytes:
            raise ResourceExhausted(
                f"manifest of {len(data)} bytes, over the limit of {self.limits.max_manifest_bytes}"
            )
        manifest = fmt.parse_manifest(data)
        await self._live_session(tenant_id, session_id)
        key = await self._chunk_key(tenant_id)
        roots = [manifest.root_tree_id]
        if manifest.config_tree_id:
            roots.append(manifest.config_tree_id)
        await self._verify_trees(tenant_id, key, roots)
        mid = fmt.manifest_id(key, data)
        blob_key = manifest_key(tenant_id, mid)
        try:
            # Content-addressed: an object already stored holds this manifest
            # (possibly in the other format, so its size is taken as stored).
            size = (await self._blobs.stat(blob_key)).size
        except NotFound:
            sealer = await self.keyring.sealer(tenant_id)
            stored = sealer.seal_manifest(mid, data)
            await self._blobs.put(blob_key, stored)
            size = len(stored)
        await self._meta.snapshots.put_manifest(
            tenant_id,
            ManifestRecord(
                manifest_id=mid,
                blob_key=blob_key,
                root_tree_id=manifest.root_tree_id,
                config_tree_id=manifest.config_tree_id,
                size=size,
                created_at=await self._meta.now(),
            ),
        )
        # As for packs: a GC may have deleted an identical, unreferenced
        # manifest object between our stat and our row.
        if not await self._blobs.exists(blob_key):
            sealer = await self.keyring.sealer(tenant_id)
            await self._blobs.put(blob_key, sealer.seal_manifest(mid, data))
        return mid

    async def _verify_trees(self, tenant_id: str, key: bytes, roots: list[bytes]) -> None:
        """Every tree reachable from ``roots`` and every chunk it names is
        indexed (``FailedPrecondition`` naming the first missing id). Trees
        already verified are not descended into again, so the cost is
        proportional to what changed."""
        level = list(dict.fromkeys(roots))
        checked: list[bytes] = []
        while level:
            found = await self._meta.chunks.lookup(tenant_id, level)
            todo: list[ChunkLocation] = []
            for tid in level:
                loc = found.get(tid)
                # A chunk GC has marked counts as missing: the snapshot must
                # re-upload it (which un-marks it) or the sweep would take it.
                if loc is None or loc.marked:
                    raise FailedPrecondition(f"manifest references missing tree {tid.hex()[:16]}…")
                if loc.kind != "tree":
                    raise InvalidArgument(f"{tid.hex()[:16]}… is not a tree")
                if not loc.verified:
                    todo.append(loc)
            children: dict[bytes, bool] = {}
            for stored in await self._open_stored(tenant_id, await self.reader.read(todo)):
                loc = stored.location
                plain = await asyncio.to_thread(
                    fmt.open_chunk, key, loc.chunk_id, stored.frame, loc.raw_length
                )
                for node in fmt.parse_tree(plain).nodes:
                    if node.type == fmt.DIR:
                        children[node.subtree_id] = True
                    elif node.type == fmt.FILE:
                        for cid in node.chunk_ids:
                            children.setdefault(cid, False)
                checked.append(loc.chunk_id)
            ids = list(children)
            next_level: list[bytes] = []
            for start in range(0, len(ids), self.limits.max_chunks_per_request):
                batch = ids[start : start + self.limits.max_chunks_per_request]
                present = await self._meta.chunks.lookup(tenant_id, batch)
                for cid in batch:
                    found_loc = present.get(cid)
                    if found_loc is None or found_loc.marked:
                        what = "tree" if children[cid] else "chunk"
                        raise FailedPrecondition(
                            f"manifest references missing {what} {cid.hex()[:16]}…"
                        )
                    if children[cid]:
                        next_level.append(cid)
            level = next_level
        if checked:
            await self._meta.chunks.mark_verified(tenant_id, checked)

    async def get_manifest(
        self, tenant_id: str, session_id: str, *, manifest_id: str = "", snapshot_id: str = ""
    ) -> tuple[str, bytes]:
        await self._meta.sessions.get(tenant_id, session_id)
        if snapshot_id:
            snap = await self._meta.snapshots.get(tenant_id, snapshot_id)
            if snap.session_id != session_id:
                raise NotFound(f"snapshot {snapshot_id} not found")
            manifest_id = snap.manifest_id
        if not manifest_id:
            raise InvalidArgument("manifest_id or snapshot_id is required")
        record = await self._meta.snapshots.get_manifest(tenant_id, manifest_id)
        try:
            stored = await self._blobs.get(record.blob_key)
        except NotFound:
            raise DataLoss(f"manifest {manifest_id} is missing from blob storage") from None
        sealer = await self.keyring.sealer(tenant_id)
        try:
            data = sealer.open_manifest(manifest_id, stored)
        except KeyUnavailable:
            sealer = await self.keyring.sealer(tenant_id, refresh=True)
            data = sealer.open_manifest(manifest_id, stored)
        if fmt.manifest_id(await self._chunk_key(tenant_id), data) != manifest_id:
            raise DataLoss(f"manifest {manifest_id} does not match its id")
        return manifest_id, data

    # -- CommitSnapshot --------------------------------------------------------

    async def commit(
        self,
        tenant_id: str,
        session_id: str,
        *,
        manifest_id: str,
        parent_snapshot_id: str,
        epoch: int,
        trigger: str,
        transcript_uuid: str = "",
        transcript_seq: int = 0,
        file_history_included: bool = False,
        stats: dict[str, Any] | None = None,
        idempotency_key: str = "",
    ) -> SnapshotRecord:
        if not manifest_id:
            raise InvalidArgument("manifest_id is required")
        if trigger not in TRIGGERS:
            raise InvalidArgument(f"unknown snapshot trigger {trigger!r}")
        if transcript_seq < 0:
            raise InvalidArgument("transcript_seq must not be negative")
        if len(idempotency_key) > 128:
            raise InvalidArgument("idempotency_key longer than 128 characters")
        record = await self._meta.snapshots.commit(
            NewSnapshot(
                tenant_id=tenant_id,
                snapshot_id="snap_" + secrets.token_hex(12),
                session_id=session_id,
                parent_snapshot_id=parent_snapshot_id or None,
                manifest_id=manifest_id,
                trigger=trigger,
                transcript_uuid=transcript_uuid or None,
                transcript_seq=transcript_seq,
                file_history_included=file_history_included,
                stats=stats or {},
                idempotency_key=idempotency_key or None,
            ),
            expected_epoch=epoch,
        )
        log.info(
            "snapshot committed tenant=%s session=%s snapshot=%s trigger=%s",
            tenant_id,
            session_id,
            record.snapshot_id,
            trigger,
        )
        return record


def _open_frames(sealer: Sealer, stored: list[StoredChunk]) -> list[StoredChunk]:
    out = []
    for s in stored:
        loc = s.location
        try:
            frame = sealer.open_chunk(loc.chunk_id, s.frame)
        except DataLoss as exc:
            raise DataLoss(f"{exc} [pack {loc.pack_id[:16]}…]") from None
        out.append(StoredChunk(location=loc, frame=frame))
    return out
