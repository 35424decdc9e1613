"""Who is calling: the authenticated identity of the current RPC.

Set by the auth interceptor for the duration of one RPC; read by servicers.
The tenant comes only from here, never from a request field.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field

from sessiond.client.errors import PermissionDenied, Unauthenticated


@dataclass(frozen=True, slots=True)
class Identity:
    tenant_id: str
    # "api_key" for tenant credentials, "sandbox" for scoped sandbox tokens,
    # "anonymous" when auth is off (embedded default on loopback).
    kind: str
    # For sandbox tokens: the one session the token is valid for.
    session_id: str | None = None
    # For sandbox tokens: the RPC method names it may call (full paths).
    methods: frozenset[str] = field(default_factory=frozenset)
    # For sandbox tokens: the SDK session id whose transcript it may touch.
    sdk_session_id: str | None = None

    def check_session(self, session_id: str) -> None:
        """Refuse a sandbox token used for another session."""
        if self.session_id is not None and session_id != self.session_id:
            raise PermissionDenied("token is not valid for this session")

    def check_transcript(self, sdk_session_id: str) -> None:
        """Refuse a sandbox token used for another session's transcript."""
        if self.kind == "sandbox" and sdk_session_id != self.sdk_session_id:
            raise PermissionDenied("token is not valid for this transcript")


_current: contextvars.ContextVar[Identity | None] = contextvars.ContextVar(
    "sessiond_identity", default=None
)
_log_fields: contextvars.ContextVar[dict[str, object] | None] = contextvars.ContextVar(
    "sessiond_log_fields", default=None
)


def current_identity() -> Identity:
    ident = _current.get()
    if ident is None:
        raise Unauthenticated("no credentials")
    return ident


def set_identity(ident: Identity | None) -> contextvars.Token[Identity | None]:
    return _current.set(ident)


def reset_identity(token: contextvars.Token[Identity | None]) -> None:
    _current.reset(token)


def log_field(name: str, value: object) -> None:
    """Attach a field (ids, byte counts — never content) to this RPC's log line."""
    fields = _log_fields.get()
    if fields is not None:
        fields[name] = value


def begin_log_fields() -> tuple[dict[str, object], contextvars.Token[dict[str, object] | None]]:
    fields: dict[str, object] = {}
    return fields, _log_fields.set(fields)


def end_log_fields(token: contextvars.Token[dict[str, object] | None]) -> None:
    _log_fields.reset(token)
