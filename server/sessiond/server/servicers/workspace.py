"""WorkspaceService: the hydrator's snapshot/restore API."""

from __future__ import annotations

from collections.abc import AsyncIterator

from grpc.aio import ServicerContext

from sessiond.api.v1 import common_pb2, workspace_pb2, workspace_pb2_grpc
from sessiond.client.errors import Unimplemented


def _not_yet(rpc: str) -> Unimplemented:
    return Unimplemented(f"WorkspaceService.{rpc} is not implemented by this sessiond version yet")


class WorkspaceServicer(workspace_pb2_grpc.WorkspaceServiceServicer):
    async def GetWorkspace(
        self, request: workspace_pb2.GetWorkspaceRequest, context: ServicerContext
    ) -> workspace_pb2.Workspace:
        raise _not_yet("GetWorkspace")

    async def MissingChunks(
        self, request: workspace_pb2.MissingChunksRequest, context: ServicerContext
    ) -> workspace_pb2.MissingChunksResponse:
        raise _not_yet("MissingChunks")

    async def PutPack(
        self,
        request_iterator: AsyncIterator[workspace_pb2.PutPackRequest],
        context: ServicerContext,
    ) -> workspace_pb2.PutPackResponse:
        raise _not_yet("PutPack")

    async def GetChunks(
        self, request: workspace_pb2.GetChunksRequest, context: ServicerContext
    ) -> AsyncIterator[workspace_pb2.GetChunksResponse]:
        raise _not_yet("GetChunks")
        yield workspace_pb2.GetChunksResponse()  # pragma: no cover

    async def PutManifest(
        self, request: workspace_pb2.PutManifestRequest, context: ServicerContext
    ) -> workspace_pb2.PutManifestResponse:
        raise _not_yet("PutManifest")

    async def GetManifest(
        self, request: workspace_pb2.GetManifestRequest, context: ServicerContext
    ) -> workspace_pb2.GetManifestResponse:
        raise _not_yet("GetManifest")

    async def CommitSnapshot(
        self, request: workspace_pb2.CommitSnapshotRequest, context: ServicerContext
    ) -> common_pb2.Snapshot:
        raise _not_yet("CommitSnapshot")
