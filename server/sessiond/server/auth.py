"""Authenticators for the server interceptor."""

from __future__ import annotations

from .identity import Identity
from .interceptors import Metadata


class AnonymousAuth:
    """Auth off: every caller is the given tenant. Only for the embedded
    default listening on loopback (the CLI refuses it on other addresses)."""

    def __init__(self, tenant_id: str) -> None:
        self._identity = Identity(tenant_id=tenant_id, kind="anonymous")

    async def authenticate(self, metadata: Metadata, method: str) -> Identity:
        return self._identity
