"""Argument checks shared by the idempotency-key tables of both backends."""

from __future__ import annotations

from sessiond.client.errors import InvalidArgument

from .metadata_common import check_id


def check_ident(tenant_id: str, method: str, key: str, request_hash: bytes) -> None:
    """``InvalidArgument`` unless tenant, method and key are non-empty
    strings without NUL and the hash is non-empty bytes."""
    check_id("tenant_id", tenant_id)
    check_id("method", method)
    check_id("idempotency key", key)
    if not isinstance(request_hash, bytes) or not request_hash:
        raise InvalidArgument("request_hash must be non-empty bytes")
