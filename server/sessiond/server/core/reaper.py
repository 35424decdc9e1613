"""The idle reaper: suspends sessions nobody has used for ``idle_timeout``.

Every replica runs one. Work is claimed in the database (``claim_idle``:
``FOR UPDATE SKIP LOCKED`` plus a lease), so each idle session is suspended
by exactly one replica and a replica that dies mid-suspend leaves a lease
that expires and a session another replica finishes.
"""

from __future__ import annotations

import asyncio
import logging

from sessiond.client.errors import SessiondError

from ..storage.metadata import MetadataStore
from ..storage.records import SessionRecord
from .lifecycle import Lifecycle

log = logging.getLogger(__name__)


class IdleReaper:
    def __init__(
        self,
        meta: MetadataStore,
        lifecycle: Lifecycle,
        *,
        owner: str,
        idle_timeout: float,
        lease_ttl: float,
        batch: int = 4,
    ) -> None:
        self._meta = meta
        self._lifecycle = lifecycle
        self._owner = owner
        self.idle_timeout = idle_timeout
        self._ttl = lease_ttl
        self._batch = batch
        # Poll often enough that a session is suspended within ~25% of its
        # idle timeout, but never busy-loop.
        self.interval = min(max(idle_timeout / 4, 0.05), 5.0)
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="idle-reaper")

    async def stop(self) -> None:
        """Stop claiming; let suspensions in progress finish (they hold leases
        and have already started snapshotting)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)

    async def run_once(self) -> int:
        """Claim and suspend one batch; return how many were claimed."""
        claimed = await self._meta.sessions.claim_idle(
            self._owner, self.idle_timeout, self._ttl, self._batch
        )
        for record in claimed:
            task = asyncio.create_task(self._suspend(record), name=f"reap-{record.session_id}")
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        return len(claimed)

    async def _suspend(self, record: SessionRecord) -> None:
        try:
            await self._lifecycle.suspend_claimed(record, "idle")
        except SessiondError as exc:
            log.warning("idle suspend of session %s failed: %s", record.session_id, exc)
        except Exception:
            log.exception("idle suspend of session %s failed", record.session_id)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.run_once()
            except SessiondError as exc:
                log.warning("idle reaper: %s", exc)
            except Exception:
                log.exception("idle reaper failed")
