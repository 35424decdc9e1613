"""Tenants and their API keys (the admin side of authentication), and the
deletion of a tenant by crypto-shredding."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta

from sessiond.client.errors import FailedPrecondition, InvalidArgument, NotFound

from .. import validation
from ..apikeys import new_api_key
from ..storage.blob import BlobStore
from ..storage.metadata import MetadataStore
from ..storage.records import ApiKeyRecord, Retention, Tenant, Usage
from .packs import tenant_prefix

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IssuedKey:
    record: ApiKeyRecord
    # The only time the full token exists outside the caller's hands.
    token: str


@dataclass(frozen=True, slots=True)
class DeletedTenant:
    tenant_id: str
    # Blob objects deleted by this call (an earlier, interrupted call may
    # have deleted others).
    objects: int
    bytes: int


# Blob deletions in flight while a tenant's objects are removed.
DELETE_PARALLEL = 16


class Tenants:
    """``blobs`` is needed only by :meth:`delete`."""

    def __init__(self, meta: MetadataStore, blobs: BlobStore | None = None) -> None:
        self._meta = meta
        self._blobs = blobs

    async def create(self, tenant_id: str, name: str = "") -> tuple[Tenant, IssuedKey]:
        """A new tenant and its first API key."""
        validation.session_id(tenant_id, "tenant_id")
        tenant = await self._meta.tenants.create(tenant_id, name or tenant_id)
        key = await self.issue_key(tenant_id)
        log.info("tenant created tenant=%s key_id=%s", tenant_id, key.record.key_id)
        return tenant, key

    async def issue_key(self, tenant_id: str, expires_in: timedelta | None = None) -> IssuedKey:
        if expires_in is not None and expires_in <= timedelta(0):
            raise InvalidArgument("expiry must be in the future")
        await self._meta.tenants.get(tenant_id)  # NotFound for a deleted tenant
        expires_at = None if expires_in is None else await self._meta.now() + expires_in
        fresh = new_api_key()
        record = await self._meta.tenants.add_api_key(
            tenant_id, fresh.key_id, fresh.secret_hash, expires_at
        )
        return IssuedKey(record=record, token=fresh.token)

    async def revoke_key(self, tenant_id: str, key_id: str) -> ApiKeyRecord:
        record = await self._meta.tenants.revoke_api_key(tenant_id, key_id)
        log.info("API key revoked tenant=%s key_id=%s", tenant_id, key_id)
        return record

    async def keys(self, tenant_id: str) -> list[ApiKeyRecord]:
        await self._meta.tenants.get(tenant_id)
        return await self._meta.tenants.list_api_keys(tenant_id)

    async def set_retention(
        self,
        tenant_id: str,
        *,
        keep_last_snapshots: int | None = None,
        expire_suspended_days: int | None = None,
    ) -> Retention:
        """Change the tenant's retention, applied by the next ``sessiond gc``.
        For each setting: None leaves it as it is, 0 removes the limit, N > 0
        sets it. ``NotFound``; ``InvalidArgument`` for a negative value."""
        for what, value in (
            ("keep_last_snapshots", keep_last_snapshots),
            ("expire_suspended_days", expire_suspended_days),
        ):
            if value is not None and value < 0:
                raise InvalidArgument(f"{what} must not be negative")
        await self._meta.tenants.get(tenant_id)
        current = next(
            (r for r in await self._meta.gc.retention() if r.tenant_id == tenant_id),
            Retention(tenant_id),
        )

        def merged(new: int | None, old: int | None) -> int | None:
            return old if new is None else (new or None)

        record = await self._meta.gc.set_retention(
            tenant_id,
            merged(keep_last_snapshots, current.keep_last_snapshots),
            merged(expire_suspended_days, current.expire_suspended_days),
        )
        log.info(
            "retention set tenant=%s keep_last_snapshots=%s expire_suspended_days=%s",
            tenant_id,
            record.keep_last_snapshots,
            record.expire_suspended_days,
        )
        return record

    async def delete(self, tenant_id: str) -> DeletedTenant:
        """Delete a tenant and everything it stored, in the order that makes
        the data unreadable first:

        1. crypto-shred: its data key is destroyed, so every sealed object
           left anywhere (blob store, backups, replicas) is unreadable from
           here on, and the tenant is gone to authentication and every RPC;
        2. its blob objects (``t/<tenant>/…``) are listed and deleted;
        3. its rows are purged, the tenant row last.

        Resumable: a call interrupted anywhere is finished by calling again
        (the tenant stays shredded, so nothing new is written meanwhile
        once servers' key caches expire). ``NotFound`` if there is no such
        tenant and nothing of it is left in the blob store. Objects stored
        with encryption off are plaintext until step 2 removes them."""
        if self._blobs is None:
            raise FailedPrecondition("deleting a tenant needs the blob store")
        validation.session_id(tenant_id, "tenant_id")
        shredded = True
        try:
            await self._meta.tenants.shred(tenant_id)
            log.info("tenant shredded tenant=%s", tenant_id)
        except NotFound:
            # Rows already purged: only objects written after the listing of
            # an earlier call can remain.
            shredded = False
        objects, nbytes = await self._delete_objects(tenant_id)
        if not shredded and objects == 0:
            raise NotFound(f"tenant {tenant_id!r} not found")
        await self._meta.tenants.purge(tenant_id)
        log.info("tenant deleted tenant=%s objects=%d bytes=%d", tenant_id, objects, nbytes)
        return DeletedTenant(tenant_id=tenant_id, objects=objects, bytes=nbytes)

    async def _delete_objects(self, tenant_id: str) -> tuple[int, int]:
        """Delete every object under the tenant's prefix, DELETE_PARALLEL at
        a time while listing goes on; returns (objects, bytes)."""
        assert self._blobs is not None
        blobs = self._blobs
        count = size = 0
        batch: list[str] = []

        async def flush() -> None:
            await asyncio.gather(*(blobs.delete(key) for key in batch))
            batch.clear()

        async for info in blobs.list(tenant_prefix(tenant_id)):
            count += 1
            size += info.size
            batch.append(info.key)
            if len(batch) >= DELETE_PARALLEL:
                await flush()
        await flush()
        return count, size

    async def set_quota(
        self,
        tenant_id: str,
        *,
        quota_bytes: int | None = None,
        quota_sessions: int | None = None,
    ) -> Usage:
        """Change the tenant's quotas (None leaves one as it is, 0 removes
        it). Returns the usage against the new quotas."""
        for what, value in (("quota_bytes", quota_bytes), ("quota_sessions", quota_sessions)):
            if value is not None and value < 0:
                raise InvalidArgument(f"{what} must not be negative")
        current = await self._meta.quotas.usage(tenant_id)

        def merged(new: int | None, old: int | None) -> int | None:
            return old if new is None else (new or None)

        await self._meta.quotas.set_quota(
            tenant_id,
            quota_bytes=merged(quota_bytes, current.quota_bytes),
            quota_sessions=merged(quota_sessions, current.quota_sessions),
        )
        log.info("quota set tenant=%s bytes=%s sessions=%s", tenant_id, quota_bytes, quota_sessions)
        return await self._meta.quotas.usage(tenant_id)
