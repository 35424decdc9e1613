"""Sessions: the core service behind SessionService's CRUD calls.

Imports no grpc. Receives its stores in the constructor; every method takes
the caller's tenant explicitly.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from sessiond.client.errors import FailedPrecondition, ResourceExhausted

from .. import validation
from ..storage.metadata import MetadataStore
from ..storage.records import NewSession, Page, SessionRecord, SessionState, SnapshotRecord

log = logging.getLogger(__name__)


def new_session_id() -> str:
    """A fresh, URL- and path-safe session id."""
    return "s_" + secrets.token_hex(12)


class Sessions:
    def __init__(self, meta: MetadataStore) -> None:
        self._meta = meta

    async def create(
        self,
        tenant_id: str,
        *,
        session_id: str = "",
        labels: Mapping[str, str] | None = None,
        agent_options: dict[str, Any] | None = None,
        snapshot_policy: dict[str, Any] | None = None,
    ) -> SessionRecord:
        sid = validation.session_id(session_id) if session_id else new_session_id()
        usage = await self._meta.quotas.usage(tenant_id)
        if usage.quota_sessions is not None and usage.live_sessions >= usage.quota_sessions:
            raise ResourceExhausted(
                f"session quota of {usage.quota_sessions} reached"
                f" ({usage.live_sessions} live sessions)"
            )
        record = await self._meta.sessions.create(
            NewSession(
                tenant_id=tenant_id,
                session_id=sid,
                labels=validation.labels(labels or {}),
                agent_options=agent_options or {},
                snapshot_policy=snapshot_policy or {},
            )
        )
        log.info("session created tenant=%s session=%s", tenant_id, sid)
        return record

    async def get(self, tenant_id: str, session_id: str) -> SessionRecord:
        return await self._meta.sessions.get(tenant_id, validation.session_id(session_id))

    async def list(
        self,
        tenant_id: str,
        *,
        label_selector: Mapping[str, str] | None = None,
        page_size: int = 0,
        page_token: str = "",
        include_deleted: bool = False,
    ) -> Page[SessionRecord]:
        return await self._meta.sessions.list(
            tenant_id,
            labels=validation.labels(label_selector or {}, "label_selector"),
            page_size=validation.page_size(page_size),
            page_token=page_token,
            include_deleted=include_deleted,
        )

    async def update(
        self,
        tenant_id: str,
        session_id: str,
        *,
        set_labels: Mapping[str, str] | None = None,
        remove_labels: Sequence[str] = (),
        agent_options: dict[str, Any] | None = None,
        snapshot_policy: dict[str, Any] | None = None,
    ) -> SessionRecord:
        validation.session_id(session_id)
        for key in remove_labels:
            validation.label_key(key, "remove_labels")
        return await self._meta.sessions.update(
            tenant_id,
            session_id,
            set_labels=validation.labels(set_labels or {}, "set_labels"),
            remove_labels=list(remove_labels),
            agent_options=agent_options,
            snapshot_policy=snapshot_policy,
        )

    async def delete(self, tenant_id: str, session_id: str) -> SessionRecord:
        validation.session_id(session_id)
        record = await self._meta.sessions.mark_deleted(tenant_id, session_id)
        log.info("session deleted tenant=%s session=%s", tenant_id, session_id)
        return record

    async def snapshot(self, tenant_id: str, snapshot_id: str) -> SnapshotRecord:
        return await self._meta.snapshots.get(tenant_id, snapshot_id)

    async def snapshots(
        self, tenant_id: str, session_id: str, *, page_size: int = 0, page_token: str = ""
    ) -> Page[SnapshotRecord]:
        return await self._meta.snapshots.list(
            tenant_id,
            validation.session_id(session_id),
            page_size=validation.page_size(page_size),
            page_token=page_token,
        )

    async def require_live(self, tenant_id: str, session_id: str) -> SessionRecord:
        """The session, or ``FailedPrecondition`` if it was deleted."""
        record = await self.get(tenant_id, session_id)
        if record.state is SessionState.DELETED:
            raise FailedPrecondition(f"session {session_id} is deleted")
        return record
