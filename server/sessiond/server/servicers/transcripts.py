"""TranscriptService: the SDK SessionStore protocol over gRPC (thin)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from grpc.aio import ServicerContext

from sessiond.api.v1 import transcripts_pb2, transcripts_pb2_grpc

from ..core.transcripts import Transcripts, validate_key
from ..identity import current_identity, log_field
from ..metrics import ServerMetrics
from ..storage.records import TranscriptKey

# Load responses are cut at about this many bytes so that a transcript of any
# size streams in bounded messages.
LOAD_RESPONSE_BYTES = 1 << 20


def _key(key: transcripts_pb2.SessionKey) -> TranscriptKey:
    log_field("project", key.project_key[:60])
    log_field("session", key.session_id[:60])
    current_identity().check_transcript(key.session_id)
    return validate_key(key.project_key, key.session_id, key.subpath)


class TranscriptServicer(transcripts_pb2_grpc.TranscriptServiceServicer):
    def __init__(self, transcripts: Transcripts, metrics: ServerMetrics | None = None) -> None:
        self._t = transcripts
        self._metrics = metrics or ServerMetrics()

    async def Append(
        self, request: transcripts_pb2.AppendRequest, context: ServicerContext
    ) -> transcripts_pb2.AppendResponse:
        ident = current_identity()
        key = _key(request.key)
        result = await self._t.append(ident.tenant_id, key, request.entries)
        size = result.bytes
        log_field("entries", len(request.entries))
        log_field("duplicates", result.duplicates)
        log_field("bytes", size)
        self._metrics.add_bytes("in", "transcript", size)
        return transcripts_pb2.AppendResponse(
            appended=result.appended, duplicates=result.duplicates, mtime=result.mtime_ms
        )

    async def Load(
        self, request: transcripts_pb2.LoadRequest, context: ServicerContext
    ) -> AsyncIterator[transcripts_pb2.LoadResponse]:
        ident = current_identity()
        key = _key(request.key)
        batch: list[str] = []
        size = 0
        total = 0
        async for page in self._t.load(ident.tenant_id, key):
            for entry in page:
                batch.append(entry)
                size += len(entry)
                if size >= LOAD_RESPONSE_BYTES:
                    yield transcripts_pb2.LoadResponse(entries=batch)
                    total += len(batch)
                    batch, size = [], 0
        if batch:
            total += len(batch)
            yield transcripts_pb2.LoadResponse(entries=batch)
        log_field("entries", total)

    async def ListSessions(
        self, request: transcripts_pb2.ListTranscriptSessionsRequest, context: ServicerContext
    ) -> transcripts_pb2.ListTranscriptSessionsResponse:
        ident = current_identity()
        found = await self._t.list_sessions(ident.tenant_id, request.project_key)
        if ident.kind == "sandbox":
            found = [s for s in found if s.session_id == ident.sdk_session_id]
        return transcripts_pb2.ListTranscriptSessionsResponse(
            sessions=[
                transcripts_pb2.TranscriptSessionInfo(session_id=s.session_id, mtime=s.mtime_ms)
                for s in found
            ]
        )

    async def ListSessionSummaries(
        self, request: transcripts_pb2.ListSessionSummariesRequest, context: ServicerContext
    ) -> transcripts_pb2.ListSessionSummariesResponse:
        ident = current_identity()
        found = await self._t.list_summaries(ident.tenant_id, request.project_key)
        if ident.kind == "sandbox":
            found = [s for s in found if s.session_id == ident.sdk_session_id]
        return transcripts_pb2.ListSessionSummariesResponse(
            summaries=[
                transcripts_pb2.SessionSummary(
                    session_id=s.session_id, mtime=s.mtime_ms, data=json.dumps(s.data)
                )
                for s in found
            ]
        )

    async def Delete(
        self, request: transcripts_pb2.DeleteTranscriptRequest, context: ServicerContext
    ) -> transcripts_pb2.DeleteTranscriptResponse:
        await self._t.delete(current_identity().tenant_id, _key(request.key))
        return transcripts_pb2.DeleteTranscriptResponse()

    async def ListSubkeys(
        self, request: transcripts_pb2.ListSubkeysRequest, context: ServicerContext
    ) -> transcripts_pb2.ListSubkeysResponse:
        ident = current_identity()
        ident.check_transcript(request.session_id)
        subpaths = await self._t.list_subkeys(
            ident.tenant_id, request.project_key, request.session_id
        )
        return transcripts_pb2.ListSubkeysResponse(subpaths=subpaths)
