"""The GC table on SQLite: job leases, retention, and the deletions and
listings of garbage collection and ``check`` (see :class:`.metadata.GcTable`
for the contracts, :mod:`.sqlite_meta` for the threading model). The
reachable set lives in :mod:`.sqlite_reach`.

Every destructive transaction checks this runner's ``gc`` job lease first
(:func:`fence`), inside ``BEGIN IMMEDIATE``: no other writer, takeover
included, can interleave. Deleting manifests or packs deletes their objects
*inside* that write transaction (the database thread waits on the event
loop for ``delete_blobs``), so no commit or ``add_pack`` can reference a row
between the check that nothing references it and its deletion.
"""

from __future__ import annotations

import asyncio
import builtins
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from sessiond.client.errors import Aborted, FailedPrecondition, NotFound

from .gc_common import check_grace, check_job, check_limit, check_setting, deleted_session
from .metadata import BlobDeleter, GcReach
from .metadata_common import from_micros
from .records import DeletedSession, JobLease, ManifestRecord, Retention
from .sqlite_reach import SqliteReach, fence
from .sqlite_workspace import Clock, _manifest, _marks

if TYPE_CHECKING:
    from .sqlite_meta import SqliteDb

_DAY_US = 86_400_000_000


def _lease(row: Any) -> JobLease:
    return JobLease(name=row[0], owner=row[1], expires_at=from_micros(row[2]))


