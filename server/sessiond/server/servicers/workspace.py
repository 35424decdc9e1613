"""WorkspaceService: the hydrator's snapshot/restore API (thin)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from grpc.aio import ServicerContext

from sessiond.api.v1 import common_pb2, workspace_pb2, workspace_pb2_grpc
from sessiond.client.errors import InvalidArgument, PermissionDenied

from .. import validation
from ..core.packs import KINDS, ChunkSpec
from ..core.workspace import Workspaces
from ..faults import crash_point
from ..identity import Identity, current_identity, log_field
from ..metrics import ServerMetrics
from .convert import message_to_dict, snapshot_to_pb

# GetChunks responses are cut at about this many bytes.
RESPONSE_BYTES = 4 << 20

_TRIGGERS = {
    common_pb2.SNAPSHOT_TRIGGER_MANUAL: "manual",
    common_pb2.SNAPSHOT_TRIGGER_IDLE: "idle",
    common_pb2.SNAPSHOT_TRIGGER_TURN: "turn",
    common_pb2.SNAPSHOT_TRIGGER_SHUTDOWN: "shutdown",
    common_pb2.SNAPSHOT_TRIGGER_WATCH: "watch",
    common_pb2.SNAPSHOT_TRIGGER_IMPORT: "import",
}


def _scope(session_id: str) -> Identity:
    validation.session_id(session_id)
    ident = current_identity()
    ident.check_session(session_id)
    log_field("session", session_id)
    return ident


class WorkspaceServicer(workspace_pb2_grpc.WorkspaceServiceServicer):
    def __init__(self, workspaces: Workspaces, metrics: ServerMetrics | None = None) -> None:
        self._w = workspaces
        self._metrics = metrics or ServerMetrics()

    async def GetWorkspace(
        self, request: workspace_pb2.GetWorkspaceRequest, context: ServicerContext
    ) -> workspace_pb2.Workspace:
        ident = _scope(request.session_id)
        info = await self._w.info(
            ident.tenant_id, request.session_id, acquire=request.acquire_lease
        )
        limits = info.limits
        resp = workspace_pb2.Workspace(
            session_id=info.session.session_id,
            chunk_key=info.chunk_key,
            lease_epoch=info.session.epoch,
            sdk_session_id=info.session.sdk_session_id or "",
            limits=workspace_pb2.WorkspaceLimits(
                max_pack_bytes=limits.max_pack_bytes,
                max_chunk_bytes=limits.max_chunk_bytes,
                max_files=limits.max_files,
                max_total_bytes=limits.max_total_bytes,
                max_name_bytes=limits.max_name_bytes,
                max_depth=limits.max_depth,
                max_chunks_per_request=limits.max_chunks_per_request,
            ),
        )
        if info.latest is not None:
            resp.latest_snapshot.CopyFrom(snapshot_to_pb(info.latest))
        return resp

    async def MissingChunks(
        self, request: workspace_pb2.MissingChunksRequest, context: ServicerContext
    ) -> workspace_pb2.MissingChunksResponse:
        ident = _scope(request.session_id)
        missing = await self._w.missing(ident.tenant_id, request.session_id, request.chunk_ids)
        log_field("asked", len(request.chunk_ids))
        log_field("missing", len(missing))
        return workspace_pb2.MissingChunksResponse(missing=missing)

    async def PutPack(
        self,
        request_iterator: AsyncIterator[workspace_pb2.PutPackRequest],
        context: ServicerContext,
    ) -> workspace_pb2.PutPackResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("header"):
            raise InvalidArgument("PutPack must start with a header")
        header = first.header
        ident = _scope(header.session_id)
        chunks = []
        for i, c in enumerate(header.chunks):
            kind = KINDS.get(c.kind)
            if kind is None:
                raise InvalidArgument(f"chunks[{i}] has no valid kind")
            chunks.append(
                ChunkSpec(chunk_id=c.chunk_id, kind=kind, length=c.length, raw_length=c.raw_length)
            )

        received = 0

        async def data() -> AsyncIterator[bytes]:
            nonlocal received
            async for req in request_iterator:
                if req.HasField("header"):
                    raise InvalidArgument("PutPack carries exactly one header")
                received += len(req.data)
                yield req.data

        pid, stored, size = await self._w.put_pack(
            ident.tenant_id, header.session_id, chunks, data()
        )
        log_field("pack", pid[:16])
        log_field("bytes", size)
        self._metrics.add_bytes("in", "pack", received)
        return workspace_pb2.PutPackResponse(pack_id=pid, stored=stored)

    async def GetChunks(
        self, request: workspace_pb2.GetChunksRequest, context: ServicerContext
    ) -> AsyncIterator[workspace_pb2.GetChunksResponse]:
        ident = _scope(request.session_id)
        sent = 0
        batch: list[workspace_pb2.Chunk] = []
        size = 0
        async for window in self._w.get_chunks(
            ident.tenant_id, request.session_id, request.chunk_ids
        ):
            for stored in window:
                batch.append(
                    workspace_pb2.Chunk(
                        chunk_id=stored.location.chunk_id,
                        data=stored.frame,
                        raw_length=stored.location.raw_length,
                    )
                )
                size += len(stored.frame)
                if size >= RESPONSE_BYTES:
                    yield workspace_pb2.GetChunksResponse(chunks=batch)
                    sent += size
                    batch, size = [], 0
        if batch:
            sent += size
            yield workspace_pb2.GetChunksResponse(chunks=batch)
        log_field("chunks", len(request.chunk_ids))
        log_field("bytes", sent)
        self._metrics.add_bytes("out", "chunks", sent)

    async def PutManifest(
        self, request: workspace_pb2.PutManifestRequest, context: ServicerContext
    ) -> workspace_pb2.PutManifestResponse:
        ident = _scope(request.session_id)
        mid = await self._w.put_manifest(ident.tenant_id, request.session_id, request.manifest)
        log_field("manifest", mid[:16])
        return workspace_pb2.PutManifestResponse(manifest_id=mid)

    async def GetManifest(
        self, request: workspace_pb2.GetManifestRequest, context: ServicerContext
    ) -> workspace_pb2.GetManifestResponse:
        ident = _scope(request.session_id)
        if ident.kind == "sandbox" and not request.snapshot_id:
            # Manifests are indexed per tenant, not per session: by id, a
            # sandbox could read another session's tree. By snapshot, the
            # snapshot must belong to the token's session.
            raise PermissionDenied("sandbox tokens read manifests by snapshot_id")
        mid, data = await self._w.get_manifest(
            ident.tenant_id,
            request.session_id,
            manifest_id=request.manifest_id,
            snapshot_id=request.snapshot_id,
        )
        return workspace_pb2.GetManifestResponse(manifest_id=mid, manifest=data)

    async def CommitSnapshot(
        self, request: workspace_pb2.CommitSnapshotRequest, context: ServicerContext
    ) -> common_pb2.Snapshot:
        ident = _scope(request.session_id)
        trigger = _TRIGGERS.get(request.trigger)
        if trigger is None:
            raise InvalidArgument("trigger is required")
        record = await self._w.commit(
            ident.tenant_id,
            request.session_id,
            manifest_id=request.manifest_id,
            parent_snapshot_id=request.parent_snapshot_id,
            epoch=request.lease_epoch,
            trigger=trigger,
            transcript_uuid=request.transcript_uuid,
            transcript_seq=request.transcript_seq,
            file_history_included=request.file_history_included,
            stats=message_to_dict(request.stats),
            idempotency_key=request.idempotency_key,
        )
        crash_point("after-commit-before-reply")
        log_field("snapshot", record.snapshot_id)
        self._metrics.observe_commit(record.stats)
        return snapshot_to_pb(record)
