"""The reachable set of GC and ``check`` on PostgreSQL (see
:class:`.metadata.GcReach`): a temporary table on one pooled connection,
held for the life of the set and dropped on exit.

Memory: the server holds one batch of ids at a time; the set itself is rows
of ``gc_reach`` (~50 bytes each: 10 M chunks ≈ 500 MB of temp table, spilled
to disk by PostgreSQL, never in Python). Temp tables are not autovacuumed or
analyzed, so the set is ANALYZEd after each bulk change before the joins
that mark and sweep.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TypeVar

import asyncpg

from sessiond.client.errors import SessiondError

from .gc_common import MAX_BATCH, check_grace, check_limit, lease_lost
from .metadata import GC_JOB
from .postgres_errors import TX_ATTEMPTS, translate
from .records import ChunkLocation, PackUsage, ReachStats
from .workspace_common import check_chunk_ids

T = TypeVar("T")

_NOT_REACHED = "NOT EXISTS (SELECT 1 FROM gc_reach r WHERE r.chunk_id = c.chunk_id)"


async def fence(conn: asyncpg.Connection, owner: str) -> None:
    """``Aborted`` unless ``owner`` holds a live ``gc`` job lease; the row is
    held FOR SHARE to the end of the caller's transaction, so no takeover
    lands while it writes."""
    held = await conn.fetchval(
        "SELECT 1 FROM job_leases WHERE name = $1 AND owner = $2 AND expires_at > now() FOR SHARE",
        GC_JOB,
        owner,
    )
    if held is None:
        raise lease_lost(owner)


class PgReach:
    def __init__(self, conn: asyncpg.Connection, tenant_id: str, edges: bool) -> None:
        self._conn = conn
        self._tenant = tenant_id
        self._edges = edges
        self._dirty = True
        self._packs_ready = False

    @classmethod
    @asynccontextmanager
    async def open(
        cls, pool: asyncpg.Pool, tenant_id: str, *, edges: bool
    ) -> AsyncIterator[PgReach]:
        try:
            conn: asyncpg.Connection = await pool.acquire()
        except Exception as exc:
            raise translate(exc, "open reachable set") from exc
        reach = cls(conn, tenant_id, edges)
        try:
            await reach._call("create reachable set", reach._create)
            yield reach
        finally:
            try:
                await conn.execute("DROP TABLE IF EXISTS gc_reach, gc_edges, gc_packs")
            except Exception:
                # A broken connection: the pool discards it with its temp tables.
                conn.terminate()
            await pool.release(conn)

    async def _create(self, conn: asyncpg.Connection) -> None:
        await conn.execute(
            "DROP TABLE IF EXISTS gc_reach, gc_edges, gc_packs;"
            " CREATE TEMP TABLE gc_reach (chunk_id bytea PRIMARY KEY, is_tree boolean NOT NULL,"
            " handed boolean NOT NULL DEFAULT false);"
            " CREATE INDEX gc_reach_pending ON gc_reach (chunk_id) WHERE is_tree AND NOT handed;"
            " CREATE TEMP TABLE gc_edges (child bytea NOT NULL, parent bytea NOT NULL);"
            " CREATE INDEX gc_edges_child ON gc_edges (child)"
        )

    async def _call(
        self,
        what: str,
        fn: Callable[[asyncpg.Connection], Awaitable[T]],
        *,
        transaction: bool = False,
    ) -> T:
        """``fn`` on this set's connection; deadlock victims (a sweep against
        an add_pack moving the same rows) are retried, errors translated."""
        for attempt in range(1, TX_ATTEMPTS + 1):
            try:
                if not transaction:
                    return await fn(self._conn)
                async with self._conn.transaction():
                    return await fn(self._conn)
            except asyncpg.TransactionRollbackError as exc:
                if attempt == TX_ATTEMPTS:
                    raise translate(exc, what) from exc
            except SessiondError:
                raise
            except Exception as exc:
                raise translate(exc, what) from exc
        raise AssertionError("unreachable")

    async def _analyze(self) -> None:
        if self._dirty:
            await self._conn.execute("ANALYZE gc_reach")
            self._dirty = False

    # -- building -------------------------------------------------------------

    async def add_roots(self, *, committed_only: bool) -> int:
        committed = (
            " AND EXISTS (SELECT 1 FROM snapshots s WHERE s.tenant_id = m.tenant_id"
            " AND s.manifest_id = m.manifest_id)"
            if committed_only
            else ""
        )

        async def q(conn: asyncpg.Connection) -> int:
            status: str = await conn.execute(
                "INSERT INTO gc_reach (chunk_id, is_tree) SELECT DISTINCT v.id, true"
                " FROM manifests m, LATERAL (VALUES (m.root_tree_id), (m.config_tree_id)) v(id)"
                f" WHERE m.tenant_id = $1 AND octet_length(v.id) = 32{committed}"
                " ON CONFLICT DO NOTHING",
                self._tenant,
            )
            return int(status.rsplit(" ", 1)[1])

        self._dirty = True
        return await self._call("add roots", q)

    async def add(self, ids: Sequence[tuple[bytes, bool]], parent: bytes | None = None) -> None:
        for start in range(0, len(ids), MAX_BATCH):
            part = ids[start : start + MAX_BATCH]
            chunk_ids = check_chunk_ids([i for i, _ in part])
            kinds = {i: t for i, t in part}

            trees = [kinds[i] for i in chunk_ids]

            async def q(
                conn: asyncpg.Connection,
                chunk_ids: list[bytes] = chunk_ids,
                trees: list[bool] = trees,
            ) -> None:
                await conn.execute(
                    "INSERT INTO gc_reach (chunk_id, is_tree)"
                    " SELECT * FROM unnest($1::bytea[], $2::boolean[]) ON CONFLICT DO NOTHING",
                    chunk_ids,
                    trees,
                )
                if self._edges and parent is not None:
                    await conn.execute(
                        "INSERT INTO gc_edges (child, parent) SELECT unnest($1::bytea[]), $2",
                        chunk_ids,
                        parent,
                    )

            await self._call("add reachable ids", q)
        self._dirty = True

    async def next_trees(self, limit: int) -> builtins.list[bytes]:
        check_limit(limit)

        async def q(conn: asyncpg.Connection) -> builtins.list[bytes]:
            rows = await conn.fetch(
                "UPDATE gc_reach SET handed = true WHERE chunk_id IN (SELECT chunk_id"
                " FROM gc_reach WHERE is_tree AND NOT handed LIMIT $1) RETURNING chunk_id",
                limit,
            )
            return [bytes(r[0]) for r in rows]

        return await self._call("hand out trees", q)

    # -- reading --------------------------------------------------------------

    async def unindexed(self, after: bytes, limit: int) -> builtins.list[tuple[bytes, bool]]:
        check_limit(limit)

        async def q(conn: asyncpg.Connection) -> builtins.list[tuple[bytes, bool]]:
            rows = await conn.fetch(
                "SELECT r.chunk_id, r.is_tree FROM gc_reach r WHERE r.chunk_id > $2"
                " AND NOT EXISTS (SELECT 1 FROM chunks c WHERE c.tenant_id = $1"
                " AND c.chunk_id = r.chunk_id) ORDER BY r.chunk_id LIMIT $3",
                self._tenant,
                after,
                limit,
            )
            return [(bytes(r[0]), r[1]) for r in rows]

        return await self._call("list unindexed ids", q)

    async def packs(self, after: str, limit: int) -> builtins.list[PackUsage]:
        check_limit(limit)

        async def q(conn: asyncpg.Connection) -> builtins.list[PackUsage]:
            if not self._packs_ready:
                # One pass over the set, then cheap pages.
                await conn.execute(
                    "DROP TABLE IF EXISTS gc_packs; CREATE TEMP TABLE gc_packs"
                    ' (pack_id text COLLATE "C" PRIMARY KEY, end_offset bigint NOT NULL,'
                    " chunks bigint NOT NULL)"
                )
                await conn.execute(
                    "INSERT INTO gc_packs SELECT c.pack_id, max(c.pack_offset + c.length),"
                    " count(*) FROM gc_reach r JOIN chunks c ON c.tenant_id = $1"
                    " AND c.chunk_id = r.chunk_id GROUP BY c.pack_id",
                    self._tenant,
                )
                self._packs_ready = True
            rows = await conn.fetch(
                "SELECT g.pack_id, p.blob_key, p.size, g.end_offset, g.chunks FROM gc_packs g"
                " LEFT JOIN packs p ON p.tenant_id = $1 AND p.pack_id = g.pack_id"
                " WHERE g.pack_id > $2 ORDER BY g.pack_id LIMIT $3",
                self._tenant,
                after,
                limit,
            )
            return [
                PackUsage(r["pack_id"], r["blob_key"], r["size"], r["end_offset"], r["chunks"])
                for r in rows
            ]

        await self._analyze()
        return await self._call("list reachable packs", q)

    async def locations(self, pack_id: str, *, data_only: bool) -> builtins.list[ChunkLocation]:
        kind = " AND c.kind = 'data'" if data_only else ""

        async def q(conn: asyncpg.Connection) -> builtins.list[ChunkLocation]:
            rows = await conn.fetch(
                "SELECT c.chunk_id, c.pack_id, p.blob_key, c.pack_offset, c.length,"
                " c.raw_length, c.kind, c.verified, c.gc_marked_at IS NOT NULL AS marked"
                " FROM chunks c JOIN packs p ON p.tenant_id = c.tenant_id AND p.pack_id = c.pack_id"
                " JOIN gc_reach r ON r.chunk_id = c.chunk_id"
                f" WHERE c.tenant_id = $1 AND c.pack_id = $2{kind} ORDER BY c.pack_offset",
                self._tenant,
                pack_id,
            )
            return [
                ChunkLocation(
                    chunk_id=bytes(r["chunk_id"]),
                    pack_id=r["pack_id"],
                    blob_key=r["blob_key"],
                    offset=r["pack_offset"],
                    length=r["length"],
                    raw_length=r["raw_length"],
                    kind=r["kind"],
                    verified=r["verified"],
                    marked=r["marked"],
                )
                for r in rows
            ]

        return await self._call("list reachable chunks of a pack", q)

    async def snapshots_reaching(self, ids: Sequence[bytes]) -> dict[bytes, builtins.list[str]]:
        out: dict[bytes, builtins.list[str]] = {}
        for cid in check_chunk_ids(ids):

            async def q(conn: asyncpg.Connection, cid: bytes = cid) -> builtins.list[str]:
                rows = await conn.fetch(
                    "WITH RECURSIVE up(id) AS (SELECT $2::bytea UNION"
                    " SELECT e.parent FROM gc_edges e JOIN up ON e.child = up.id)"
                    " SELECT DISTINCT s.snapshot_id FROM up JOIN manifests m ON m.tenant_id = $1"
                    " AND (m.root_tree_id = up.id OR m.config_tree_id = up.id)"
                    " JOIN snapshots s ON s.tenant_id = $1 AND s.manifest_id = m.manifest_id"
                    " ORDER BY s.snapshot_id",
                    self._tenant,
                    cid,
                )
                return [r[0] for r in rows]

            found = await self._call("find snapshots reaching a chunk", q)
            if found:
                out[cid] = found
        return out

    async def stats(self) -> ReachStats:
        async def q(conn: asyncpg.Connection) -> ReachStats:
            row = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM gc_reach) AS reachable,"
                f" (SELECT count(*) FROM chunks c WHERE c.tenant_id = $1 AND {_NOT_REACHED})"
                " AS unreferenced,"
                " (SELECT count(*) FROM chunks WHERE tenant_id = $1"
                " AND gc_marked_at IS NOT NULL) AS marked,"
                " (SELECT count(*) FROM packs p WHERE p.tenant_id = $1 AND NOT EXISTS"
                " (SELECT 1 FROM chunks c WHERE c.tenant_id = $1 AND c.pack_id = p.pack_id))"
                " AS empty_packs,"
                " (SELECT count(*) FROM manifests m WHERE m.tenant_id = $1 AND NOT EXISTS"
                " (SELECT 1 FROM snapshots s WHERE s.tenant_id = $1"
                " AND s.manifest_id = m.manifest_id)) AS manifests",
                self._tenant,
            )
            assert row is not None
            return ReachStats(
                reachable=row["reachable"],
                unreferenced_chunks=row["unreferenced"],
                marked_chunks=row["marked"],
                empty_packs=row["empty_packs"],
                unreferenced_manifests=row["manifests"],
            )

        await self._analyze()
        return await self._call("count reachable set", q)

    # -- destructive ------------------------------------------------------------

    async def sweep(self, grace: float, owner: str, *, dry_run: bool = False) -> int:
        seconds = check_grace(grace)
        doomed = (
            "c.tenant_id = $1 AND c.gc_marked_at < now() - make_interval(secs => $2)"
            f" AND {_NOT_REACHED}"
        )
        return await self._write(
            "sweep marked chunks",
            owner,
            dry_run,
            f"SELECT count(*) FROM chunks c WHERE {doomed}",
            # Row by row the marks are re-checked under the row lock: a chunk
            # add_pack un-marked meanwhile no longer matches and stays.
            f"DELETE FROM chunks c WHERE {doomed}",
            seconds,
        )

    async def unmark(self, owner: str, *, dry_run: bool = False) -> int:
        live = (
            "c.tenant_id = $1 AND c.gc_marked_at IS NOT NULL"
            " AND EXISTS (SELECT 1 FROM gc_reach r WHERE r.chunk_id = c.chunk_id)"
        )
        return await self._write(
            "un-mark reachable chunks",
            owner,
            dry_run,
            f"SELECT count(*) FROM chunks c WHERE {live}",
            f"UPDATE chunks c SET gc_marked_at = NULL WHERE {live}",
        )

    async def mark(self, grace: float, owner: str, *, dry_run: bool = False) -> int:
        seconds = check_grace(grace)
        markable = (
            "c.tenant_id = $1 AND c.gc_marked_at IS NULL"
            f" AND c.created_at < now() - make_interval(secs => $2) AND {_NOT_REACHED}"
        )
        if dry_run:
            return await self._write(
                "count markable chunks",
                owner,
                True,
                f"SELECT count(*) FROM chunks c WHERE {markable}",
                "",
                seconds,
            )

        async def q(conn: asyncpg.Connection) -> int:
            await fence(conn, owner)
            # Serializes with mark_verified (FOR SHARE): see ChunkIndex.
            await conn.execute(
                "SELECT 1 FROM tenants WHERE tenant_id = $1 FOR NO KEY UPDATE", self._tenant
            )
            # Stamped after the lock, so a mark is never older than the moment
            # it could be seen: the sweep's grace counts from then.
            status: str = await conn.execute(
                f"UPDATE chunks c SET gc_marked_at = clock_timestamp() WHERE {markable}",
                self._tenant,
                seconds,
            )
            marked = int(status.rsplit(" ", 1)[1])
            if marked:
                await conn.execute(
                    "UPDATE chunks SET verified = false WHERE tenant_id = $1 AND verified",
                    self._tenant,
                )
            return marked

        await self._analyze()
        return await self._call("mark unreachable chunks", q, transaction=True)

    async def _write(
        self, what: str, owner: str, dry_run: bool, count: str, change: str, *args: object
    ) -> int:
        async def q(conn: asyncpg.Connection) -> int:
            if dry_run:
                return int(await conn.fetchval(count, self._tenant, *args))
            await fence(conn, owner)
            status: str = await conn.execute(change, self._tenant, *args)
            return int(status.rsplit(" ", 1)[1])

        await self._analyze()
        return await self._call(what, q, transaction=True)
