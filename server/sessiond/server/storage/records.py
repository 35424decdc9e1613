"""Plain records that cross the storage boundary (no grpc, no SQL)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class SessionState(enum.StrEnum):
    """Lifecycle state of a session (mirrors sessiond.v1.SessionState)."""

    NEW = "new"
    HYDRATING = "hydrating"
    ACTIVE = "active"
    SUSPENDING = "suspending"
    SUSPENDED = "suspended"
    DELETED = "deleted"


@dataclass(frozen=True, slots=True)
class Tenant:
    tenant_id: str
    name: str
    # 32 random bytes: the key of the tenant's keyed-BLAKE3 chunk ids.
    chunk_key: bytes
    created_at: datetime
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class NewSession:
    """What a caller supplies to create a session."""

    tenant_id: str
    session_id: str
    labels: dict[str, str] = field(default_factory=dict)
    agent_options: dict[str, Any] = field(default_factory=dict)
    snapshot_policy: dict[str, Any] = field(default_factory=dict)
    forked_from: str | None = None


@dataclass(frozen=True, slots=True)
class SessionRecord:
    tenant_id: str
    session_id: str
    state: SessionState
    labels: dict[str, str]
    agent_options: dict[str, Any]
    snapshot_policy: dict[str, Any]
    sdk_session_id: str | None
    latest_snapshot_id: str | None
    forked_from: str | None
    sandbox_id: str | None
    sandbox_cwd: str | None
    turn_count: int
    # Fencing epoch: bumped by every takeover; stale holders are refused.
    epoch: int
    created_at: datetime
    updated_at: datetime
    last_active_at: datetime
    # Project key the session's transcript is stored under (that of the cwd
    # it last ran in); None before the first turn.
    project_key: str | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    # Opaque; empty on the last page.
    next_token: str = ""


@dataclass(frozen=True, slots=True)
class TranscriptKey:
    project_key: str
    session_id: str
    # "" for the main transcript.
    subpath: str = ""


@dataclass(frozen=True, slots=True)
class TranscriptEntry:
    """One entry as the SDK mirrored it: JSON object text, plus its parsed form
    (for the summary fold) and its ``uuid`` (the idempotency key) if any."""

    data: str
    parsed: dict[str, Any]
    uuid: str | None


@dataclass(frozen=True, slots=True)
class AppendResult:
    appended: int
    duplicates: int
    # Storage write time, epoch ms; 0 when nothing was written.
    mtime_ms: int


@dataclass(frozen=True, slots=True)
class TranscriptSession:
    session_id: str
    mtime_ms: int


@dataclass(frozen=True, slots=True)
class TranscriptSummary:
    session_id: str
    mtime_ms: int
    # The SDK SessionSummaryEntry "data" object, verbatim.
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    key_id: str
    tenant_id: str
    # SHA-256 of the key's secret part; the secret itself is never stored.
    secret_hash: bytes
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class PackRecord:
    pack_id: str
    # Blob key of the pack object.
    blob_key: str
    size: int


@dataclass(frozen=True, slots=True)
class ChunkLocation:
    """Where a chunk's stored (compressed, possibly sealed) bytes live."""

    chunk_id: bytes
    pack_id: str
    blob_key: str
    offset: int
    length: int
    raw_length: int
    # "data" or "tree".
    kind: str
    # Trees only: every chunk and subtree the tree references is stored.
    verified: bool = False


@dataclass(frozen=True, slots=True)
class ManifestRecord:
    manifest_id: str
    blob_key: str
    root_tree_id: bytes
    # Empty when no Claude config state rode along.
    config_tree_id: bytes
    size: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class NewSnapshot:
    tenant_id: str
    snapshot_id: str
    session_id: str
    parent_snapshot_id: str | None
    manifest_id: str
    trigger: str
    transcript_uuid: str | None = None
    transcript_seq: int = 0
    file_history_included: bool = False
    stats: dict[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    tenant_id: str
    snapshot_id: str
    session_id: str
    parent_snapshot_id: str | None
    manifest_id: str
    trigger: str
    transcript_uuid: str | None
    transcript_seq: int
    file_history_included: bool
    stats: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class SessionChanges:
    """Fields a fenced update may change. ``None`` leaves a field as it is;
    an empty string clears a text field (sets it NULL)."""

    state: SessionState | None = None
    sandbox_id: str | None = None
    sandbox_cwd: str | None = None
    sdk_session_id: str | None = None
    project_key: str | None = None
    latest_snapshot_id: str | None = None
    # Added to turn_count.
    add_turns: int = 0
    # Set last_active_at to the database clock's now.
    touch: bool = False
