"""Dialect-independent pieces of the chunk index and the snapshot table:
argument checks and the snapshot-list page token, shared by
:mod:`.postgres_workspace` and :mod:`.sqlite_workspace` so that the two
backends refuse (and normalize) exactly the same input.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sessiond.client.errors import InvalidArgument

from .metadata_common import check_id, dumps
from .records import ChunkLocation, ManifestRecord, NewSnapshot, PackRecord

#: Chunk and tree ids are keyed BLAKE3 digests.
CHUNK_ID_BYTES = 32
CHUNK_KINDS = ("data", "tree")
#: Largest value of a bigint column.
MAX_INT64 = 2**63 - 1
#: ``missing``/``lookup`` accept this many ids per call (the gRPC layer asks
#: for far fewer); more is almost certainly a caller bug, not a workload.
MAX_IDS_PER_CALL = 100_000


def check_chunk_ids(chunk_ids: Sequence[bytes], what: str = "chunk id") -> list[bytes]:
    """The ids as ``bytes``, deduplicated in first-occurrence order.
    ``InvalidArgument`` unless each is 32 bytes (``bytes``/``bytearray``/
    ``memoryview``; a ``str`` such as a hex digest is refused, not silently
    looked up as text)."""
    if isinstance(chunk_ids, bytes | bytearray | memoryview | str):
        raise InvalidArgument(f"{what}s must be a sequence of ids, not one value")
    if len(chunk_ids) > MAX_IDS_PER_CALL:
        raise InvalidArgument(f"at most {MAX_IDS_PER_CALL} {what}s per call, got {len(chunk_ids)}")
    seen: dict[bytes, None] = {}
    for raw in chunk_ids:
        seen.setdefault(check_chunk_id(raw, what), None)
    return list(seen)


def check_chunk_id(raw: object, what: str = "chunk id") -> bytes:
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise InvalidArgument(f"{what} must be bytes, got {type(raw).__name__}")
    value = bytes(raw)
    if len(value) != CHUNK_ID_BYTES:
        raise InvalidArgument(f"{what} must be {CHUNK_ID_BYTES} bytes, got {len(value)}")
    return value


def _check_int(what: str, value: object, minimum: int) -> int:
    # bool is an int subclass; a True offset is a bug, not 1.
    if type(value) is not int or not minimum <= value <= MAX_INT64:
        raise InvalidArgument(f"{what} must be an integer in [{minimum}, 2^63), got {value!r}")
    return value


def check_seq(transcript_seq: int) -> int:
    """A transcript position to search at, clamped to the bigint range (no
    stored position is larger)."""
    if type(transcript_seq) is not int or transcript_seq < 0:
        raise InvalidArgument(f"transcript_seq must be an integer >= 0, got {transcript_seq!r}")
    return min(transcript_seq, MAX_INT64)


@dataclass(frozen=True, slots=True)
class PackRows:
    """A validated :meth:`ChunkIndex.add_pack` call, chunks deduplicated
    (first occurrence wins) and sorted by id: every writer inserts index
    rows in the same order, so two packs sharing chunks cannot deadlock."""

    pack: PackRecord
    chunks: list[ChunkLocation]


def check_pack(tenant_id: str, pack: PackRecord, chunks: Sequence[ChunkLocation]) -> PackRows:
    """``InvalidArgument`` unless the pack is well-formed and every location
    lies inside it: same ``pack_id`` and ``blob_key``, ``offset + length <=
    size``, kind ``data``/``tree``, ``verified`` only on trees."""
    check_id("tenant_id", tenant_id)
    check_id("pack_id", pack.pack_id)
    check_id("blob_key", pack.blob_key)
    _check_int("pack size", pack.size, 0)
    first: dict[bytes, ChunkLocation] = {}
    for loc in chunks:
        chunk_id = check_chunk_id(loc.chunk_id)
        if loc.pack_id != pack.pack_id or loc.blob_key != pack.blob_key:
            raise InvalidArgument(
                f"chunk {chunk_id.hex()} names pack {loc.pack_id!r}, not {pack.pack_id!r}"
            )
        offset = _check_int("chunk offset", loc.offset, 0)
        length = _check_int("chunk length", loc.length, 1)
        _check_int("chunk raw_length", loc.raw_length, 0)
        if offset + length > pack.size:
            raise InvalidArgument(
                f"chunk {chunk_id.hex()} ends at byte {offset + length},"
                f" past the end of pack {pack.pack_id!r} ({pack.size} bytes)"
            )
        if loc.kind not in CHUNK_KINDS:
            raise InvalidArgument(f"chunk kind must be 'data' or 'tree', got {loc.kind!r}")
        if not isinstance(loc.verified, bool) or (loc.verified and loc.kind != "tree"):
            raise InvalidArgument("only tree chunks can be marked verified")
        first.setdefault(chunk_id, loc)
    return PackRows(pack=pack, chunks=[first[k] for k in sorted(first)])


def check_manifest(tenant_id: str, manifest: ManifestRecord) -> None:
    check_id("tenant_id", tenant_id)
    check_id("manifest_id", manifest.manifest_id)
    check_id("blob_key", manifest.blob_key)
    check_chunk_id(manifest.root_tree_id, "root tree id")
    if len(manifest.config_tree_id) != 0:
        check_chunk_id(manifest.config_tree_id, "config tree id")
    _check_int("manifest size", manifest.size, 0)


@dataclass(frozen=True, slots=True)
class SnapshotRow:
    """A validated :class:`NewSnapshot`, empty optional strings as None
    (proto3's "absent") and stats as JSON text."""

    tenant_id: str
    snapshot_id: str
    session_id: str
    parent_snapshot_id: str | None
    manifest_id: str
    trigger: str
    transcript_uuid: str | None
    transcript_seq: int
    file_history_included: bool
    stats: str
    idempotency_key: str | None


def _optional(what: str, value: str | None) -> str | None:
    if value is None or value == "":
        return None
    return check_id(what, value)


def check_new_snapshot(new: NewSnapshot, expected_epoch: int) -> SnapshotRow:
    for what, value in (
        ("tenant_id", new.tenant_id),
        ("snapshot_id", new.snapshot_id),
        ("session_id", new.session_id),
        ("manifest_id", new.manifest_id),
        ("trigger", new.trigger),
    ):
        check_id(what, value)
    _check_int("expected_epoch", expected_epoch, 0)
    _check_int("transcript_seq", new.transcript_seq, 0)
    if not isinstance(new.stats, dict):
        raise InvalidArgument("stats must be a JSON object")
    try:
        # allow_nan=False: NaN/Infinity are not JSON (jsonb refuses them).
        stats = json.dumps(new.stats, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"stats are not JSON-serializable: {exc}") from exc
    if _has_nul(new.stats):
        # PostgreSQL jsonb cannot hold it; refuse it on both backends alike.
        raise InvalidArgument("stats must not contain NUL")
    return SnapshotRow(
        tenant_id=new.tenant_id,
        snapshot_id=new.snapshot_id,
        session_id=new.session_id,
        parent_snapshot_id=_optional("parent_snapshot_id", new.parent_snapshot_id),
        manifest_id=new.manifest_id,
        trigger=new.trigger,
        transcript_uuid=_optional("transcript_uuid", new.transcript_uuid),
        transcript_seq=new.transcript_seq,
        file_history_included=bool(new.file_history_included),
        stats=stats,
        idempotency_key=_optional("idempotency_key", new.idempotency_key),
    )


def lease_lost(session_id: str, epoch: int, expected_epoch: int) -> str:
    return f"lease lost: session {session_id!r} epoch is {epoch}, caller holds {expected_epoch}"


def snapshot_list_fingerprint(tenant_id: str, session_id: str) -> str:
    """Binds a snapshot-list page token to its tenant and session (and keeps
    it apart from session-list tokens, whose fingerprint hashes other
    material)."""
    material = dumps(["snapshots", tenant_id, session_id])
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def stats_from_json(text: str) -> dict[str, Any]:
    value = json.loads(text)
    return value if isinstance(value, dict) else {}


def _has_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\0" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False
