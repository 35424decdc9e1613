"""Fork and time travel: new sessions (or rewound ones) whose transcript is
cut at a message and whose workspace is the snapshot covering it.

Transcripts are forked with the SDK's ``fork_session_via_store`` (fresh
uuids, a new SDK session id; the original is never modified). Workspaces are
not copied: the new session's first snapshot points at the source snapshot's
manifest, so every chunk is shared by dedup.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping

from sessiond.client.errors import FailedPrecondition, InvalidArgument, NotFound

from ..storage.metadata import MetadataStore
from ..storage.records import (
    NewSession,
    NewSnapshot,
    SessionChanges,
    SessionRecord,
    SessionState,
    SnapshotRecord,
    TranscriptKey,
)
from .lifecycle import Lifecycle
from .sessions import new_session_id
from .tenant_store import TenantTranscriptStore
from .transcripts import Transcripts

log = logging.getLogger(__name__)


class Branching:
    def __init__(self, meta: MetadataStore, transcripts: Transcripts, lifecycle: Lifecycle) -> None:
        self._meta = meta
        self._transcripts = transcripts
        self._lifecycle = lifecycle

    async def _source(self, tenant_id: str, session_id: str) -> SessionRecord:
        record = await self._meta.sessions.get(tenant_id, session_id)
        if record.state is SessionState.DELETED:
            raise FailedPrecondition(f"session {session_id} is deleted")
        if not record.sdk_session_id or not record.project_key:
            raise FailedPrecondition(f"session {session_id} has no conversation yet")
        return record

    async def _snapshot_at(
        self, src: SessionRecord, message_uuid: str
    ) -> tuple[SnapshotRecord | None, str | None]:
        """(covering snapshot, cut uuid) for a message, or the latest state."""
        assert src.project_key and src.sdk_session_id
        if message_uuid:
            key = TranscriptKey(src.project_key, src.sdk_session_id)
            try:
                seq = await self._meta.transcripts.position(src.tenant_id, key, message_uuid)
            except NotFound:
                raise NotFound(
                    f"message {message_uuid} is not in session {src.session_id}"
                ) from None
            try:
                snap = await self._meta.snapshots.covering(src.tenant_id, src.session_id, seq)
            except NotFound:
                raise FailedPrecondition(
                    f"no snapshot of session {src.session_id} covers message {message_uuid}"
                ) from None
            return snap, message_uuid
        if src.state is SessionState.ACTIVE:
            # Capture the live workspace first, so the fork gets today's files.
            async with self._lifecycle.leases.hold(src.tenant_id, src.session_id) as lease:
                if lease.record.state is SessionState.ACTIVE and lease.record.sandbox_id:
                    await self._lifecycle.snapshot(lease, trigger="manual")
                src = lease.record
        if src.latest_snapshot_id:
            return await self._meta.snapshots.get(src.tenant_id, src.latest_snapshot_id), None
        return None, None

    async def _fork_transcript(self, src: SessionRecord, cut: str | None) -> str:
        from claude_agent_sdk import fork_session_via_store

        assert src.project_key and src.sdk_session_id
        store = TenantTranscriptStore(self._transcripts, src.tenant_id, src.project_key)
        try:
            result = await fork_session_via_store(
                store,  # type: ignore[arg-type]
                src.sdk_session_id,
                up_to_message_id=cut,
            )
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        except FileNotFoundError:
            raise FailedPrecondition(
                f"session {src.session_id} has no stored transcript to fork"
            ) from None
        return str(result.session_id)

    async def _pin(
        self,
        record: SessionRecord,
        epoch: int,
        snap: SnapshotRecord | None,
        sdk_session_id: str,
        project_key: str,
        trigger: str,
    ) -> SessionRecord:
        """Point ``record`` at a transcript and (if any) a workspace snapshot."""
        tenant = record.tenant_id
        record = await self._meta.sessions.update_fenced(
            tenant,
            record.session_id,
            epoch,
            SessionChanges(sdk_session_id=sdk_session_id, project_key=project_key),
        )
        if snap is None:
            return record
        uuid_, seq = await self._meta.transcripts.last_position(
            tenant, TranscriptKey(project_key, sdk_session_id)
        )
        await self._meta.snapshots.commit(
            NewSnapshot(
                tenant_id=tenant,
                snapshot_id="snap_" + secrets.token_hex(12),
                session_id=record.session_id,
                parent_snapshot_id=snap.snapshot_id,
                manifest_id=snap.manifest_id,
                trigger=trigger,
                transcript_uuid=uuid_,
                transcript_seq=seq,
                file_history_included=snap.file_history_included,
                stats=snap.stats,
            ),
            expected_epoch=epoch,
        )
        state = SessionState.SUSPENDED
        return await self._meta.sessions.update_fenced(
            tenant, record.session_id, epoch, SessionChanges(state=state)
        )

    async def fork(
        self,
        tenant_id: str,
        session_id: str,
        *,
        at_message_uuid: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> SessionRecord:
        src = await self._source(tenant_id, session_id)
        snap, cut = await self._snapshot_at(src, at_message_uuid)
        src = await self._meta.sessions.get(tenant_id, session_id)
        new_sdk = await self._fork_transcript(src, cut)
        new = await self._meta.sessions.create(
            NewSession(
                tenant_id=tenant_id,
                session_id=new_session_id(),
                labels=dict(labels or {}),
                agent_options=src.agent_options,
                snapshot_policy=src.snapshot_policy,
                forked_from=session_id,
            )
        )
        assert src.project_key
        new = await self._pin(new, new.epoch, snap, new_sdk, src.project_key, "fork")
        log.info(
            "forked session=%s into=%s at=%s snapshot=%s",
            session_id,
            new.session_id,
            at_message_uuid or "latest",
            snap.snapshot_id if snap else "-",
        )
        return new

    async def restore(
        self,
        tenant_id: str,
        session_id: str,
        *,
        snapshot_id: str = "",
        message_uuid: str = "",
        into_new_session: bool = False,
        labels: Mapping[str, str] | None = None,
    ) -> SessionRecord:
        """Put a session at a snapshot or a message. Into a new session this is
        a fork; in place, the session's live sandbox is suspended first (its
        state is snapshotted, nothing is lost) and the session then points at
        a forked transcript and the chosen workspace."""
        if bool(snapshot_id) == bool(message_uuid):
            raise InvalidArgument("give exactly one of snapshot_id or message_uuid")
        src = await self._source(tenant_id, session_id)
        snap: SnapshotRecord | None = None
        if snapshot_id:
            snap = await self._meta.snapshots.get(tenant_id, snapshot_id)
            if snap.session_id != session_id:
                raise NotFound(f"snapshot {snapshot_id} not found")
            message_uuid = snap.transcript_uuid or ""
        if into_new_session:
            if snapshot_id and not message_uuid:
                raise FailedPrecondition(f"snapshot {snapshot_id} is not pinned to a message")
            return await self.fork(
                tenant_id, session_id, at_message_uuid=message_uuid, labels=labels
            )
        await self._lifecycle.suspend(tenant_id, session_id, trigger="manual")
        src = await self._source(tenant_id, session_id)
        if not snapshot_id:
            snap, cut = await self._snapshot_at(src, message_uuid)
        else:
            cut = message_uuid or None
        new_sdk = await self._fork_transcript(src, cut)
        assert src.project_key
        async with self._lifecycle.leases.hold(tenant_id, session_id) as lease:
            record = await self._pin(
                lease.record, lease.epoch, snap, new_sdk, src.project_key, "restore"
            )
            lease.record = record
        log.info(
            "restored session=%s to snapshot=%s", session_id, snap.snapshot_id if snap else "-"
        )
        return record
