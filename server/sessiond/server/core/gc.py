"""Garbage collection: retention, then mark-and-sweep with a grace period on
the database clock (DESIGN.md "GC"). Imports no grpc.

One run, per tenant, in this order (each step commits on its own, so a run
killed anywhere leaves a consistent store and the next run picks up):

1. retention (:mod:`.retention`): expired sessions deleted, old snapshot
   rows pruned, deleted sessions' snapshot rows and transcripts removed;
2. manifests no snapshot references and older than ``grace`` are deleted
   (object, then row, under the row's lock: a commit racing it either lands
   first, and the manifest is kept, or fails ``NotFound``). Every manifest
   row left is therefore committed, or young enough to be committed soon:
   they are all roots;
3. the reachable set of every manifest row is built in the database
   (:mod:`.reachability`); any tree that cannot be read stops the tenant
   (what it reaches is unknown, so nothing may be marked or swept);
4. sweep: chunk rows marked more than ``grace`` ago and still unreachable
   are deleted. A snapshot that needed one meanwhile saw it missing
   (MissingChunks, PutManifest) and uploaded it again, which moved the row
   and cleared the mark in one transaction — so it is not swept;
5. chunks marked earlier but reachable again are un-marked;
6. mark: unreachable chunks older than ``grace`` are marked now (and every
   ``verified`` flag of the tenant cleared, so PutManifest walks again);
7. packs no chunk row names are deleted (object, then row, under the row's
   lock: an ``add_pack`` indexing into one waits and fails ``Aborted``).

Then stale multipart uploads are aborted (blob stores that have them).

One runner at a time: the ``gc`` job lease, renewed while the run lasts.
Every destructive statement re-checks the lease in its own transaction, so
a runner that lost it (paused past its expiry, say) writes nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from sessiond.client.errors import Aborted, FailedPrecondition, SessiondError

from ..storage.blob import BlobStore
from ..storage.metadata import GC_JOB, MetadataStore
from ..storage.records import JobLease, Retention
from .reachability import walk
from .retention import apply_retention
from .workspace import Workspaces

log = logging.getLogger(__name__)

IDEMPOTENCY_TTL = 24 * 3600.0

DEFAULT_GRACE = 3600.0
DEFAULT_LEASE_TTL = 60.0
#: Rows (and objects) deleted per transaction.
DELETE_BATCH = 100
#: Concurrent object deletions.
DELETE_PARALLEL = 16


class GcBusy(FailedPrecondition):
    """Another runner holds the GC lease."""

    def __init__(self, holder: JobLease) -> None:
        super().__init__(
            f"another GC is running (owner {holder.owner}, lease until"
            f" {holder.expires_at.isoformat(timespec='seconds')})"
        )
        self.holder = holder


@dataclass
class GcReport:
    """What a run did (with ``dry_run``: would do, see :class:`GarbageCollector`)."""

    dry_run: bool = False
    tenants: int = 0
    sessions_expired: int = 0
    snapshots_pruned: int = 0
    sessions_purged: int = 0
    transcripts_deleted: int = 0
    manifests_deleted: int = 0
    trees_walked: int = 0
    chunks_swept: int = 0
    chunks_unmarked: int = 0
    chunks_marked: int = 0
    packs_deleted: int = 0
    uploads_aborted: int = 0
    seconds: float = 0.0
    # One line per tenant (or object) that could not be collected.
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class GarbageCollector:
    """``run()`` once per invocation. ``grace`` (seconds) must exceed the
    longest snapshot upload (PutPack → CommitSnapshot) and restore: data
    younger than that is never marked, and marked data is deleted only
    ``grace`` after it was marked. With ``dry_run`` nothing is written and no
    lease is taken; the counts assume retention had not run (what it would
    free is collected by a later run)."""

    def __init__(
        self,
        meta: MetadataStore,
        blobs: BlobStore,
        workspaces: Workspaces,
        grace: float = DEFAULT_GRACE,
        owner: str = "",
        *,
        dry_run: bool = False,
        lease_ttl: float = DEFAULT_LEASE_TTL,
    ) -> None:
        self._meta = meta
        self._blobs = blobs
        self._ws = workspaces
        self.grace = grace
        self.owner = owner or f"gc-{time.time_ns():x}"
        self.dry_run = dry_run
        self._ttl = lease_ttl
        self._lost: Aborted | None = None
        self._sem = asyncio.Semaphore(DELETE_PARALLEL)
        self._report = GcReport(dry_run=dry_run)

    async def run(self) -> GcReport:
        """Collect every tenant. ``GcBusy`` if another runner holds the
        lease; ``Aborted`` if this one lost it mid-run (what was done stays
        done). A tenant that fails otherwise is reported in ``errors`` and
        skipped."""
        started = time.monotonic()
        if not self.dry_run:
            lease = await self._meta.gc.acquire_job(GC_JOB, self.owner, self._ttl)
            if lease.owner != self.owner:
                raise GcBusy(lease)
        renewer = None if self.dry_run else asyncio.create_task(self._renew())
        try:
            for settings in await self._meta.gc.retention():
                self._alive()
                try:
                    await self._tenant(settings)
                except Aborted:
                    raise
                except SessiondError as exc:
                    log.error("gc tenant=%s failed: %s", settings.tenant_id, exc)
                    self._report.errors.append(f"tenant {settings.tenant_id}: {exc}")
                self._report.tenants += 1
            await self._abort_uploads()
            await self._expire_idempotency_keys()
        finally:
            if renewer is not None:
                renewer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewer
                with contextlib.suppress(SessiondError):
                    await self._meta.gc.release_job(GC_JOB, self.owner)
        self._report.seconds = time.monotonic() - started
        log.info("gc done: %s", self._report.to_dict())
        return self._report

    async def _expire_idempotency_keys(self) -> None:
        """Idempotency keys live 24 h (claims also ignore older rows)."""
        if self.dry_run:
            return
        while await self._meta.idempotency.expire(IDEMPOTENCY_TTL, limit=1000) == 1000:
            self._alive()

    # -- one tenant -----------------------------------------------------------

    async def _tenant(self, settings: Retention) -> None:
        tenant, r, dry = settings.tenant_id, self._report, self.dry_run
        kept = await apply_retention(self._meta, settings, self.owner, dry_run=dry)
        r.sessions_expired += kept.sessions_expired
        r.snapshots_pruned += kept.snapshots_pruned
        r.sessions_purged += kept.sessions_purged
        r.transcripts_deleted += kept.transcripts_deleted
        self._alive()
        r.manifests_deleted += await self._batches(
            lambda: self._meta.gc.delete_manifests(
                tenant, self.grace, self.owner, self._delete_blobs, limit=DELETE_BATCH, dry_run=dry
            )
        )
        async with self._meta.gc.reach(tenant) as reach:
            roots = await reach.add_roots(committed_only=False)
            stats = await walk(self._meta, self._ws, tenant, reach, check_alive=self._alive)
            r.trees_walked += stats.trees
            self._alive()
            swept = await reach.sweep(self.grace, self.owner, dry_run=dry)
            unmarked = await reach.unmark(self.owner, dry_run=dry)
            marked = await reach.mark(self.grace, self.owner, dry_run=dry)
        r.chunks_swept += swept
        r.chunks_unmarked += unmarked
        r.chunks_marked += marked
        r.packs_deleted += await self._batches(
            lambda: self._meta.gc.delete_empty_packs(
                tenant, self.owner, self._delete_blobs, limit=DELETE_BATCH, dry_run=dry
            )
        )
        log.info(
            "gc tenant=%s roots=%d trees=%d swept=%d unmarked=%d marked=%d",
            tenant,
            roots,
            stats.trees,
            swept,
            unmarked,
            marked,
        )

    async def _batches(self, step: Any) -> int:
        """Repeat a batched deletion until a batch comes back short."""
        total = 0
        while True:
            self._alive()
            done: Sequence[str] = await step()
            total += len(done)
            if self.dry_run or len(done) < DELETE_BATCH:
                return total

    async def _delete_blobs(self, keys: Sequence[str]) -> Sequence[str]:
        """Delete objects concurrently; keys whose deletion failed are left
        out (their rows stay, the next run retries)."""

        async def one(key: str) -> str | None:
            async with self._sem:
                try:
                    await self._blobs.delete(key)
                except SessiondError as exc:
                    log.warning("gc: cannot delete %s: %s", key, exc)
                    self._report.errors.append(f"object {key}: {exc}")
                    return None
            return key

        done = await asyncio.gather(*(one(k) for k in keys))
        return [k for k in done if k is not None]

    async def _abort_uploads(self) -> None:
        abort = getattr(self._blobs, "abort_stale_uploads", None)
        if abort is None or self.dry_run:
            return
        self._alive()
        try:
            now = await self._meta.now()
            self._report.uploads_aborted = await abort(timedelta(seconds=self.grace), now=now)
        except SessiondError as exc:
            self._report.errors.append(f"stale uploads: {exc}")

    # -- the lease --------------------------------------------------------------

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self._ttl / 3)
            try:
                await self._meta.gc.renew_job(GC_JOB, self.owner, self._ttl)
            except Aborted as exc:
                log.error("gc: lease lost: %s", exc)
                self._lost = exc
                return
            except SessiondError as exc:  # transient: the next renewal may do
                log.warning("gc: lease renewal failed: %s", exc)

    def _alive(self) -> None:
        if self._lost is not None:
            raise self._lost
