"""The chunk index and the snapshot table on PostgreSQL (see :mod:`.metadata`
for the contracts, ``migrations/postgres/0003_workspace.sql`` for the schema).

Batch shapes: ``missing``/``lookup``/``mark_verified`` send all ids as one
``bytea[]`` parameter (``= ANY($2)``, an index scan on the primary key);
``add_pack`` inserts every chunk row in one ``INSERT … SELECT FROM unnest``.
``commit`` serializes per session on the session row (``FOR UPDATE``), so
the epoch it checks cannot change before the snapshot row is in.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence

import asyncpg

from sessiond.client.errors import Aborted, AlreadyExists, FailedPrecondition, NotFound

from .metadata_common import (
    check_page_size,
    decode_page_token,
    encode_page_token,
    from_micros,
    micros,
)
from .postgres_errors import run
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

_MANIFEST_COLUMNS = "manifest_id, blob_key, root_tree_id, config_tree_id, size, created_at"
_SNAPSHOT_COLUMNS = (
    "tenant_id, snapshot_id, session_id, parent_snapshot_id, manifest_id, trigger,"
    " transcript_uuid, transcript_seq, file_history_included, stats, created_at"
)


# A chunk GC marked moves to the new pack (un-marked, with a fresh created_at
# so it gets a whole grace period before its manifest arrives); any other
# existing chunk keeps its first location. ORDER BY: every writer takes the
# index rows' locks in id order, so concurrent packs sharing chunks never
# deadlock.
_INSERT_CHUNKS = (
    "INSERT INTO chunks (tenant_id, chunk_id, pack_id, pack_offset, length,"
    " raw_length, kind, verified)"
    " SELECT $1, c.id, $2, c.off, c.len, c.raw, c.kind, c.verified"
    " FROM unnest($3::bytea[], $4::bigint[], $5::bigint[], $6::bigint[],"
    " $7::text[], $8::boolean[]) AS c(id, off, len, raw, kind, verified)"
    " ORDER BY c.id"
    " ON CONFLICT (tenant_id, chunk_id) DO UPDATE SET pack_id = EXCLUDED.pack_id,"
    " pack_offset = EXCLUDED.pack_offset, length = EXCLUDED.length,"
    " raw_length = EXCLUDED.raw_length, kind = EXCLUDED.kind,"
    " verified = EXCLUDED.verified, gc_marked_at = NULL, created_at = now()"
    " WHERE chunks.gc_marked_at IS NOT NULL"
)


def _location(row: asyncpg.Record) -> ChunkLocation:
    return ChunkLocation(
        chunk_id=bytes(row["chunk_id"]),
        pack_id=row["pack_id"],
        blob_key=row["blob_key"],
        offset=row["pack_offset"],
        length=row["length"],
        raw_length=row["raw_length"],
        kind=row["kind"],
        verified=row["verified"],
        marked=row["marked"],
    )


def _manifest(row: asyncpg.Record) -> ManifestRecord:
    return ManifestRecord(
        manifest_id=row["manifest_id"],
        blob_key=row["blob_key"],
        root_tree_id=bytes(row["root_tree_id"]),
        config_tree_id=bytes(row["config_tree_id"]),
        size=row["size"],
        created_at=row["created_at"],
    )


def _snapshot(row: asyncpg.Record) -> SnapshotRecord:
    return SnapshotRecord(
        tenant_id=row["tenant_id"],
        snapshot_id=row["snapshot_id"],
        session_id=row["session_id"],
        parent_snapshot_id=row["parent_snapshot_id"],
        manifest_id=row["manifest_id"],
        trigger=row["trigger"],
        transcript_uuid=row["transcript_uuid"],
        transcript_seq=row["transcript_seq"],
        file_history_included=row["file_history_included"],
        stats=stats_from_json(row["stats"]),
        created_at=row["created_at"],
    )


class PgChunkIndex:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def missing(self, tenant_id: str, chunk_ids: Sequence[bytes]) -> builtins.list[bytes]:
        ids = check_chunk_ids(chunk_ids)
        if not ids:
            return []

        async def q(conn: asyncpg.Connection) -> set[bytes]:
            rows = await conn.fetch(
                # A marked chunk counts as missing: the snapshot that needs it
                # uploads it again, and add_pack un-marks it.
                "SELECT chunk_id FROM chunks WHERE tenant_id = $1 AND chunk_id = ANY($2::bytea[])"
                " AND gc_marked_at IS NULL",
                tenant_id,
                ids,
            )
            return {bytes(r[0]) for r in rows}

        have = await run(self._pool, "find missing chunks", q, transaction=False)
        return [i for i in ids if i not in have]

    async def add_pack(
        self, tenant_id: str, pack: PackRecord, chunks: Sequence[ChunkLocation]
    ) -> int:
        rows = check_pack(tenant_id, pack, chunks)
        locs = rows.chunks

        async def q(conn: asyncpg.Connection) -> int:
            try:
                inserted = await conn.fetchval(
                    "INSERT INTO packs (tenant_id, pack_id, blob_key, size) VALUES ($1, $2, $3, $4)"
                    " ON CONFLICT (tenant_id, pack_id) DO NOTHING RETURNING true",
                    tenant_id,
                    pack.pack_id,
                    pack.blob_key,
                    pack.size,
                )
            except asyncpg.ForeignKeyViolationError as exc:
                raise NotFound(f"tenant {tenant_id!r} not found") from exc
            if not inserted:
                # A retried add_pack (its first attempt committed) is a no-op;
                # the same id for other bytes is a caller bug.
                prev = await conn.fetchrow(
                    "SELECT blob_key, size FROM packs WHERE tenant_id = $1 AND pack_id = $2",
                    tenant_id,
                    pack.pack_id,
                )
                if prev is None or (prev["blob_key"], prev["size"]) != (pack.blob_key, pack.size):
                    raise AlreadyExists(
                        f"pack {pack.pack_id!r} is already recorded with another blob or size"
                    )
            if not locs:
                return 0
            chunk_args = (
                tenant_id,
                pack.pack_id,
                [loc.chunk_id for loc in locs],
                [loc.offset for loc in locs],
                [loc.length for loc in locs],
                [loc.raw_length for loc in locs],
                [loc.kind for loc in locs],
                [loc.verified for loc in locs],
            )
            try:
                status: str = await conn.execute(_INSERT_CHUNKS, *chunk_args)
            except asyncpg.ForeignKeyViolationError as exc:
                # GC deleted the (then empty) pack row while we waited on its
                # lock, and its object with it: the caller must store it again.
                raise Aborted(
                    f"pack {pack.pack_id!r} was garbage-collected meanwhile; retry the upload"
                ) from exc
            return int(status.rsplit(" ", 1)[1])

        return await run(self._pool, "add pack", q)

    async def lookup(
        self, tenant_id: str, chunk_ids: Sequence[bytes]
    ) -> dict[bytes, ChunkLocation]:
        ids = check_chunk_ids(chunk_ids)
        if not ids:
            return {}

        async def q(conn: asyncpg.Connection) -> builtins.list[asyncpg.Record]:
            rows: builtins.list[asyncpg.Record] = await conn.fetch(
                "SELECT c.chunk_id, c.pack_id, p.blob_key, c.pack_offset, c.length,"
                " c.raw_length, c.kind, c.verified, c.gc_marked_at IS NOT NULL AS marked"
                " FROM chunks c JOIN packs p ON p.tenant_id = c.tenant_id AND p.pack_id = c.pack_id"
                " WHERE c.tenant_id = $1 AND c.chunk_id = ANY($2::bytea[])",
                tenant_id,
                ids,
            )
            return rows

        rows = await run(self._pool, "look up chunks", q, transaction=False)
        return {bytes(r["chunk_id"]): _location(r) for r in rows}

    async def mark_verified(self, tenant_id: str, tree_ids: Sequence[bytes]) -> None:
        ids = check_chunk_ids(tree_ids, "tree id")
        if not ids:
            return

        async def q(conn: asyncpg.Connection) -> None:
            # FOR SHARE waits for a GC mark transaction of the tenant (it
            # holds FOR NO KEY UPDATE) and keeps the next one out until we
            # commit: either GC's reset of the flags comes after us, or we see
            # its marks and set nothing. The walk that led here may have read
            # a chunk just before GC marked it, so while anything is marked
            # no flag is set (the precise rule needs the walk's start).
            await conn.execute("SELECT 1 FROM tenants WHERE tenant_id = $1 FOR SHARE", tenant_id)
            await conn.execute(
                "UPDATE chunks SET verified = true WHERE tenant_id = $1"
                " AND chunk_id = ANY($2::bytea[]) AND kind = 'tree' AND NOT verified"
                " AND NOT EXISTS (SELECT 1 FROM chunks m WHERE m.tenant_id = $1"
                " AND m.gc_marked_at IS NOT NULL)",
                tenant_id,
                sorted(ids),
            )

        await run(self._pool, "mark trees verified", q)


class PgSnapshotTable:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def put_manifest(self, tenant_id: str, manifest: ManifestRecord) -> ManifestRecord:
        check_manifest(tenant_id, manifest)

        async def q(conn: asyncpg.Connection) -> ManifestRecord:
            try:
                row = await conn.fetchrow(
                    "INSERT INTO manifests (tenant_id, manifest_id, blob_key, root_tree_id,"
                    " config_tree_id, size) VALUES ($1, $2, $3, $4, $5, $6)"
                    " ON CONFLICT (tenant_id, manifest_id) DO NOTHING"
                    f" RETURNING {_MANIFEST_COLUMNS}",
                    tenant_id,
                    manifest.manifest_id,
                    manifest.blob_key,
                    bytes(manifest.root_tree_id),
                    bytes(manifest.config_tree_id),
                    manifest.size,
                )
            except asyncpg.ForeignKeyViolationError as exc:
                raise NotFound(f"tenant {tenant_id!r} not found") from exc
            if row is None:
                # A fresh statement: it sees the row of a concurrent winner.
                row = await conn.fetchrow(
                    f"SELECT {_MANIFEST_COLUMNS} FROM manifests"
                    " WHERE tenant_id = $1 AND manifest_id = $2",
                    tenant_id,
                    manifest.manifest_id,
                )
            if row is None:  # pragma: no cover - manifests are deleted only by GC
                raise NotFound(f"manifest {manifest.manifest_id!r} not found")
            return _manifest(row)

        return await run(self._pool, "put manifest", q, transaction=False)

    async def get_manifest(self, tenant_id: str, manifest_id: str) -> ManifestRecord:
        async def q(conn: asyncpg.Connection) -> ManifestRecord:
            row = await conn.fetchrow(
                f"SELECT {_MANIFEST_COLUMNS} FROM manifests"
                " WHERE tenant_id = $1 AND manifest_id = $2",
                tenant_id,
                manifest_id,
            )
            if row is None:
                raise NotFound(f"manifest {manifest_id!r} not found")
            return _manifest(row)

        return await run(self._pool, "get manifest", q, transaction=False)

    async def commit(self, new: NewSnapshot, expected_epoch: int) -> SnapshotRecord:
        snap = check_new_snapshot(new, expected_epoch)

        async def q(conn: asyncpg.Connection) -> SnapshotRecord:
            session = await conn.fetchrow(
                "SELECT state, epoch FROM sessions WHERE tenant_id = $1 AND session_id = $2"
                " FOR UPDATE",
                snap.tenant_id,
                snap.session_id,
            )
            if session is None:
                raise NotFound(f"session {snap.session_id!r} not found")
            if snap.idempotency_key is not None:
                # Before the lease checks: a retry whose first attempt landed
                # gets that snapshot back even if the lease has moved on since.
                done = await conn.fetchrow(
                    f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshots WHERE tenant_id = $1"
                    " AND session_id = $2 AND idempotency_key = $3",
                    snap.tenant_id,
                    snap.session_id,
                    snap.idempotency_key,
                )
                if done is not None:
                    return _snapshot(done)
            if session["state"] == SessionState.DELETED:
                raise FailedPrecondition(f"session {snap.session_id!r} is deleted")
            if session["epoch"] != expected_epoch:
                raise Aborted(lease_lost(snap.session_id, session["epoch"], expected_epoch))
            manifest = await conn.fetchval(
                "SELECT 1 FROM manifests WHERE tenant_id = $1 AND manifest_id = $2",
                snap.tenant_id,
                snap.manifest_id,
            )
            if manifest is None:
                raise NotFound(f"manifest {snap.manifest_id!r} not found")
            try:
                # clock_timestamp(), not now(): taken under the session lock,
                # so commit order is created_at order and the newest snapshot
                # is always the session's latest (GREATEST keeps that true
                # even if the server clock steps back).
                row = await conn.fetchrow(
                    "INSERT INTO snapshots (tenant_id, snapshot_id, session_id,"
                    " parent_snapshot_id, manifest_id, trigger, transcript_uuid, transcript_seq,"
                    " file_history_included, stats, idempotency_key, created_at)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11,"
                    " GREATEST(clock_timestamp(), (SELECT max(created_at) + interval '1 usec'"
                    " FROM snapshots WHERE tenant_id = $1 AND session_id = $3)))"
                    f" RETURNING {_SNAPSHOT_COLUMNS}",
                    snap.tenant_id,
                    snap.snapshot_id,
                    snap.session_id,
                    snap.parent_snapshot_id,
                    snap.manifest_id,
                    snap.trigger,
                    snap.transcript_uuid,
                    snap.transcript_seq,
                    snap.file_history_included,
                    snap.stats,
                    snap.idempotency_key,
                )
            except asyncpg.UniqueViolationError as exc:
                raise AlreadyExists(f"snapshot {snap.snapshot_id!r} already exists") from exc
            except asyncpg.ForeignKeyViolationError as exc:  # manifest deleted meanwhile
                raise NotFound(f"manifest {snap.manifest_id!r} not found") from exc
            await conn.execute(
                "UPDATE sessions SET latest_snapshot_id = $3, updated_at = $4"
                " WHERE tenant_id = $1 AND session_id = $2",
                snap.tenant_id,
                snap.session_id,
                snap.snapshot_id,
                row["created_at"],
            )
            return _snapshot(row)

        return await run(self._pool, "commit snapshot", q)

    async def get(self, tenant_id: str, snapshot_id: str) -> SnapshotRecord:
        async def q(conn: asyncpg.Connection) -> SnapshotRecord:
            row = await conn.fetchrow(
                f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshots"
                " WHERE tenant_id = $1 AND snapshot_id = $2",
                tenant_id,
                snapshot_id,
            )
            if row is None:
                raise NotFound(f"snapshot {snapshot_id!r} not found")
            return _snapshot(row)

        return await run(self._pool, "get snapshot", q, transaction=False)

    async def list(
        self, tenant_id: str, session_id: str, *, page_size: int = 100, page_token: str = ""
    ) -> Page[SnapshotRecord]:
        size = check_page_size(page_size)
        fingerprint = snapshot_list_fingerprint(tenant_id, session_id)
        cursor = decode_page_token(page_token, fingerprint)

        async def q(conn: asyncpg.Connection) -> builtins.list[asyncpg.Record]:
            if cursor is None:
                rows: builtins.list[asyncpg.Record] = await conn.fetch(
                    f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshots"
                    " WHERE tenant_id = $1 AND session_id = $2"
                    " ORDER BY created_at DESC, snapshot_id DESC LIMIT $3",
                    tenant_id,
                    session_id,
                    size + 1,
                )
                if not rows:
                    await _require_session(conn, tenant_id, session_id)
                return rows
            rows = await conn.fetch(
                f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshots"
                " WHERE tenant_id = $1 AND session_id = $2"
                " AND (created_at, snapshot_id) < ($3, $4)"
                " ORDER BY created_at DESC, snapshot_id DESC LIMIT $5",
                tenant_id,
                session_id,
                from_micros(cursor[0]),
                cursor[1],
                size + 1,
            )
            return rows

        rows = await run(self._pool, "list snapshots", q, transaction=False)
        items = [_snapshot(r) for r in rows[:size]]
        token = ""
        if len(rows) > size:
            last = items[-1]
            token = encode_page_token(fingerprint, micros(last.created_at), last.snapshot_id)
        return Page(items=items, next_token=token)

    async def covering(
        self, tenant_id: str, session_id: str, transcript_seq: int
    ) -> SnapshotRecord:
        seq = check_seq(transcript_seq)

        async def q(conn: asyncpg.Connection) -> SnapshotRecord:
            row = await conn.fetchrow(
                f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshots"
                " WHERE tenant_id = $1 AND session_id = $2 AND transcript_seq >= $3"
                " ORDER BY transcript_seq ASC, created_at DESC, snapshot_id DESC LIMIT 1",
                tenant_id,
                session_id,
                seq,
            )
            if row is None:
                raise NotFound(
                    f"session {session_id!r} has no snapshot at or after"
                    f" transcript seq {transcript_seq}"
                )
            return _snapshot(row)

        return await run(self._pool, "find covering snapshot", q, transaction=False)


async def _require_session(conn: asyncpg.Connection, tenant_id: str, session_id: str) -> None:
    found = await conn.fetchval(
        "SELECT 1 FROM sessions WHERE tenant_id = $1 AND session_id = $2", tenant_id, session_id
    )
    if found is None:
        raise NotFound(f"session {session_id!r} not found")
