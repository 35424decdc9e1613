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
    # UTF-8 bytes of ``data``.
    size: int = 0


@dataclass(frozen=True, slots=True)
class AppendResult:
    appended: int
    duplicates: int
    # Storage write time, epoch ms; 0 when nothing was written.
    mtime_ms: int
    # UTF-8 bytes of the batch (set by the core, for logs and metrics).
    bytes: int = 0


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
    # GC marked the chunk unreferenced: MissingChunks reports it missing and
    # PutManifest must not count on it (see ChunkIndex). Ignored on input.
    marked: bool = False


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


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """A mutating RPC's idempotency key: the request it was first used with
    and, once that call finished, its serialized response."""

    tenant_id: str
    method: str
    key: str
    # SHA-256 of the request's deterministic serialization, key cleared.
    request_hash: bytes
    # None while the first call is still running.
    response: bytes | None
    created_at: datetime


# --- garbage collection, retention, check -----------------------------------


@dataclass(frozen=True, slots=True)
class Retention:
    """A tenant's retention settings (None: no limit)."""

    tenant_id: str
    # Keep the newest N snapshots of each session (its latest always stays).
    keep_last_snapshots: int | None = None
    # Delete sessions that stayed SUSPENDED (untouched) longer than this.
    expire_suspended_days: int | None = None


@dataclass(frozen=True, slots=True)
class JobLease:
    """Who holds a cluster-wide job (``job_leases`` row) and until when
    (database clock)."""

    name: str
    owner: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class DeletedSession:
    """A deleted session that still holds snapshot rows or transcripts."""

    session_id: str
    # The transcript to delete with it; None when there is none, or when a
    # live session of the tenant still uses the same SDK session id.
    transcript: TranscriptKey | None


@dataclass(frozen=True, slots=True)
class PackUsage:
    """A pack as the reachable chunks use it: its row (``size`` is None if
    the row is missing) and the end of the furthest chunk it holds."""

    pack_id: str
    blob_key: str | None
    size: int | None
    end: int
    chunks: int


@dataclass(frozen=True, slots=True)
class ReachStats:
    """Counts of one tenant's index against a reachable set."""

    reachable: int = 0
    # Indexed chunks no root reaches.
    unreferenced_chunks: int = 0
    marked_chunks: int = 0
    # Pack rows no chunk row names.
    empty_packs: int = 0
    # Manifest rows no snapshot references.
    unreferenced_manifests: int = 0


@dataclass(frozen=True, slots=True)
class Usage:
    """A tenant's consumption against its quotas (None: unlimited)."""

    stored_bytes: int
    reserved_bytes: int
    quota_bytes: int | None
    live_sessions: int
    quota_sessions: int | None