class SqliteGcTable:
    def __init__(self, db: SqliteDb, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    # -- job leases -----------------------------------------------------------

    async def acquire_job(self, name: str, owner: str, ttl: float) -> JobLease:
        check_job(name, owner, ttl)

        def tx(conn: sqlite3.Connection) -> JobLease:
            now = self._clock()
            conn.execute(
                "INSERT INTO job_leases (name, owner, expires_at) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner,"
                " expires_at = excluded.expires_at"
                " WHERE job_leases.expires_at <= ? OR job_leases.owner = excluded.owner",
                (name, owner, now + int(ttl * 1e6), now),
            )
            row = conn.execute(
                "SELECT name, owner, expires_at FROM job_leases WHERE name = ?", (name,)
            ).fetchone()
            return _lease(row)

        return await self._db.call("acquire job lease", tx)

    async def renew_job(self, name: str, owner: str, ttl: float) -> JobLease:
        check_job(name, owner, ttl)

        def tx(conn: sqlite3.Connection) -> JobLease:
            row = conn.execute(
                "UPDATE job_leases SET expires_at = ? WHERE name = ? AND owner = ?"
                " RETURNING name, owner, expires_at",
                (self._clock() + int(ttl * 1e6), name, owner),
            ).fetchone()
            if row is None:
                raise Aborted(f"job lease {name!r} is no longer held by {owner!r}")
            return _lease(row)

        return await self._db.call("renew job lease", tx)

    async def release_job(self, name: str, owner: str) -> None:
        check_job(name, owner)

        def tx(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM job_leases WHERE name = ? AND owner = ?", (name, owner))

        await self._db.call("release job lease", tx)

    # -- retention ------------------------------------------------------------

    async def retention(self) -> builtins.list[Retention]:
        def tx(conn: sqlite3.Connection) -> builtins.list[Retention]:
            rows = conn.execute(
                # Shredded tenants are left to TenantTable.purge.
                "SELECT tenant_id, keep_last_snapshots, expire_suspended_days FROM tenants"
                " WHERE deleted_at IS NULL ORDER BY tenant_id"
            ).fetchall()
            return [Retention(r[0], r[1], r[2]) for r in rows]

        return await self._db.call("list retention", tx, write=False)

    async def set_retention(
        self, tenant_id: str, keep_last_snapshots: int | None, expire_suspended_days: int | None
    ) -> Retention:
        keep = check_setting("keep_last_snapshots", keep_last_snapshots)
        days = check_setting("expire_suspended_days", expire_suspended_days)

        def tx(conn: sqlite3.Connection) -> Retention:
            row = conn.execute(
                "UPDATE tenants SET keep_last_snapshots = ?, expire_suspended_days = ?"
                " WHERE tenant_id = ?"
                " RETURNING tenant_id, keep_last_snapshots, expire_suspended_days",
                (keep, days, tenant_id),
            ).fetchone()
            if row is None:
                raise NotFound(f"tenant {tenant_id!r} not found")
            return Retention(row[0], row[1], row[2])

        return await self._db.call("set retention", tx)

    async def expire_suspended(
        self, tenant_id: str, days: int, owner: str, *, dry_run: bool = False
    ) -> builtins.list[str]:
        check_setting("days", days)
        where = (
            "tenant_id = :t AND state = 'suspended' AND updated_at < :cutoff"
            " AND (lease_owner IS NULL OR lease_expires_at <= :now)"
        )

        def tx(conn: sqlite3.Connection) -> builtins.list[str]:
            now = self._clock()
            args = {"t": tenant_id, "now": now, "cutoff": now - days * _DAY_US}
            if dry_run:
                return [
                    r[0]
                    for r in conn.execute(f"SELECT session_id FROM sessions WHERE {where}", args)
                ]
            fence(conn, owner, now)
            rows = conn.execute(
                "UPDATE sessions SET state = 'deleted', epoch = epoch + 1, updated_at = :now,"
                " lease_owner = NULL, lease_expires_at ="
                " CASE WHEN lease_expires_at > :now THEN :now ELSE lease_expires_at END"
                f" WHERE {where} RETURNING session_id",
                args,
            ).fetchall()
            return sorted(r[0] for r in rows)

        return await self._db.call("expire suspended sessions", tx, write=not dry_run)

    async def prune_snapshots(
        self, tenant_id: str, keep_last: int, owner: str, *, dry_run: bool = False
    ) -> int:
        check_setting("keep_last", keep_last)
        doomed = (
            "SELECT n.snapshot_id FROM (SELECT snapshot_id, session_id, row_number() OVER"
            " (PARTITION BY session_id ORDER BY created_at DESC, snapshot_id DESC) AS rank"
            " FROM snapshots WHERE tenant_id = :t) n JOIN sessions s"
            " ON s.tenant_id = :t AND s.session_id = n.session_id"
            " WHERE n.rank > :keep AND s.state <> 'deleted'"
            " AND n.snapshot_id IS NOT s.latest_snapshot_id"
        )

        def tx(conn: sqlite3.Connection) -> int:
            args = {"t": tenant_id, "keep": keep_last}
            if dry_run:
                return int(conn.execute(f"SELECT count(*) FROM ({doomed})", args).fetchone()[0])
            fence(conn, owner, self._clock())
            cur = conn.execute(
                f"DELETE FROM snapshots WHERE tenant_id = :t AND snapshot_id IN ({doomed})", args
            )
            return int(cur.rowcount)

        return await self._db.call("prune snapshots", tx, write=not dry_run)

    async def deleted_sessions(self, tenant_id: str, limit: int) -> builtins.list[DeletedSession]:
        check_limit(limit)

        def tx(conn: sqlite3.Connection) -> builtins.list[DeletedSession]:
            rows = conn.execute(
                "SELECT s.session_id, s.project_key, s.sdk_session_id,"
                " EXISTS (SELECT 1 FROM sessions o WHERE o.tenant_id = s.tenant_id"
                " AND o.state <> 'deleted' AND o.sdk_session_id = s.sdk_session_id)"
                " FROM sessions s WHERE s.tenant_id = ? AND s.state = 'deleted'"
                " AND (s.sdk_session_id IS NOT NULL OR s.project_key IS NOT NULL"
                " OR s.latest_snapshot_id IS NOT NULL OR EXISTS (SELECT 1 FROM snapshots x"
                " WHERE x.tenant_id = s.tenant_id AND x.session_id = s.session_id))"
                " ORDER BY s.session_id LIMIT ?",
                (tenant_id, limit),
            ).fetchall()
            return [deleted_session(r[0], r[1], r[2], bool(r[3])) for r in rows]

        return await self._db.call("list deleted sessions", tx, write=False)

    async def purge_session(self, tenant_id: str, session_id: str, owner: str) -> int:
        def tx(conn: sqlite3.Connection) -> int:
            fence(conn, owner, self._clock())
            row = conn.execute(
                "SELECT state FROM sessions WHERE tenant_id = ? AND session_id = ?",
                (tenant_id, session_id),
            ).fetchone()
            if row is None:
                raise NotFound(f"session {session_id!r} not found")
            if row[0] != "deleted":
                raise FailedPrecondition(f"session {session_id!r} is not deleted")
            cur = conn.execute(
                "DELETE FROM snapshots WHERE tenant_id = ? AND session_id = ?",
                (tenant_id, session_id),
            )
            conn.execute(
                "UPDATE sessions SET latest_snapshot_id = NULL, sdk_session_id = NULL,"
                " project_key = NULL WHERE tenant_id = ? AND session_id = ?",
                (tenant_id, session_id),
            )
            return int(cur.rowcount)

        return await self._db.call("purge deleted session", tx)

    # -- deletions of objects and their rows ----------------------------------

    async def delete_manifests(
        self,
        tenant_id: str,
        grace: float,
        owner: str,
        delete_blobs: BlobDeleter,
        *,
        limit: int = 100,
        dry_run: bool = False,
    ) -> builtins.list[str]:
        micros = int(check_grace(grace) * 1e6)
        check_limit(limit)
        where = (
            "m.tenant_id = ? AND m.created_at < ? AND NOT EXISTS (SELECT 1 FROM snapshots s"
            " WHERE s.tenant_id = m.tenant_id AND s.manifest_id = m.manifest_id)"
        )
        return await self._delete(
            "delete manifests",
            "manifests",
            "manifest_id",
            where,
            lambda: (tenant_id, self._clock() - micros),
            tenant_id,
            owner,
            delete_blobs,
            limit,
            dry_run,
        )

    async def delete_empty_packs(
        self,
        tenant_id: str,
        owner: str,
        delete_blobs: BlobDeleter,
        *,
        limit: int = 100,
        dry_run: bool = False,
    ) -> builtins.list[str]:
        check_limit(limit)
        where = (
            "m.tenant_id = ? AND NOT EXISTS (SELECT 1 FROM chunks c"
            " WHERE c.tenant_id = m.tenant_id AND c.pack_id = m.pack_id)"
        )
        return await self._delete(
            "delete empty packs",
            "packs",
            "pack_id",
            where,
            lambda: (tenant_id,),
            tenant_id,
            owner,
            delete_blobs,
            limit,
            dry_run,
        )

    async def _delete(
        self,
        what: str,
        table: str,
        column: str,
        where: str,
        args: Any,
        tenant_id: str,
        owner: str,
        delete_blobs: BlobDeleter,
        limit: int,
        dry_run: bool,
    ) -> builtins.list[str]:
        loop = asyncio.get_running_loop()
        select = f"SELECT m.{column}, m.blob_key FROM {table} m WHERE {where}"

        def tx(conn: sqlite3.Connection) -> builtins.list[str]:
            if dry_run:
                return [r[0] for r in conn.execute(select, args())]
            fence(conn, owner, self._clock())
            rows = conn.execute(f"{select} ORDER BY m.{column} LIMIT ?", (*args(), limit))
            doomed = {r[0]: r[1] for r in rows}
            if not doomed:
                return []
            # Inside the write transaction: nothing can start referencing
            # these rows until the objects and then the rows are gone.
            future = asyncio.run_coroutine_threadsafe(
                _as_coroutine(delete_blobs, list(doomed.values())), loop
            )
            gone = set(future.result())
            ids = sorted(i for i, key in doomed.items() if key in gone)
            if ids:
                conn.execute(
                    f"DELETE FROM {table} WHERE tenant_id = ? AND {column} IN ({_marks(len(ids))})",
                    (tenant_id, *ids),
                )
            return ids

        return await self._db.call(what, tx, write=not dry_run)

    # -- listings for check ---------------------------------------------------

    async def snapshot_manifests(
        self, tenant_id: str, after: str, limit: int
    ) -> builtins.list[tuple[str, ManifestRecord | None]]:
        check_limit(limit)

        def tx(conn: sqlite3.Connection) -> builtins.list[tuple[str, ManifestRecord | None]]:
            rows = conn.execute(
                "SELECT d.manifest_id, m.manifest_id, m.blob_key, m.root_tree_id,"
                " m.config_tree_id, m.size, m.created_at FROM (SELECT DISTINCT manifest_id"
                " FROM snapshots WHERE tenant_id = :t AND manifest_id > :after"
                " ORDER BY manifest_id LIMIT :limit) d LEFT JOIN manifests m"
                " ON m.tenant_id = :t AND m.manifest_id = d.manifest_id ORDER BY d.manifest_id",
                {"t": tenant_id, "after": after, "limit": limit},
            ).fetchall()
            return [(r[0], None if r[1] is None else _manifest(r[1:])) for r in rows]

        return await self._db.call("list snapshot manifests", tx, write=False)

    async def known_packs(self, tenant_id: str, pack_ids: Sequence[str]) -> set[str]:
        return await self._known("packs", "pack_id", tenant_id, pack_ids)

    async def known_manifests(self, tenant_id: str, manifest_ids: Sequence[str]) -> set[str]:
        return await self._known("manifests", "manifest_id", tenant_id, manifest_ids)

    async def _known(self, table: str, column: str, tenant_id: str, ids: Sequence[str]) -> set[str]:
        def tx(conn: sqlite3.Connection) -> set[str]:
            found: set[str] = set()
            for start in range(0, len(ids), 499):
                part = list(ids[start : start + 499])
                rows = conn.execute(
                    f"SELECT {column} FROM {table} WHERE tenant_id = ?"
                    f" AND {column} IN ({_marks(len(part))})",
                    (tenant_id, *part),
                )
                found.update(r[0] for r in rows)
            return found

        if not ids:
            return set()
        return await self._db.call(f"look up {table}", tx, write=False)

    @asynccontextmanager
    async def reach(self, tenant_id: str, *, edges: bool = False) -> AsyncIterator[GcReach]:
        async with SqliteReach.open(self._db, self._clock, tenant_id, edges=edges) as reach:
            yield reach


async def _as_coroutine(fn: BlobDeleter, keys: builtins.list[str]) -> Sequence[str]:
    return await fn(keys)
