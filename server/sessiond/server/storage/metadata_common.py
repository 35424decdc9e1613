"""Dialect-independent pieces shared by the MetadataStore backends.

Argument checks, the opaque session-list page token, transcript batch
de-duplication and the SDK summary fold live here once, so that SQLite and
PostgreSQL cannot drift apart on anything the contract suite checks.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any, cast

from claude_agent_sdk import SessionKey, SessionStoreEntry, SessionSummaryEntry
from claude_agent_sdk import fold_session_summary as _sdk_fold

from sessiond.client.errors import FailedPrecondition, InvalidArgument

from .records import TranscriptEntry, TranscriptKey

#: Upper bound on one page of sessions; larger requests are capped.
MAX_PAGE_SIZE = 1000

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TOKEN_VERSION = 1


def check_id(what: str, value: str) -> str:
    """``value`` if it is a non-empty string without NUL (which PostgreSQL
    text cannot hold, so both backends refuse it alike), else ``InvalidArgument``."""
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{what} must be a non-empty string")
    if "\0" in value:
        raise InvalidArgument(f"{what} must not contain NUL")
    return value


# Every table holding a tenant's rows, children before the parents their
# foreign keys name: what TenantTable.purge deletes before the tenant row.
# A new table with a tenant_id column belongs here (the contract suite
# checks that a purge leaves no row behind in any such table).
TENANT_TABLES = (
    "snapshots",
    "chunks",
    "packs",
    "manifests",
    "transcript_entries",
    "transcript_keys",
    "transcript_summaries",
    "sessions",
    "api_keys",
    "tenant_usage",
    "idempotency_keys",
)


def check_data_key(wrapped: bytes, master_id: str) -> None:
    if not isinstance(wrapped, bytes) or not wrapped:
        raise InvalidArgument("a wrapped data key must be non-empty bytes")
    check_id("master_id", master_id)


def being_deleted(tenant_id: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"tenant {tenant_id!r} is being deleted; finish with `sessiond admin tenants rm`"
    )


def not_shredded(tenant_id: str) -> FailedPrecondition:
    return FailedPrecondition(f"tenant {tenant_id!r} must be shredded before its rows are purged")


def check_key(key: TranscriptKey) -> TranscriptKey:
    check_id("project_key", key.project_key)
    check_id("session_id", key.session_id)
    if not isinstance(key.subpath, str) or "\0" in key.subpath:
        raise InvalidArgument("subpath must be a string without NUL")
    return key


def check_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    """Labels as a plain dict of non-empty string keys to string values
    (no NUL: PostgreSQL jsonb rejects it); else ``InvalidArgument``."""
    out: dict[str, str] = {}
    for k, v in (labels or {}).items():
        if not isinstance(k, str) or not k or not isinstance(v, str):
            raise InvalidArgument(f"labels must map non-empty strings to strings: {k!r}")
        if "\0" in k or "\0" in v:
            raise InvalidArgument(f"label {k!r} contains NUL")
        out[k] = v
    return out


def describe_key(key: TranscriptKey) -> str:
    """``project/session[/subpath]`` for messages (ids only, never content)."""
    base = f"{key.project_key}/{key.session_id}"
    return f"{base}/{key.subpath}" if key.subpath else base


def check_page_size(page_size: int) -> int:
    """Page sizes below 1 are ``InvalidArgument``; above MAX_PAGE_SIZE are capped."""
    if not isinstance(page_size, int) or page_size < 1:
        raise InvalidArgument(f"page_size must be a positive integer, got {page_size!r}")
    return min(page_size, MAX_PAGE_SIZE)


def check_label_changes(set_labels: Mapping[str, str], remove_labels: Sequence[str]) -> None:
    """A key both set and removed in one update is ambiguous: ``InvalidArgument``."""
    if isinstance(remove_labels, str):
        raise InvalidArgument("remove_labels must be a sequence of keys, not a string")
    both = sorted(set(set_labels) & set(remove_labels))
    if both:
        raise InvalidArgument(f"labels both set and removed in one update: {', '.join(both)}")


def dumps(value: Any) -> str:
    """Compact JSON; ASCII-only so that any str (even a lone surrogate) encodes."""
    return json.dumps(value, separators=(",", ":"))


# --- timestamps --------------------------------------------------------------


def micros(dt: datetime) -> int:
    """Exact integer microseconds since the Unix epoch of an aware datetime."""
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


# --- page tokens -------------------------------------------------------------


def list_fingerprint(
    tenant_id: str, labels: Mapping[str, str] | None, include_deleted: bool
) -> str:
    """Binds a page token to the query that produced it: a token replayed
    with another tenant or filter is rejected instead of silently skipping."""
    material = dumps([tenant_id, sorted((labels or {}).items()), include_deleted])
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def encode_page_token(fingerprint: str, created_us: int, session_id: str) -> str:
    """Opaque keyset cursor: urlsafe base64 of JSON ``[v, fp, created_us, id]``."""
    raw = dumps([_TOKEN_VERSION, fingerprint, created_us, session_id]).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_page_token(token: str, fingerprint: str) -> tuple[int, str] | None:
    """``None`` for the first page, else the ``(created_us, session_id)`` the
    previous page ended at. ``InvalidArgument`` for anything not produced by
    :func:`encode_page_token` for the same query."""
    if not token:
        return None
    if not isinstance(token, str) or len(token) > 4096:
        raise InvalidArgument("malformed page token")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise InvalidArgument("malformed page token") from exc
    if (
        not isinstance(value, list)
        or len(value) != 4
        or value[0] != _TOKEN_VERSION
        or not isinstance(value[1], str)
        or type(value[2]) is not int
        or not isinstance(value[3], str)
    ):
        raise InvalidArgument("malformed page token")
    if value[1] != fingerprint:
        raise InvalidArgument("page token does not belong to this query")
    return value[2], value[3]


# --- transcripts -------------------------------------------------------------


def dedupe_batch(entries: Sequence[TranscriptEntry]) -> list[TranscriptEntry]:
    """The batch without entries whose uuid already appeared earlier in it
    (first occurrence wins; entries without uuid are all kept)."""
    seen: set[str] = set()
    out: list[TranscriptEntry] = []
    for entry in entries:
        if entry.uuid is not None:
            if entry.uuid in seen:
                continue
            seen.add(entry.uuid)
        out.append(entry)
    return out


def fold_summary(
    key: TranscriptKey,
    prev: tuple[int, dict[str, Any]] | None,
    new_entries: Sequence[TranscriptEntry],
) -> dict[str, Any]:
    """The summary ``data`` after folding ``new_entries`` (only the entries
    this append really stored) into ``prev`` = ``(mtime_ms, data)``, with
    the SDK's own ``fold_session_summary``. The caller stamps the mtime."""
    sdk_key: SessionKey = {"project_key": key.project_key, "session_id": key.session_id}
    sdk_prev: SessionSummaryEntry | None = None
    if prev is not None:
        sdk_prev = {"session_id": key.session_id, "mtime": prev[0], "data": prev[1]}
    parsed = [cast(SessionStoreEntry, e.parsed) for e in new_entries]
    return dict(_sdk_fold(sdk_prev, sdk_key, parsed)["data"])


# --- migrations --------------------------------------------------------------

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(dialect: str) -> list[Migration]:
    """The packaged ``migrations/<dialect>/NNNN_name.sql`` files, in version
    order. Versions must be 1, 2, 3, … without gaps: a gap means a file was
    lost in packaging, which must not silently skip a schema change."""
    folder = resources.files(__package__).joinpath("migrations", dialect)
    found: list[Migration] = []
    for item in folder.iterdir():
        m = _MIGRATION_NAME.match(item.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), item.read_text("utf-8")))
    found.sort(key=lambda mig: mig.version)
    if [mig.version for mig in found] != list(range(1, len(found) + 1)):
        versions = [mig.version for mig in found]
        raise RuntimeError(f"{dialect} migrations are not numbered 1..n: {versions}")
    return found
