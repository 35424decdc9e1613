"""SessionService: a thin protobuf adapter over :class:`core.sessions.Sessions`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from google.protobuf.message import Message
from grpc.aio import ServicerContext

from sessiond.api.v1 import common_pb2, sessions_pb2, sessions_pb2_grpc
from sessiond.client.errors import InvalidArgument, Unimplemented

from .. import validation
from ..core.branching import Branching
from ..core.idempotency import Idempotency, request_digest
from ..core.lifecycle import Lifecycle
from ..core.sessions import Sessions
from ..identity import current_identity, log_field
from ..metrics import ServerMetrics
from .convert import message_to_dict, session_to_pb, snapshot_to_pb

R = TypeVar("R", bound=Message)


def _not_yet(rpc: str) -> Unimplemented:
    return Unimplemented(f"SessionService.{rpc} is not implemented by this sessiond version yet")


_PHASES = {
    "queued": sessions_pb2.QueryStatus.PHASE_QUEUED,
    "hydrating": sessions_pb2.QueryStatus.PHASE_HYDRATING,
    "running": sessions_pb2.QueryStatus.PHASE_RUNNING,
    "snapshotting": sessions_pb2.QueryStatus.PHASE_SNAPSHOTTING,
    "done": sessions_pb2.QueryStatus.PHASE_DONE,
}


class SessionServicer(sessions_pb2_grpc.SessionServiceServicer):
    def __init__(
        self,
        sessions: Sessions,
        lifecycle: Lifecycle,
        branching: Branching,
        idempotency: Idempotency,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self._sessions = sessions
        self._lifecycle = lifecycle
        self._branching = branching
        self._idempotency = idempotency
        self._metrics = metrics

    async def _once(
        self,
        method: str,
        request: Message,
        response_type: type[R],
        execute: Callable[[], Awaitable[R]],
    ) -> R:
        """Run a mutating call under its ``idempotency_key`` (see
        :mod:`..core.idempotency`): a repeat replays the first response."""
        key: str = getattr(request, "idempotency_key", "")

        def decode(data: bytes) -> R:
            log_field("replayed", True)
            if self._metrics is not None:
                self._metrics.replayed(method)
            return response_type.FromString(data)

        return await self._idempotency.run(
            current_identity().tenant_id,
            method,
            key,
            request_digest(request),
            execute,
            lambda resp: resp.SerializeToString(deterministic=True),
            decode,
        )

    async def CreateSession(
        self, request: sessions_pb2.CreateSessionRequest, context: ServicerContext
    ) -> common_pb2.Session:
        ident = current_identity()

        async def create() -> common_pb2.Session:
            record = await self._sessions.create(
                ident.tenant_id,
                session_id=request.session_id,
                labels=dict(request.labels),
                agent_options=message_to_dict(request.agent_options),
                snapshot_policy=message_to_dict(request.snapshot_policy),
            )
            return session_to_pb(record)

        session = await self._once("CreateSession", request, common_pb2.Session, create)
        log_field("session", session.session_id)
        return session

    async def GetSession(
        self, request: sessions_pb2.GetSessionRequest, context: ServicerContext
    ) -> common_pb2.Session:
        log_field("session", request.session_id)
        record = await self._sessions.get(current_identity().tenant_id, request.session_id)
        return session_to_pb(record)

    async def ListSessions(
        self, request: sessions_pb2.ListSessionsRequest, context: ServicerContext
    ) -> sessions_pb2.ListSessionsResponse:
        page = await self._sessions.list(
            current_identity().tenant_id,
            label_selector=dict(request.label_selector),
            page_size=request.page_size,
            page_token=request.page_token,
            include_deleted=request.include_deleted,
        )
        log_field("count", len(page.items))
        return sessions_pb2.ListSessionsResponse(
            sessions=[session_to_pb(r) for r in page.items], next_page_token=page.next_token
        )

    async def UpdateSession(
        self, request: sessions_pb2.UpdateSessionRequest, context: ServicerContext
    ) -> common_pb2.Session:
        log_field("session", request.session_id)
        record = await self._sessions.update(
            current_identity().tenant_id,
            request.session_id,
            set_labels=dict(request.set_labels),
            remove_labels=list(request.remove_labels),
            agent_options=(
                message_to_dict(request.agent_options)
                if request.HasField("agent_options")
                else None
            ),
            snapshot_policy=(
                message_to_dict(request.snapshot_policy)
                if request.HasField("snapshot_policy")
                else None
            ),
        )
        return session_to_pb(record)

    async def DeleteSession(
        self, request: sessions_pb2.DeleteSessionRequest, context: ServicerContext
    ) -> sessions_pb2.DeleteSessionResponse:
        log_field("session", request.session_id)
        record = await self._sessions.delete(current_identity().tenant_id, request.session_id)
        await self._lifecycle.destroy_sandbox(record)
        return sessions_pb2.DeleteSessionResponse()

    async def Query(
        self, request: sessions_pb2.QueryRequest, context: ServicerContext
    ) -> AsyncIterator[sessions_pb2.QueryEvent]:
        ident = current_identity()
        log_field("session", request.session_id)
        validation.session_id(request.session_id)
        if not request.prompt:
            raise InvalidArgument("prompt is required")
        messages = 0
        async for event in self._lifecycle.query(
            ident.tenant_id,
            request.session_id,
            request.prompt,
            options=message_to_dict(request.agent_options),
            snapshot_after=request.snapshot_after_turn,
        ):
            if event.phase:
                yield sessions_pb2.QueryEvent(
                    status=sessions_pb2.QueryStatus(
                        phase=_PHASES[event.phase],
                        detail=event.detail,
                        snapshot_id=event.snapshot_id,
                    )
                )
            else:
                messages += 1
                yield sessions_pb2.QueryEvent(
                    message=sessions_pb2.SdkMessage(
                        type=event.message_type,
                        json=event.message_json,
                        uuid=event.message_uuid,
                    )
                )
        log_field("messages", messages)

    async def Suspend(
        self, request: sessions_pb2.SuspendRequest, context: ServicerContext
    ) -> sessions_pb2.SuspendResponse:
        ident = current_identity()
        log_field("session", request.session_id)
        validation.session_id(request.session_id)

        async def suspend() -> sessions_pb2.SuspendResponse:
            record, snapshot_id = await self._lifecycle.suspend(ident.tenant_id, request.session_id)
            resp = sessions_pb2.SuspendResponse(session=session_to_pb(record))
            if snapshot_id:
                snap = await self._sessions.snapshot(ident.tenant_id, snapshot_id)
                resp.snapshot.CopyFrom(snapshot_to_pb(snap))
            return resp

        resp = await self._once("Suspend", request, sessions_pb2.SuspendResponse, suspend)
        if resp.snapshot.snapshot_id:
            log_field("snapshot", resp.snapshot.snapshot_id)
        return resp

    async def Resume(
        self, request: sessions_pb2.ResumeRequest, context: ServicerContext
    ) -> common_pb2.Session:
        ident = current_identity()
        log_field("session", request.session_id)
        validation.session_id(request.session_id)
        return session_to_pb(await self._lifecycle.resume(ident.tenant_id, request.session_id))

    async def Fork(
        self, request: sessions_pb2.ForkRequest, context: ServicerContext
    ) -> common_pb2.Session:
        ident = current_identity()
        log_field("session", request.session_id)
        validation.session_id(request.session_id)

        async def fork() -> common_pb2.Session:
            record = await self._branching.fork(
                ident.tenant_id,
                request.session_id,
                at_message_uuid=request.at_message_uuid,
                labels=validation.labels(dict(request.labels)),
            )
            return session_to_pb(record)

        session = await self._once("Fork", request, common_pb2.Session, fork)
        log_field("fork", session.session_id)
        return session

    async def ListSnapshots(
        self, request: sessions_pb2.ListSnapshotsRequest, context: ServicerContext
    ) -> sessions_pb2.ListSnapshotsResponse:
        ident = current_identity()
        log_field("session", request.session_id)
        page = await self._sessions.snapshots(
            ident.tenant_id,
            request.session_id,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return sessions_pb2.ListSnapshotsResponse(
            snapshots=[snapshot_to_pb(s) for s in page.items], next_page_token=page.next_token
        )

    async def Restore(
        self, request: sessions_pb2.RestoreRequest, context: ServicerContext
    ) -> common_pb2.Session:
        ident = current_identity()
        log_field("session", request.session_id)
        validation.session_id(request.session_id)

        async def restore() -> common_pb2.Session:
            record = await self._branching.restore(
                ident.tenant_id,
                request.session_id,
                snapshot_id=request.snapshot_id,
                message_uuid=request.message_uuid,
                into_new_session=request.into_new_session,
                labels=validation.labels(dict(request.labels)),
            )
            return session_to_pb(record)

        return await self._once("Restore", request, common_pb2.Session, restore)

    async def ExportSession(
        self, request: sessions_pb2.ExportSessionRequest, context: ServicerContext
    ) -> AsyncIterator[sessions_pb2.ExportSessionResponse]:
        raise _not_yet("ExportSession")
        yield sessions_pb2.ExportSessionResponse()  # pragma: no cover

    async def ImportSession(
        self,
        request_iterator: AsyncIterator[sessions_pb2.ImportSessionRequest],
        context: ServicerContext,
    ) -> common_pb2.Session:
        raise _not_yet("ImportSession")
