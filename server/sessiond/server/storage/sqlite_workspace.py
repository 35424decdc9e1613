"""The chunk index and the snapshot table on SQLite (see :mod:`.metadata` for
the contracts, :mod:`.sqlite_meta` for the threading model,
``migrations/sqlite/0003_workspace.sql`` for the schema).

Every method body is one transaction in the database thread. Id lists are
queried in slices of :data:`IDS_PER_STATEMENT` (``IN (?, …)``; SQLite caps
bound parameters and the statement cache keeps one plan per slice size);
``add_pack`` inserts with one ``executemany``. ``commit`` needs no row lock:
``BEGIN IMMEDIATE`` already serializes it against every other writer.
"""

from __future__ import annotations

import builtins
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from sessiond.client.errors import Aborted, AlreadyExists, FailedPrecondition, NotFound

from .metadata_common import check_page_size, decode_page_token, encode_page_token, from_micros
from .records import (
    ChunkLocation,
    ManifestRecord,
    NewSnapshot,
    PackRecord,
    Page,
    SessionState,
    SnapshotRecord,
)
from .workspace_common import (
    check_chunk_ids,
    check_manifest,
    check_new_snapshot,
    check_pack,
    check_seq,
    lease_lost,
    snapshot_list_fingerprint,
    stats_from_json,
)

if TYPE_CHECKING:
    from .sqlite_meta import SqliteDb

Clock = Callable[[], int]

#: Ids per ``IN (…)`` list: with the tenant id, 500 bound parameters.
IDS_PER_STATEMENT = 499

_MANIFEST_COLUMNS = "manifest_id, blob_key, root_tree_id, config_tree_id, size, created_at"
_SNAPSHOT_COLUMNS = (
    "tenant_id, snapshot_id, session_id, parent_snapshot_id, manifest_id, trigger,"
    " transcript_uuid, transcript_seq, file_history_included, stats, created_at"
)


def _slices(ids: Sequence[bytes]) -> Iterator[Sequence[bytes]]:
    for start in range(0, len(ids), IDS_PER_STATEMENT):
        yield ids[start : start + IDS_PER_STATEMENT]


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def _is_fk_violation(exc: sqlite3.IntegrityError) -> bool:
    return "FOREIGN KEY constraint failed" in str(exc)


def _location(row: Any) -> ChunkLocation:
    return ChunkLocation(
        chunk_id=bytes(row[0]),
        pack_id=row[1],
        blob_key=row[2],
        offset=row[3],
        length=row[4],
        raw_length=row[5],
        kind=row[6],
        verified=bool(row[7]),
        marked=bool(row[8]),
    )


def _manifest(row: Any) -> ManifestRecord:
    return ManifestRecord(
        manifest_id=row[0],
        blob_key=row[1],
        root_tree_id=bytes(row[2]),
        config_tree_id=bytes(row[3]),
        size=row[4],
        created_at=from_micros(row[5]),
    )


def _snapshot(row: Any) -> SnapshotRecord:
    return SnapshotRecord(
        tenant_id=row[0],
        snapshot_id=row[1],
        session_id=row[2],
        parent_snapshot_id=row[3],
        manifest_id=row[4],
        trigger=row[5],
        transcript_uuid=row[6],
        transcript_seq=row[7],
        file_history_included=bool(row[8]),
        stats=stats_from_json(row[9]),
        created_at=from_micros(row[10]),
    )


