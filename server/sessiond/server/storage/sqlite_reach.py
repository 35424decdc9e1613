"""The reachable set of GC and ``check`` on SQLite (see
:class:`.metadata.GcReach`): temporary tables on the store's one connection,
named per set (several may be open at once), dropped on exit.

Temp tables live in SQLite's separate temp database, so filling them takes
no lock on the main file: those transactions are plain ``BEGIN`` and never
block the server's writers. Memory: one batch of ids in Python; the set is
rows of the temp database (SQLite spills it to a temp file past its cache).
"""

from __future__ import annotations

import builtins
import itertools
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from .gc_common import MAX_BATCH, check_grace, check_limit, lease_lost
from .metadata import GC_JOB
from .records import ChunkLocation, PackUsage, ReachStats
from .sqlite_workspace import Clock, _location
from .workspace_common import check_chunk_ids

if TYPE_CHECKING:
    from .sqlite_meta import SqliteDb

_names = itertools.count(1)


def fence(conn: sqlite3.Connection, owner: str, now: int) -> None:
    """``Aborted`` unless ``owner`` holds a live ``gc`` job lease (call inside
    the write transaction: no takeover can interleave)."""
    held = conn.execute(
        "SELECT 1 FROM job_leases WHERE name = ? AND owner = ? AND expires_at > ?",
        (GC_JOB, owner, now),
    ).fetchone()
    if held is None:
        raise lease_lost(owner)


