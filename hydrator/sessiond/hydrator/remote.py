"""The hydrator's view of the server: WorkspaceService calls, typed.

All methods raise the sessiond error tree (never grpc types).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from sessiond.api.v1 import common_pb2, workspace_pb2
from sessiond.client import AsyncClient
from sessiond.client._channel import call, stream

# Bytes of pack data per PutPack message.
PACK_MESSAGE_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class PendingChunk:
    """A compressed chunk ready to go into a pack."""

    chunk_id: bytes
    kind: workspace_pb2.ChunkKind  # CHUNK_KIND_DATA or CHUNK_KIND_TREE
    frame: bytes
    raw_length: int


class WorkspaceRemote:
    """WorkspaceService for one session, over an :class:`AsyncClient`."""

    def __init__(self, client: AsyncClient, session_id: str) -> None:
        self._client = client
        self._stub = client.workspace
        self._md = client.metadata
        self.session_id = session_id

    async def workspace(self, *, acquire_lease: bool = False) -> workspace_pb2.Workspace:
        return await call(
            self._stub.GetWorkspace,
            workspace_pb2.GetWorkspaceRequest(
                session_id=self.session_id, acquire_lease=acquire_lease
            ),
            metadata=self._md,
        )

    async def missing(self, chunk_ids: Sequence[bytes]) -> set[bytes]:
        resp = await call(
            self._stub.MissingChunks,
            workspace_pb2.MissingChunksRequest(
                session_id=self.session_id, chunk_ids=list(chunk_ids)
            ),
            metadata=self._md,
        )
        return set(resp.missing)

    async def put_pack(self, chunks: Sequence[PendingChunk]) -> workspace_pb2.PutPackResponse:
        header = workspace_pb2.PackHeader(session_id=self.session_id)
        add = header.chunks.add  # (twice as fast as building PackChunks apart)
        for c in chunks:
            add(chunk_id=c.chunk_id, kind=c.kind, length=len(c.frame), raw_length=c.raw_length)

        async def requests() -> AsyncIterator[workspace_pb2.PutPackRequest]:
            yield workspace_pb2.PutPackRequest(header=header)
            # Messages of PACK_MESSAGE_BYTES cut across frames, built as they
            # are sent (no copy of the whole pack).
            parts: list[bytes] = []
            room = PACK_MESSAGE_BYTES
            for c in chunks:
                frame, off = c.frame, 0
                while off < len(frame):
                    take = min(len(frame) - off, room)
                    parts.append(frame if take == len(frame) else frame[off : off + take])
                    off += take
                    room -= take
                    if not room:
                        yield workspace_pb2.PutPackRequest(data=b"".join(parts))
                        parts, room = [], PACK_MESSAGE_BYTES
            if parts:
                yield workspace_pb2.PutPackRequest(data=b"".join(parts))

        return await call(self._stub.PutPack, requests(), metadata=self._md)

    async def get_chunks(self, chunk_ids: Sequence[bytes]) -> AsyncIterator[workspace_pb2.Chunk]:
        """Stored frames in request order (verify them with
        ``workspace_format.open_chunk``)."""
        responses = self._stub.GetChunks(
            workspace_pb2.GetChunksRequest(session_id=self.session_id, chunk_ids=list(chunk_ids)),
            metadata=self._md,
        )
        async for resp in stream(responses):
            for chunk in resp.chunks:
                yield chunk

    async def put_manifest(self, manifest: bytes) -> str:
        resp = await call(
            self._stub.PutManifest,
            workspace_pb2.PutManifestRequest(session_id=self.session_id, manifest=manifest),
            metadata=self._md,
        )
        return str(resp.manifest_id)

    async def get_manifest(
        self, *, snapshot_id: str = "", manifest_id: str = ""
    ) -> workspace_pb2.GetManifestResponse:
        req = workspace_pb2.GetManifestRequest(session_id=self.session_id)
        if snapshot_id:
            req.snapshot_id = snapshot_id
        else:
            req.manifest_id = manifest_id
        return await call(self._stub.GetManifest, req, metadata=self._md)

    async def commit(self, request: workspace_pb2.CommitSnapshotRequest) -> common_pb2.Snapshot:
        request.session_id = self.session_id
        return await call(self._stub.CommitSnapshot, request, metadata=self._md)
