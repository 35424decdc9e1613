"""Authenticators for the server interceptor (the key format is in
:mod:`.apikeys`)."""

from __future__ import annotations

import time

from sessiond.client.errors import NotFound, PermissionDenied, Unauthenticated

from . import sandbox_tokens
from .apikeys import parse_token, secret_matches
from .identity import Identity
from .interceptors import Authenticator, Metadata
from .storage.metadata import MetadataStore
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

    Verified keys are cached for ``cache_seconds`` so a busy client costs one
    lookup per interval, not one per RPC; a revocation therefore takes effect
    within that interval.
    """

    def __init__(self, meta: MetadataStore, cache_seconds: float = 5.0) -> None:
        self._meta = meta
        self._ttl = cache_seconds
        self._cache: dict[str, tuple[float, Identity]] = {}

    async def authenticate(self, metadata: Metadata, method: str) -> Identity:
        token = bearer_token(metadata)
        if token is None:
            raise Unauthenticated("missing credentials: send 'authorization: Bearer <API key>'")
        cached = self._cache.get(token)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        ident = await self._verify(token)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[token] = (now + self._ttl, ident)
        return ident

    async def _verify(self, token: str) -> Identity:
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
        await self._check_live(record)
        return Identity(tenant_id=record.tenant_id, kind="api_key")

    async def _check_live(self, record: ApiKeyRecord) -> None:
        if record.revoked_at is not None:
            raise Unauthenticated("API key revoked")
        if record.expires_at is not None and record.expires_at <= await self._meta.now():
            raise Unauthenticated("API key expired")
        try:
            tenant = await self._meta.tenants.get(record.tenant_id)
        except NotFound:
            raise Unauthenticated("unknown tenant") from None
        if tenant.disabled:
            raise Unauthenticated("tenant disabled")


class SandboxTokenAuth:
    """Scoped sandbox tokens first, everything else to ``fallback``.

    A sandbox token authenticates as its tenant, for its one session and only
    the hydrator's RPCs (``PermissionDenied`` for any other method).
    """

    def __init__(self, key: bytes, fallback: Authenticator) -> None:
        self._key = key
        self._fallback = fallback

    async def authenticate(self, metadata: Metadata, method: str) -> Identity:
        token = bearer_token(metadata)
        if token is None or not token.startswith(sandbox_tokens.PREFIX):
            return await self._fallback.authenticate(metadata, method)
        claims = sandbox_tokens.verify(self._key, token)
        if method not in sandbox_tokens.SANDBOX_METHODS:
            raise PermissionDenied(f"sandbox tokens may not call {method}")
        return Identity(
            tenant_id=claims.tenant_id,
            kind="sandbox",
            session_id=claims.session_id,
            methods=sandbox_tokens.SANDBOX_METHODS,
            sdk_session_id=claims.sdk_session_id,
        )