class SqliteReach:
    def __init__(self, db: SqliteDb, clock: Clock, tenant_id: str, edges: bool) -> None:
        n = next(_names)
        self._db = db
        self._clock = clock
        self._tenant = tenant_id
        self._edges = edges
        self._reach = f"temp.gc_reach_{n}"
        self._edge_table = f"temp.gc_edges_{n}"
        self._pending = f"gc_reach_pending_{n}"
        self._not_reached = (
            f"NOT EXISTS (SELECT 1 FROM {self._reach} r WHERE r.chunk_id = c.chunk_id)"
        )

    @classmethod
    @asynccontextmanager
    async def open(
        cls, db: SqliteDb, clock: Clock, tenant_id: str, *, edges: bool
    ) -> AsyncIterator[SqliteReach]:
        reach = cls(db, clock, tenant_id, edges)
        await db.call("create reachable set", reach._create, write=False)
        try:
            yield reach
        finally:
            await db.call("drop reachable set", reach._drop, write=False)

    def _create(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            f"CREATE TABLE {self._reach} (chunk_id BLOB PRIMARY KEY, is_tree INTEGER NOT NULL,"
            " handed INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID"
        )
        conn.execute(
            f"CREATE INDEX temp.{self._pending} ON {self._reach.split('.')[1]} (chunk_id)"
            " WHERE is_tree = 1 AND handed = 0"
        )
        conn.execute(f"CREATE TABLE {self._edge_table} (child BLOB NOT NULL, parent BLOB NOT NULL)")
        conn.execute(
            f"CREATE INDEX temp.{self._pending}_e ON {self._edge_table.split('.')[1]} (child)"
        )

    def _drop(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"DROP TABLE IF EXISTS {self._reach}")
        conn.execute(f"DROP TABLE IF EXISTS {self._edge_table}")

    # -- building -------------------------------------------------------------

    async def add_roots(self, *, committed_only: bool) -> int:
        committed = (
            " AND EXISTS (SELECT 1 FROM snapshots s WHERE s.tenant_id = m.tenant_id"
            " AND s.manifest_id = m.manifest_id)"
            if committed_only
            else ""
        )

        def tx(conn: sqlite3.Connection) -> int:
            total = 0
            for column in ("root_tree_id", "config_tree_id"):
                cur = conn.execute(
                    f"INSERT INTO {self._reach} (chunk_id, is_tree) SELECT DISTINCT m.{column}, 1"
                    f" FROM manifests m WHERE m.tenant_id = ? AND length(m.{column}) = 32"
                    f"{committed} ON CONFLICT DO NOTHING",
                    (self._tenant,),
                )
                total += cur.rowcount
            return total

        return await self._db.call("add roots", tx, write=False)

    async def add(self, ids: Sequence[tuple[bytes, bool]], parent: bytes | None = None) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            for start in range(0, len(ids), MAX_BATCH):
                part = ids[start : start + MAX_BATCH]
                check_chunk_ids([i for i, _ in part])
                conn.executemany(
                    f"INSERT INTO {self._reach} (chunk_id, is_tree) VALUES (?, ?)"
                    " ON CONFLICT DO NOTHING",
                    ((bytes(i), int(t)) for i, t in part),
                )
                if self._edges and parent is not None:
                    conn.executemany(
                        f"INSERT INTO {self._edge_table} (child, parent) VALUES (?, ?)",
                        ((bytes(i), parent) for i, _ in part),
                    )

        await self._db.call("add reachable ids", tx, write=False)

    async def next_trees(self, limit: int) -> builtins.list[bytes]:
        check_limit(limit)

        def tx(conn: sqlite3.Connection) -> builtins.list[bytes]:
            rows = conn.execute(
                f"UPDATE {self._reach} SET handed = 1 WHERE chunk_id IN (SELECT chunk_id"
                f" FROM {self._reach} WHERE is_tree = 1 AND handed = 0 LIMIT ?)"
                " RETURNING chunk_id",
                (limit,),
            ).fetchall()
            return [bytes(r[0]) for r in rows]

        return await self._db.call("hand out trees", tx, write=False)

    # -- reading --------------------------------------------------------------

    async def unindexed(self, after: bytes, limit: int) -> builtins.list[tuple[bytes, bool]]:
        check_limit(limit)

        def tx(conn: sqlite3.Connection) -> builtins.list[tuple[bytes, bool]]:
            rows = conn.execute(
                f"SELECT r.chunk_id, r.is_tree FROM {self._reach} r WHERE r.chunk_id > ?"
                " AND NOT EXISTS (SELECT 1 FROM chunks c WHERE c.tenant_id = ?"
                " AND c.chunk_id = r.chunk_id) ORDER BY r.chunk_id LIMIT ?",
                (after, self._tenant, limit),
            ).fetchall()
            return [(bytes(r[0]), bool(r[1])) for r in rows]

        return await self._db.call("list unindexed ids", tx, write=False)

    async def packs(self, after: str, limit: int) -> builtins.list[PackUsage]:
        check_limit(limit)

        def tx(conn: sqlite3.Connection) -> builtins.list[PackUsage]:
            # chunks_pack_idx walks the tenant's chunks in pack order; each
            # probe into the set is a primary-key lookup.
            rows = conn.execute(
                "SELECT c.pack_id, p.blob_key, p.size, max(c.pack_offset + c.length), count(*)"
                f" FROM chunks c JOIN {self._reach} r ON r.chunk_id = c.chunk_id"
                " LEFT JOIN packs p ON p.tenant_id = c.tenant_id AND p.pack_id = c.pack_id"
                " WHERE c.tenant_id = ? AND c.pack_id > ? GROUP BY c.pack_id"
                " ORDER BY c.pack_id LIMIT ?",
                (self._tenant, after, limit),
            ).fetchall()
            return [PackUsage(r[0], r[1], r[2], r[3], r[4]) for r in rows]

        return await self._db.call("list reachable packs", tx, write=False)

    async def locations(self, pack_id: str, *, data_only: bool) -> builtins.list[ChunkLocation]:
        kind = " AND c.kind = 'data'" if data_only else ""

        def tx(conn: sqlite3.Connection) -> builtins.list[ChunkLocation]:
            rows = conn.execute(
                "SELECT c.chunk_id, c.pack_id, p.blob_key, c.pack_offset, c.length,"
                " c.raw_length, c.kind, c.verified, c.gc_marked_at IS NOT NULL"
                " FROM chunks c JOIN packs p ON p.tenant_id = c.tenant_id AND p.pack_id = c.pack_id"
                f" JOIN {self._reach} r ON r.chunk_id = c.chunk_id"
                f" WHERE c.tenant_id = ? AND c.pack_id = ?{kind} ORDER BY c.pack_offset",
                (self._tenant, pack_id),
            ).fetchall()
            return [_location(r) for r in rows]

        return await self._db.call("list reachable chunks of a pack", tx, write=False)

    async def snapshots_reaching(self, ids: Sequence[bytes]) -> dict[bytes, builtins.list[str]]:
        wanted = check_chunk_ids(ids)

        def tx(conn: sqlite3.Connection) -> dict[bytes, builtins.list[str]]:
            out: dict[bytes, builtins.list[str]] = {}
            for cid in wanted:
                rows = conn.execute(
                    "WITH RECURSIVE up(id) AS (SELECT ? UNION"
                    f" SELECT e.parent FROM {self._edge_table} e JOIN up ON e.child = up.id)"
                    " SELECT DISTINCT s.snapshot_id FROM up JOIN manifests m ON m.tenant_id = ?"
                    " AND (m.root_tree_id = up.id OR m.config_tree_id = up.id)"
                    " JOIN snapshots s ON s.tenant_id = ? AND s.manifest_id = m.manifest_id"
                    " ORDER BY s.snapshot_id",
                    (cid, self._tenant, self._tenant),
                ).fetchall()
                if rows:
                    out[cid] = [r[0] for r in rows]
            return out

        return await self._db.call("find snapshots reaching chunks", tx, write=False)

    async def stats(self) -> ReachStats:
        def tx(conn: sqlite3.Connection) -> ReachStats:
            t = self._tenant
            one = conn.execute
            return ReachStats(
                reachable=one(f"SELECT count(*) FROM {self._reach}").fetchone()[0],
                unreferenced_chunks=one(
                    f"SELECT count(*) FROM chunks c WHERE c.tenant_id = ? AND {self._not_reached}",
                    (t,),
                ).fetchone()[0],
                marked_chunks=one(
                    "SELECT count(*) FROM chunks WHERE tenant_id = ? AND gc_marked_at IS NOT NULL",
                    (t,),
                ).fetchone()[0],
                empty_packs=one(
                    "SELECT count(*) FROM packs p WHERE p.tenant_id = ? AND NOT EXISTS"
                    " (SELECT 1 FROM chunks c WHERE c.tenant_id = p.tenant_id"
                    " AND c.pack_id = p.pack_id)",
                    (t,),
                ).fetchone()[0],
                unreferenced_manifests=one(
                    "SELECT count(*) FROM manifests m WHERE m.tenant_id = ? AND NOT EXISTS"
                    " (SELECT 1 FROM snapshots s WHERE s.tenant_id = m.tenant_id"
                    " AND s.manifest_id = m.manifest_id)",
                    (t,),
                ).fetchone()[0],
            )

        return await self._db.call("count reachable set", tx, write=False)

    # -- destructive ------------------------------------------------------------

    async def sweep(self, grace: float, owner: str, *, dry_run: bool = False) -> int:
        micros = int(check_grace(grace) * 1e6)
        where = f"c.tenant_id = ? AND c.gc_marked_at < ? AND {self._not_reached}"
        return await self._write(
            "sweep marked chunks",
            owner,
            dry_run,
            f"SELECT count(*) FROM chunks c WHERE {where}",
            f"DELETE FROM chunks AS c WHERE {where}",
            lambda now: (self._tenant, now - micros),
        )

    async def unmark(self, owner: str, *, dry_run: bool = False) -> int:
        where = (
            "c.tenant_id = ? AND c.gc_marked_at IS NOT NULL"
            f" AND EXISTS (SELECT 1 FROM {self._reach} r WHERE r.chunk_id = c.chunk_id)"
        )
        return await self._write(
            "un-mark reachable chunks",
            owner,
            dry_run,
            f"SELECT count(*) FROM chunks c WHERE {where}",
            f"UPDATE chunks AS c SET gc_marked_at = NULL WHERE {where}",
            lambda now: (self._tenant,),
        )

    async def mark(self, grace: float, owner: str, *, dry_run: bool = False) -> int:
        micros = int(check_grace(grace) * 1e6)
        where = (
            f"c.tenant_id = ? AND c.gc_marked_at IS NULL AND c.created_at < ?"
            f" AND {self._not_reached}"
        )

        def tx(conn: sqlite3.Connection) -> int:
            now = self._clock()
            args = (self._tenant, now - micros)
            if dry_run:
                return int(
                    conn.execute(f"SELECT count(*) FROM chunks c WHERE {where}", args).fetchone()[0]
                )
            fence(conn, owner, now)
            marked = conn.execute(
                f"UPDATE chunks AS c SET gc_marked_at = {now} WHERE {where}", args
            ).rowcount
            if marked:
                # BEGIN IMMEDIATE serializes this with mark_verified.
                conn.execute(
                    "UPDATE chunks SET verified = 0 WHERE tenant_id = ? AND verified = 1",
                    (self._tenant,),
                )
            return int(marked)

        return await self._db.call("mark unreachable chunks", tx, write=not dry_run)

    async def _write(
        self,
        what: str,
        owner: str,
        dry_run: bool,
        count: str,
        change: str,
        args: Callable[[int], tuple[object, ...]],
    ) -> int:
        def tx(conn: sqlite3.Connection) -> int:
            now = self._clock()
            values = args(now)
            if dry_run:
                return int(conn.execute(count, values).fetchone()[0])
            fence(conn, owner, now)
            return int(conn.execute(change, values).rowcount)

        return await self._db.call(what, tx, write=not dry_run)
