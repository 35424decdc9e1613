"""Authenticators for the server interceptor (the key format is in
:mod:`.apikeys`)."""

from __future__ import annotations

import math
import time

from sessiond.client.errors import NotFound, PermissionDenied, Unauthenticated

from . import sandbox_tokens
from .apikeys import parse_token, secret_matches
from .identity import Identity
from .interceptors import Authenticator, Metadata
from .storage.metadata import MetadataStore, TenantTable
from .storage.records import ApiKeyRecord


class AnonymousAuth:
    """Auth off: every caller is the given tenant. Only for the embedded
    default listening on loopback (the CLI refuses it on other addresses)."""

    def __init__(self, tenant_id: str) -> None:
        self._identity = Identity(tenant_id=tenant_id, kind="anonymous")

    async def authenticate(self, metadata: Metadata, method: str) -> Identity:
        return self._identity


def bearer_token(metadata: Metadata) -> str | None:
    for name, value in metadata:
        if name.lower() == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
    return None


class ApiKeyAuth:
    """Tenant API keys from the metadata store.

    Verified keys are cached in this process for ``cache_seconds`` (0: no
    cache) so a busy client costs one lookup per interval, not one per RPC.
    The cache is per replica and is not invalidated: a revoked key, or a
    disabled or deleted tenant, keeps authenticating on a replica that
    verified it recently for up to ``cache_seconds`` — the revoking replica
    included. Expiry is exact: a key is never cached past its ``expires_at``.
    Failures are never cached.
    """

    MAX_CACHED = 10_000

    def __init__(self, meta: MetadataStore, cache_seconds: float = 5.0) -> None:
        self._meta = meta
        self._ttl = max(cache_seconds, 0.0)
        self._cache: dict[str, tuple[float, Identity]] = {}

    async def authenticate(self, metadata: Metadata, method: str) -> Identity:
        token = bearer_token(metadata)
        if token is None:
            raise Unauthenticated("missing credentials: send 'authorization: Bearer <API key>'")
        cached = self._cache.get(token)
        now = time.monotonic()
        if cached is not None:
            if cached[0] > now:
                return cached[1]
            del self._cache[token]
        ident, valid_for = await self._verify(token)
        ttl = min(self._ttl, valid_for)
        if ttl > 0:
            if len(self._cache) >= self.MAX_CACHED:
                self._cache.clear()
            self._cache[token] = (now + ttl, ident)
        return ident

    async def _verify(self, token: str) -> tuple[Identity, float]:
        """The key's identity and how many more seconds it is valid (inf
        without an expiry)."""
        parsed = parse_token(token)
        if parsed is None:
            raise Unauthenticated("malformed API key")
        key_id, secret = parsed
        try:
            record = await self._meta.tenants.get_api_key(key_id)
        except NotFound:
            raise Unauthenticated("unknown API key") from None
        if not secret_matches(secret, record.secret_hash):
            raise Unauthenticated("unknown API key")
        valid_for = await self._check_live(record)
        return Identity(tenant_id=record.tenant_id, kind="api_key"), valid_for

    async def _check_live(self, record: ApiKeyRecord) -> float:
        if record.revoked_at is not None:
            raise Unauthenticated("API key revoked")
        valid_for = math.inf
        if record.expires_at is not None:
            valid_for = (record.expires_at - await self._meta.now()).total_seconds()
            if valid_for <= 0:
                raise Unauthenticated("API key expired")
        try:
            tenant = await self._meta.tenants.get(record.tenant_id)
        except NotFound:
            raise Unauthenticated("unknown tenant") from None
        if tenant.disabled:
            raise Unauthenticated("tenant disabled")
        return valid_for


class SandboxTokenAuth:
    """Scoped sandbox tokens first, everything else to ``fallback``.

    A sandbox token authenticates as its tenant, for its one session and only
    the hydrator's RPCs (``PermissionDenied`` for any other method). With
    ``tenants`` given, the token's tenant must also still exist and be
    enabled (``Unauthenticated`` otherwise) — checked at most every
    ``cache_seconds`` per tenant, like API keys — so disabling or deleting a
    tenant cuts its running sandboxes off too, not only its API keys.
    """

    def __init__(
        self,
        key: bytes,
        fallback: Authenticator,
        tenants: TenantTable | None = None,
        cache_seconds: float = 5.0,
    ) -> None:
        self._key = key
        self._fallback = fallback
        self._tenants = tenants
        self._ttl = max(cache_seconds, 0.0)
        self._live_until: dict[str, float] = {}

    async def authenticate(self, metadata: Metadata, method: str) -> Identity:
        token = bearer_token(metadata)
        if token is None or not token.startswith(sandbox_tokens.PREFIX):
            return await self._fallback.authenticate(metadata, method)
        claims = sandbox_tokens.verify(self._key, token)
        if method not in sandbox_tokens.SANDBOX_METHODS:
            raise PermissionDenied(f"sandbox tokens may not call {method}")
        await self._check_tenant(claims.tenant_id)
        return Identity(
            tenant_id=claims.tenant_id,
            kind="sandbox",
            session_id=claims.session_id,
            methods=sandbox_tokens.SANDBOX_METHODS,
            sdk_session_id=claims.sdk_session_id,
        )

    async def _check_tenant(self, tenant_id: str) -> None:
        if self._tenants is None:
            return
        now = time.monotonic()
        if self._live_until.get(tenant_id, 0.0) > now:
            return
        try:
            tenant = await self._tenants.get(tenant_id)
        except NotFound:
            raise Unauthenticated("unknown tenant") from None
        if tenant.disabled:
            raise Unauthenticated("tenant disabled")
        if self._ttl > 0:
            if len(self._live_until) >= ApiKeyAuth.MAX_CACHED:
                self._live_until.clear()
            self._live_until[tenant_id] = now + self._ttl
