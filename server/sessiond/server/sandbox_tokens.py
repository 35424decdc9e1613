"""Scoped sandbox tokens.

A sandbox is untrusted: it gets a short-lived token valid for its one
session and only the RPCs the hydrator needs — never a tenant API key. The
token is ``sbx1.<payload>.<mac>`` with ``payload`` the urlsafe-base64 JSON
``{"t": tenant, "s": session, "a": sdk session id, "e": expiry (unix s)}`` and
``mac`` HMAC-SHA256 over ``sbx1.<payload>`` under a key every replica shares
(kept in the metadata store). Tokens cannot be revoked individually; they
expire, and deleting the session makes every call for it fail anyway.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

from sessiond.client.errors import Unauthenticated

PREFIX = "sbx1."

# What a hydrator in a sandbox may call.
SANDBOX_METHODS = frozenset(
    {
        "/sessiond.v1.WorkspaceService/GetWorkspace",
        "/sessiond.v1.WorkspaceService/MissingChunks",
        "/sessiond.v1.WorkspaceService/PutPack",
        "/sessiond.v1.WorkspaceService/GetChunks",
        "/sessiond.v1.WorkspaceService/PutManifest",
        "/sessiond.v1.WorkspaceService/GetManifest",
        "/sessiond.v1.WorkspaceService/CommitSnapshot",
        "/sessiond.v1.TranscriptService/Append",
        "/sessiond.v1.TranscriptService/Load",
        "/sessiond.v1.TranscriptService/ListSubkeys",
        "/sessiond.v1.TranscriptService/ListSessions",
        "/sessiond.v1.TranscriptService/ListSessionSummaries",
    }
)


@dataclass(frozen=True, slots=True)
class SandboxClaims:
    tenant_id: str
    session_id: str
    sdk_session_id: str
    expires_at: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue(key: bytes, claims: SandboxClaims) -> str:
    payload = _b64(
        json.dumps(
            {
                "t": claims.tenant_id,
                "s": claims.session_id,
                "a": claims.sdk_session_id,
                "e": int(claims.expires_at),
            },
            separators=(",", ":"),
        ).encode()
    )
    signed = PREFIX + payload
    mac = hmac.new(key, signed.encode(), hashlib.sha256).digest()
    return f"{signed}.{_b64(mac)}"


def verify(key: bytes, token: str, now: float | None = None) -> SandboxClaims:
    """The claims of a genuine, unexpired token; ``Unauthenticated`` otherwise."""
    if not token.startswith(PREFIX):
        raise Unauthenticated("not a sandbox token")
    signed, _, mac_text = token.rpartition(".")
    try:
        mac = _unb64(mac_text)
    except ValueError:
        raise Unauthenticated("malformed sandbox token") from None
    expected = hmac.new(key, signed.encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(mac, expected):
        raise Unauthenticated("invalid sandbox token")
    try:
        data = json.loads(_unb64(signed[len(PREFIX) :]))
        claims = SandboxClaims(
            tenant_id=str(data["t"]),
            session_id=str(data["s"]),
            sdk_session_id=str(data["a"]),
            expires_at=float(data["e"]),
        )
    except (ValueError, KeyError, TypeError):
        raise Unauthenticated("malformed sandbox token") from None
    if claims.expires_at <= (time.time() if now is None else now):
        raise Unauthenticated("sandbox token expired")
    return claims
