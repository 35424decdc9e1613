"""Session leases with fencing epochs, held while a replica works on a session.

A lease is a row in the metadata store (owner, expiry on the database clock);
taking over from another owner bumps the session's epoch, and every state
change and snapshot commit presents the epoch, so a replica that lost its
lease (paused, partitioned, killed) can no longer change anything. Within one
replica a per-session lock queues callers in arrival order; across replicas
waiters poll until the holder releases or its lease expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from sessiond.client.errors import Aborted

from ..storage.metadata import MetadataStore
from ..storage.records import SessionChanges, SessionRecord

log = logging.getLogger(__name__)


@dataclass
class Lease:
    """A held lease. ``record`` is kept current by :meth:`update`."""

    tenant_id: str
    session_id: str
    owner: str
    record: SessionRecord
    # The owner of the lease before we took it, if it was someone else's
    # (a takeover: that replica may have left work running).
    previous_owner: str | None
    _meta: MetadataStore = field(repr=False)
    lost: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def epoch(self) -> int:
        return self.record.epoch

    def check(self) -> None:
        if self.lost.is_set():
            raise Aborted(f"lease on session {self.session_id} lost (epoch {self.epoch})")

    async def update(self, changes: SessionChanges) -> SessionRecord:
        """A fenced update; ``Aborted`` if the lease was lost."""
        self.check()
        self.record = await self._meta.sessions.update_fenced(
            self.tenant_id, self.session_id, self.epoch, changes
        )
        return self.record


class LeaseManager:
    def __init__(
        self,
        meta: MetadataStore,
        owner: str,
        *,
        ttl: float = 30.0,
        wait_timeout: float = 600.0,
    ) -> None:
        self._meta = meta
        self.owner = owner
        self.ttl = ttl
        self.wait_timeout = wait_timeout
        # Called with "wait" (another holder: queued), "busy" (gave up) or
        # "lost" (taken over while held); for metrics. Must not raise.
        self.on_conflict: Callable[[str], None] | None = None
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def hold(
        self, tenant_id: str, session_id: str, *, record: SessionRecord | None = None
    ) -> AsyncIterator[Lease]:
        """Hold the session's lease for the block: queue behind other holders
        (this replica's first, in order), renew it in the background, release
        it at the end. ``Aborted`` if it cannot be had within the wait timeout.
        ``record``: a lease already acquired (e.g. by the idle reaper)."""
        key = (tenant_id, session_id)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            lease = (
                await self._acquire(tenant_id, session_id)
                if record is None
                else Lease(tenant_id, session_id, self.owner, record, None, self._meta)
            )
            renewer = asyncio.create_task(self._renew(lease), name=f"lease-{session_id}")
            try:
                yield lease
            finally:
                renewer.cancel()
                await asyncio.gather(renewer, return_exceptions=True)
                if not lease.lost.is_set():
                    with contextlib.suppress(Exception):
                        await self._meta.sessions.release_lease(
                            tenant_id, session_id, self.owner, lease.epoch
                        )
        if not lock.locked() and self._locks.get(key) is lock:
            del self._locks[key]

    async def _acquire(self, tenant_id: str, session_id: str) -> Lease:
        deadline = time.monotonic() + self.wait_timeout
        delay = 0.05
        waited = False
        while True:
            before = await self._meta.sessions.get(tenant_id, session_id)
            record = await self._meta.sessions.acquire_lease(
                tenant_id, session_id, self.owner, self.ttl
            )
            if record is not None:
                previous = before.lease_owner
                took_over = previous is not None and previous != self.owner
                if took_over:
                    log.info("lease takeover session=%s from=%s", session_id, previous)
                return Lease(
                    tenant_id,
                    session_id,
                    self.owner,
                    record,
                    previous if took_over else None,
                    self._meta,
                )
            if not waited:
                waited = True
                self._conflict("wait")
            if time.monotonic() > deadline:
                self._conflict("busy")
                raise Aborted(f"session {session_id} is busy; try again")
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)

    async def _renew(self, lease: Lease) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                await self._meta.sessions.renew_lease(
                    lease.tenant_id, lease.session_id, self.owner, lease.epoch, self.ttl
                )
            except Aborted:
                log.warning("lease lost session=%s epoch=%s", lease.session_id, lease.epoch)
                self._conflict("lost")
                lease.lost.set()
                return
            except Exception:
                # The database may be briefly unreachable; the lease is still
                # ours until it expires, so keep trying.
                log.warning("lease renewal failed session=%s; retrying", lease.session_id)

    def _conflict(self, reason: str) -> None:
        if self.on_conflict is not None:
            self.on_conflict(reason)
