"""AsyncClient: the typed asyncio client of a sessiond server.

Every method raises errors from :mod:`sessiond.client.errors` (never grpc
types) and returns the API's protobuf messages (``sessiond.api.v1``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType

import grpc

from sessiond.api.v1 import (
    common_pb2,
    sessions_pb2,
    sessions_pb2_grpc,
    transcripts_pb2,
    transcripts_pb2_grpc,
    workspace_pb2_grpc,
)

from ._channel import DEFAULT_MAX_MESSAGE_BYTES, aio_channel, auth_metadata, call, stream


class AsyncClient:
    """A connection to one sessiond server.

    ``target`` is ``host:port``. ``token`` is a tenant API key or a sandbox
    token, sent as ``authorization: Bearer``. Use as an async context manager
    or call :meth:`close`.

    TLS: ``tls=True`` (implied by any PEM argument) verifies the server
    against ``root_certificates`` (PEM; None = the system roots);
    ``client_cert`` + ``client_key`` (PEM) authenticate this client to a
    server that requires client certificates (mTLS).

    ``idempotency_key`` on mutating calls: the same key with the same request
    returns the first call's result (within 24 hours); the same key with a
    different request is ``InvalidArgument``.
    """

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        client_cert: bytes | None = None,
        client_key: bytes | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        timeout: float | None = 60.0,
    ) -> None:
        self.target = target
        self._channel = aio_channel(
            target,
            tls=tls,
            root_certificates=root_certificates,
            client_cert=client_cert,
            client_key=client_key,
            max_message_bytes=max_message_bytes,
        )
        self._md = auth_metadata(token)
        self._timeout = timeout
        self.sessions = sessions_pb2_grpc.SessionServiceStub(self._channel)
        self.transcripts = transcripts_pb2_grpc.TranscriptServiceStub(self._channel)
        self.workspace = workspace_pb2_grpc.WorkspaceServiceStub(self._channel)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return self._md

    @property
    def channel(self) -> grpc.aio.Channel:
        return self._channel

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- health --------------------------------------------------------------

    async def health(self, service: str = "") -> str:
        """The server's health status name (``SERVING``, ``NOT_SERVING``…)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self._channel)
        resp = await call(
            stub.Check, health_pb2.HealthCheckRequest(service=service), timeout=self._timeout
        )
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))

    # -- sessions ------------------------------------------------------------

    async def create_session(
        self,
        *,
        session_id: str = "",
        labels: Mapping[str, str] | None = None,
        agent_options: common_pb2.AgentOptions | None = None,
        snapshot_policy: common_pb2.SnapshotPolicy | None = None,
        idempotency_key: str = "",
    ) -> common_pb2.Session:
        req = sessions_pb2.CreateSessionRequest(
            session_id=session_id,
            labels=dict(labels or {}),
            agent_options=agent_options,
            snapshot_policy=snapshot_policy,
            idempotency_key=idempotency_key,
        )
        return await call(
            self.sessions.CreateSession, req, metadata=self._md, timeout=self._timeout
        )

    async def get_session(self, session_id: str) -> common_pb2.Session:
        return await call(
            self.sessions.GetSession,
            sessions_pb2.GetSessionRequest(session_id=session_id),
            metadata=self._md,
            timeout=self._timeout,
        )

    async def list_sessions(
        self,
        *,
        label_selector: Mapping[str, str] | None = None,
        page_size: int = 0,
        page_token: str = "",
        include_deleted: bool = False,
    ) -> sessions_pb2.ListSessionsResponse:
        req = sessions_pb2.ListSessionsRequest(
            label_selector=dict(label_selector or {}),
            page_size=page_size,
            page_token=page_token,
            include_deleted=include_deleted,
        )
        return await call(self.sessions.ListSessions, req, metadata=self._md, timeout=self._timeout)

    async def iter_sessions(
        self, *, label_selector: Mapping[str, str] | None = None, page_size: int = 0
    ) -> AsyncIterator[common_pb2.Session]:
        """Every matching session, newest first, following page tokens."""
        token = ""
        while True:
            page = await self.list_sessions(
                label_selector=label_selector, page_size=page_size, page_token=token
            )
            for session in page.sessions:
                yield session
            token = page.next_page_token
            if not token:
                return

    async def update_session(
        self,
        session_id: str,
        *,
        set_labels: Mapping[str, str] | None = None,
        remove_labels: Sequence[str] = (),
    ) -> common_pb2.Session:
        req = sessions_pb2.UpdateSessionRequest(
            session_id=session_id,
            set_labels=dict(set_labels or {}),
            remove_labels=list(remove_labels),
        )
        return await call(
            self.sessions.UpdateSession, req, metadata=self._md, timeout=self._timeout
        )

    async def delete_session(self, session_id: str) -> None:
        await call(
            self.sessions.DeleteSession,
            sessions_pb2.DeleteSessionRequest(session_id=session_id),
            metadata=self._md,
            timeout=self._timeout,
        )

    async def query(
        self,
        session_id: str,
        prompt: str,
        *,
        agent_options: common_pb2.AgentOptions | None = None,
        snapshot_after_turn: bool = False,
        deadline: float | None = None,
    ) -> AsyncIterator[sessions_pb2.QueryEvent]:
        """Run one turn; yields status events and every SDK message as it
        arrives. Calls on one session are serialized by the server."""
        responses = self.sessions.Query(
            sessions_pb2.QueryRequest(
                session_id=session_id,
                prompt=prompt,
                agent_options=agent_options,
                snapshot_after_turn=snapshot_after_turn,
            ),
            metadata=self._md,
            timeout=deadline,
        )
        async for event in stream(responses):
            yield event

    async def suspend(
        self, session_id: str, *, idempotency_key: str = ""
    ) -> sessions_pb2.SuspendResponse:
        return await call(
            self.sessions.Suspend,
            sessions_pb2.SuspendRequest(session_id=session_id, idempotency_key=idempotency_key),
            metadata=self._md,
            timeout=None,
        )

    async def resume(self, session_id: str) -> common_pb2.Session:
        return await call(
            self.sessions.Resume,
            sessions_pb2.ResumeRequest(session_id=session_id),
            metadata=self._md,
            timeout=None,
        )

    async def fork(
        self,
        session_id: str,
        *,
        at_message_uuid: str = "",
        labels: Mapping[str, str] | None = None,
        idempotency_key: str = "",
    ) -> common_pb2.Session:
        return await call(
            self.sessions.Fork,
            sessions_pb2.ForkRequest(
                session_id=session_id,
                at_message_uuid=at_message_uuid,
                labels=dict(labels or {}),
                idempotency_key=idempotency_key,
            ),
            metadata=self._md,
            timeout=None,
        )

    async def list_snapshots(
        self, session_id: str, *, page_size: int = 0, page_token: str = ""
    ) -> sessions_pb2.ListSnapshotsResponse:
        return await call(
            self.sessions.ListSnapshots,
            sessions_pb2.ListSnapshotsRequest(
                session_id=session_id, page_size=page_size, page_token=page_token
            ),
            metadata=self._md,
            timeout=self._timeout,
        )

    async def restore(
        self,
        session_id: str,
        *,
        snapshot_id: str = "",
        message_uuid: str = "",
        into_new_session: bool = False,
        labels: Mapping[str, str] | None = None,
        idempotency_key: str = "",
    ) -> common_pb2.Session:
        req = sessions_pb2.RestoreRequest(
            session_id=session_id,
            into_new_session=into_new_session,
            labels=dict(labels or {}),
            idempotency_key=idempotency_key,
        )
        if snapshot_id:
            req.snapshot_id = snapshot_id
        if message_uuid:
            req.message_uuid = message_uuid
        return await call(self.sessions.Restore, req, metadata=self._md, timeout=None)

    # -- transcripts (the SessionStore surface) -------------------------------

    async def append_entries(
        self, key: transcripts_pb2.SessionKey, entries: Sequence[str]
    ) -> transcripts_pb2.AppendResponse:
        return await call(
            self.transcripts.Append,
            transcripts_pb2.AppendRequest(key=key, entries=list(entries)),
            metadata=self._md,
            timeout=self._timeout,
        )

    async def load_entries(self, key: transcripts_pb2.SessionKey) -> AsyncIterator[list[str]]:
        """Pages of entries (JSON text) in append order; ``NotFound`` if the key
        was never written."""
        responses = self.transcripts.Load(
            transcripts_pb2.LoadRequest(key=key), metadata=self._md, timeout=self._timeout
        )
        async for page in stream(responses):
            yield list(page.entries)

    async def list_transcript_sessions(
        self, project_key: str
    ) -> list[transcripts_pb2.TranscriptSessionInfo]:
        resp = await call(
            self.transcripts.ListSessions,
            transcripts_pb2.ListTranscriptSessionsRequest(project_key=project_key),
            metadata=self._md,
            timeout=self._timeout,
        )
        return list(resp.sessions)

    async def list_session_summaries(
        self, project_key: str
    ) -> list[transcripts_pb2.SessionSummary]:
        resp = await call(
            self.transcripts.ListSessionSummaries,
            transcripts_pb2.ListSessionSummariesRequest(project_key=project_key),
            metadata=self._md,
            timeout=self._timeout,
        )
        return list(resp.summaries)

    async def delete_transcript(self, key: transcripts_pb2.SessionKey) -> None:
        await call(
            self.transcripts.Delete,
            transcripts_pb2.DeleteTranscriptRequest(key=key),
            metadata=self._md,
            timeout=self._timeout,
        )

    async def list_subkeys(self, project_key: str, session_id: str) -> list[str]:
        resp = await call(
            self.transcripts.ListSubkeys,
            transcripts_pb2.ListSubkeysRequest(project_key=project_key, session_id=session_id),
            metadata=self._md,
            timeout=self._timeout,
        )
        return list(resp.subpaths)
