"""The sessiond Python client: typed clients, the error tree and the
Claude Agent SDK SessionStore adapter."""

from __future__ import annotations

from .aio import AsyncClient
from .errors import (
    Aborted,
    AlreadyExists,
    DataLoss,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    SessiondError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from .session_store import SessiondSessionStore

__all__ = [
    "Aborted",
    "AlreadyExists",
    "AsyncClient",
    "DataLoss",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "SessiondError",
    "SessiondSessionStore",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
]