class SqliteChunkIndex:
    def __init__(self, db: SqliteDb, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def missing(self, tenant_id: str, chunk_ids: Sequence[bytes]) -> builtins.list[bytes]:
        ids = check_chunk_ids(chunk_ids)
        if not ids:
            return []

        def tx(conn: sqlite3.Connection) -> set[bytes]:
            have: set[bytes] = set()
            for part in _slices(ids):
                # A marked chunk counts as missing: the snapshot that needs it
                # uploads it again, and add_pack un-marks it.
                rows = conn.execute(
                    "SELECT chunk_id FROM chunks WHERE tenant_id = ?"
                    f" AND chunk_id IN ({_marks(len(part))}) AND gc_marked_at IS NULL",
                    (tenant_id, *part),
                )
                have.update(bytes(r[0]) for r in rows)
            return have

        have = await self._db.call("find missing chunks", tx, write=False)
        return [i for i in ids if i not in have]

    async def add_pack(
        self, tenant_id: str, pack: PackRecord, chunks: Sequence[ChunkLocation]
    ) -> int:
        locs = check_pack(tenant_id, pack, chunks).chunks

        def tx(conn: sqlite3.Connection) -> int:
            now = self._clock()
            try:
                inserted = conn.execute(
                    "INSERT INTO packs (tenant_id, pack_id, blob_key, size, created_at)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant_id, pack_id) DO NOTHING",
                    (tenant_id, pack.pack_id, pack.blob_key, pack.size, now),
                ).rowcount
            except sqlite3.IntegrityError as exc:
                if _is_fk_violation(exc):
                    raise NotFound(f"tenant {tenant_id!r} not found") from exc
                raise
            if not inserted:
                prev = conn.execute(
                    "SELECT blob_key, size FROM packs WHERE tenant_id = ? AND pack_id = ?",
                    (tenant_id, pack.pack_id),
                ).fetchone()
                if prev is None or tuple(prev) != (pack.blob_key, pack.size):
                    raise AlreadyExists(
                        f"pack {pack.pack_id!r} is already recorded with another blob or size"
                    )
            before = conn.total_changes
            # A chunk GC marked moves here (un-marked, restamped: a whole
            # grace period before its manifest arrives); any other existing
            # chunk keeps its first location.
            conn.executemany(
                "INSERT INTO chunks (tenant_id, chunk_id, pack_id, pack_offset, length,"
                " raw_length, kind, verified, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (tenant_id, chunk_id) DO UPDATE SET pack_id = excluded.pack_id,"
                " pack_offset = excluded.pack_offset, length = excluded.length,"
                " raw_length = excluded.raw_length, kind = excluded.kind,"
                " verified = excluded.verified, gc_marked_at = NULL,"
                " created_at = excluded.created_at WHERE chunks.gc_marked_at IS NOT NULL",
                (
                    (
                        tenant_id,
                        loc.chunk_id,
                        pack.pack_id,
                        loc.offset,
                        loc.length,
                        loc.raw_length,
                        loc.kind,
                        int(loc.verified),
                        now,
                    )
                    for loc in locs
                ),
            )
            return conn.total_changes - before

        return await self._db.call("add pack", tx)

    async def lookup(
        self, tenant_id: str, chunk_ids: Sequence[bytes]
    ) -> dict[bytes, ChunkLocation]:
        ids = check_chunk_ids(chunk_ids)
        if not ids:
            return {}

        def tx(conn: sqlite3.Connection) -> dict[bytes, ChunkLocation]:
            found: dict[bytes, ChunkLocation] = {}
            for part in _slices(ids):
                rows = conn.execute(
                    "SELECT c.chunk_id, c.pack_id, p.blob_key, c.pack_offset, c.length,"
                    " c.raw_length, c.kind, c.verified, c.gc_marked_at IS NOT NULL"
                    " FROM chunks c JOIN packs p"
                    " ON p.tenant_id = c.tenant_id AND p.pack_id = c.pack_id"
                    f" WHERE c.tenant_id = ? AND c.chunk_id IN ({_marks(len(part))})",
                    (tenant_id, *part),
                )
                for r in rows:
                    loc = _location(r)
                    found[loc.chunk_id] = loc
            return found

        return await self._db.call("look up chunks", tx, write=False)

    async def mark_verified(self, tenant_id: str, tree_ids: Sequence[bytes]) -> None:
        ids = check_chunk_ids(tree_ids, "tree id")
        if not ids:
            return

        def tx(conn: sqlite3.Connection) -> None:
            # The walk that led here may have read a chunk just before GC
            # marked it (GC clears every flag when it marks, but this call
            # may come after): while anything is marked no flag is set.
            # BEGIN IMMEDIATE serializes this against GC's mark transaction.
            marked = conn.execute(
                "SELECT 1 FROM chunks WHERE tenant_id = ? AND gc_marked_at IS NOT NULL LIMIT 1",
                (tenant_id,),
            ).fetchone()
            if marked is not None:
                return
            for part in _slices(ids):
                conn.execute(
                    "UPDATE chunks SET verified = 1 WHERE tenant_id = ?"
                    f" AND chunk_id IN ({_marks(len(part))}) AND kind = 'tree' AND verified = 0",
                    (tenant_id, *part),
                )

        await self._db.call("mark trees verified", tx)


class SqliteSnapshotTable:
    def __init__(self, db: SqliteDb, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def put_manifest(self, tenant_id: str, manifest: ManifestRecord) -> ManifestRecord:
        check_manifest(tenant_id, manifest)
        values = (
            tenant_id,
            manifest.manifest_id,
            manifest.blob_key,
            bytes(manifest.root_tree_id),
            bytes(manifest.config_tree_id),
            manifest.size,
        )

        def tx(conn: sqlite3.Connection) -> ManifestRecord:
            try:
                conn.execute(
                    "INSERT INTO manifests (tenant_id, manifest_id, blob_key, root_tree_id,"
                    " config_tree_id, size, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (tenant_id, manifest_id) DO NOTHING",
                    (*values, self._clock()),
                )
            except sqlite3.IntegrityError as exc:
                if _is_fk_violation(exc):
                    raise NotFound(f"tenant {tenant_id!r} not found") from exc
                raise
            return _manifest(_get_manifest(conn, tenant_id, manifest.manifest_id))

        return await self._db.call("put manifest", tx)

    async def get_manifest(self, tenant_id: str, manifest_id: str) -> ManifestRecord:
        def tx(conn: sqlite3.Connection) -> ManifestRecord:
            row = _get_manifest(conn, tenant_id, manifest_id)
            if row is None:
                raise NotFound(f"manifest {manifest_id!r} not found")
            return _manifest(row)

        return await self._db.call("get manifest", tx, write=False)

    async def commit(self, new: NewSnapshot, expected_epoch: int) -> SnapshotRecord:
        snap = check_new_snapshot(new, expected_epoch)

        def tx(conn: sqlite3.Connection) -> SnapshotRecord:
            session = conn.execute(
                "SELECT state, epoch FROM sessions WHERE tenant_id = ? AND session_id = ?",
                (snap.tenant_id, snap.session_id),
            ).fetchone()
            if session is None:
                raise NotFound(f"session {snap.session_id!r} not found")
            if snap.idempotency_key is not None:
                # Before the lease checks: a retry whose first attempt landed
                # gets that snapshot back even if the lease has moved on since.
                done = conn.execute(
                    f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshots WHERE tenant_id = ?"
                    " AND session_id = ? AND idempotency_key = ?",
                    (snap.tenant_id, snap.session_id, snap.idempotency_key),
                ).fetchone()
                if done is not None:
                    return _snapshot(done)
            if session[0] == SessionState.DELETED:
                raise FailedPrecondition(f"session {snap.session_id!r} is deleted")
            if session[1] != expected_epoch:
                raise Aborted(lease_lost(snap.session_id, session[1], expected_epoch))
            if _get_manifest(conn, snap.tenant_id, snap.manifest_id) is None:
                raise NotFound(f"manifest {snap.manifest_id!r} not found")
            # Strictly after the session's previous snapshot even if the
            # process clock stepped back: the newest is always the latest.
            prev = conn.execute(
                "SELECT max(created_at) FROM snapshots WHERE tenant_id = ? AND session_id = ?",
                (snap.tenant_id, snap.session_id),
            ).fetchone()[0]
            now = self._clock() if prev is None else max(self._clock(), prev + 1)
            try:
                row = conn.execute(
                    "INSERT INTO snapshots (tenant_id, snapshot_id, session_id,"
                    " parent_snapshot_id, manifest_id, trigger, transcript_uuid, transcript_seq,"
                    " file_history_included, stats, idempotency_key, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    f" RETURNING {_SNAPSHOT_COLUMNS}",
                    (
                        snap.tenant_id,
                        snap.snapshot_id,
                        snap.session_id,
                        snap.parent_snapshot_id,
                        snap.manifest_id,
                        snap.trigger,
                        snap.transcript_uuid,
                        snap.transcript_seq,
                        int(snap.file_history_included),
                        snap.stats,
                        snap.idempotency_key,
                        now,
                    ),
                ).fetchone()
            except sqlite3.IntegrityError as exc:
                if "UNIQUE constraint failed" in str(exc) or "PRIMARY KEY" in str(exc):
                    raise AlreadyExists(f"snapshot {snap.snapshot_id!r} already exists") from exc
                raise
            conn.execute(
                "UPDATE sessions SET latest_snapshot_id = ?, updated_at = ?"
                " WHERE tenant_id = ? AND session_id = ?",
                (snap.snapshot_id, now, snap.tenant_id, snap.session_id),
            )
            return _snapshot(row)

        return await self._db.call("commit snapshot", tx)

    async def get(self, tenant_id: str, snapshot_id: str) -> SnapshotRecord:
        def tx(conn: sqlite3.Connection) -> SnapshotRecord:
            row = conn.execute(
                f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshots"
                " WHERE tenant_id = ? AND snapshot_id = ?",
                (tenant_id, snapshot_id),
            ).fetchone()
            if row is None:
                raise NotFound(f"snapshot {snapshot_id!r} not found")
            return _snapshot(row)

        return await self._db.call("get snapshot", tx, write=False)

    async def list(
        self, tenant_id: str, session_id: str, *, page_size: int = 100, page_token: str = ""
    ) -> Page[SnapshotRecord]:
        size = check_page_size(page_size)
        fingerprint = snapshot_list_fingerprint(tenant_id, session_id)
        cursor = decode_page_token(page_token, fingerprint)

        def tx(conn: sqlite3.Connection) -> builtins.list[Any]:
            if cursor is None:
                rows = conn.execute(
                    f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshots"
                    " WHERE tenant_id = ? AND session_id = ?"
                    " ORDER BY created_at DESC, snapshot_id DESC LIMIT ?",
                    (tenant_id, session_id, size + 1),
                ).fetchall()
                if not rows:
                    _require_session(conn, tenant_id, session_id)
                return rows
            return conn.execute(
                f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshots"
                " WHERE tenant_id = ? AND session_id = ? AND (created_at, snapshot_id) < (?, ?)"
                " ORDER BY created_at DESC, snapshot_id DESC LIMIT ?",
                (tenant_id, session_id, cursor[0], cursor[1], size + 1),
            ).fetchall()

        rows = await self._db.call("list snapshots", tx, write=False)
        items = [_snapshot(r) for r in rows[:size]]
        token = ""
        if len(rows) > size:
            last = rows[size - 1]
            token = encode_page_token(fingerprint, last[10], last[1])
        return Page(items=items, next_token=token)

    async def covering(
        self, tenant_id: str, session_id: str, transcript_seq: int
    ) -> SnapshotRecord:
        seq = check_seq(transcript_seq)

        def tx(conn: sqlite3.Connection) -> SnapshotRecord:
            row = conn.execute(
                f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshots"
                " WHERE tenant_id = ? AND session_id = ? AND transcript_seq >= ?"
                " ORDER BY transcript_seq ASC, created_at DESC, snapshot_id DESC LIMIT 1",
                (tenant_id, session_id, seq),
            ).fetchone()
            if row is None:
                raise NotFound(
                    f"session {session_id!r} has no snapshot at or after"
                    f" transcript seq {transcript_seq}"
                )
            return _snapshot(row)

        return await self._db.call("find covering snapshot", tx, write=False)


def _get_manifest(conn: sqlite3.Connection, tenant_id: str, manifest_id: str) -> Any:
    return conn.execute(
        f"SELECT {_MANIFEST_COLUMNS} FROM manifests WHERE tenant_id = ? AND manifest_id = ?",
        (tenant_id, manifest_id),
    ).fetchone()


def _require_session(conn: sqlite3.Connection, tenant_id: str, session_id: str) -> None:
    found = conn.execute(
        "SELECT 1 FROM sessions WHERE tenant_id = ? AND session_id = ?", (tenant_id, session_id)
    ).fetchone()
    if found is None:
        raise NotFound(f"session {session_id!r} not found")
