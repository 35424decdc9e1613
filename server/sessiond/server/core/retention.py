"""Retention: the first phase of a GC run, which turns what a tenant no
longer wants into unreachable data for the mark-and-sweep that follows.

Per tenant, in this order:

1. sessions SUSPENDED (and untouched) for ``expire_suspended_days`` days
   become DELETED, exactly as ``DeleteSession`` would leave them;
2. each live session keeps its newest ``keep_last_snapshots`` snapshot rows
   (never its ``latest_snapshot_id``); older rows are deleted;
3. every DELETED session loses its transcript (unless a live session of the
   tenant shares its SDK session id) and then its snapshot rows; its row
   stays as a tombstone so its id is never reused.

A snapshot row is only an index entry: its manifest and chunks become
garbage once nothing else references them, and are collected no sooner than
a grace period later (:mod:`.gc`). Imports no grpc.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..storage.metadata import MetadataStore
from ..storage.records import Retention

log = logging.getLogger(__name__)

#: Deleted sessions handled per listing.
PURGE_BATCH = 100


@dataclass
class RetentionResult:
    sessions_expired: int = 0
    snapshots_pruned: int = 0
    sessions_purged: int = 0
    transcripts_deleted: int = 0


async def apply_retention(
    meta: MetadataStore, settings: Retention, owner: str, *, dry_run: bool = False
) -> RetentionResult:
    """Apply one tenant's retention (see the module docstring) under the GC
    lease of ``owner`` (``Aborted`` if it is lost). With ``dry_run`` nothing
    is changed and the counts are what would be done now — deleted sessions
    counted at most :data:`PURGE_BATCH` × 100."""
    tenant = settings.tenant_id
    out = RetentionResult()
    if settings.expire_suspended_days is not None:
        expired = await meta.gc.expire_suspended(
            tenant, settings.expire_suspended_days, owner, dry_run=dry_run
        )
        out.sessions_expired = len(expired)
        for sid in expired:
            log.info("session expired tenant=%s session=%s", tenant, sid)
    if settings.keep_last_snapshots is not None:
        out.snapshots_pruned = await meta.gc.prune_snapshots(
            tenant, settings.keep_last_snapshots, owner, dry_run=dry_run
        )
    if dry_run:
        batch = await meta.gc.deleted_sessions(tenant, PURGE_BATCH * 100)
        out.sessions_purged = len(batch)
        out.transcripts_deleted = sum(1 for d in batch if d.transcript is not None)
        return out
    while True:
        batch = await meta.gc.deleted_sessions(tenant, PURGE_BATCH)
        for dead in batch:
            # Transcript first: once purged, the session is no longer listed,
            # so a crash in between must leave the pointer to come back to.
            if dead.transcript is not None:
                await meta.transcripts.delete(tenant, dead.transcript)
                out.transcripts_deleted += 1
            await meta.gc.purge_session(tenant, dead.session_id, owner)
            out.sessions_purged += 1
        if len(batch) < PURGE_BATCH:
            break
    if out.sessions_expired or out.snapshots_pruned or out.sessions_purged:
        log.info(
            "retention tenant=%s expired=%d pruned_snapshots=%d purged_sessions=%d",
            tenant,
            out.sessions_expired,
            out.snapshots_pruned,
            out.sessions_purged,
        )
    return out
