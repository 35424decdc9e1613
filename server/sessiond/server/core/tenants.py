"""Tenants and their API keys (the admin side of authentication)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from sessiond.client.errors import InvalidArgument

from .. import validation
from ..apikeys import new_api_key
from ..storage.metadata import MetadataStore
from ..storage.records import ApiKeyRecord, Tenant

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IssuedKey:
    record: ApiKeyRecord
    # The only time the full token exists outside the caller's hands.
    token: str


class Tenants:
    def __init__(self, meta: MetadataStore) -> None:
        self._meta = meta

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
