"""The GC table on PostgreSQL: job leases, retention, and the deletions and
listings of garbage collection and ``check`` (see :class:`.metadata.GcTable`
for the contracts, ``migrations/postgres/0007_gc.sql`` for the schema). The
reachable set lives in :mod:`.postgres_reach`.

Every destructive transaction first locks this runner's ``gc`` job lease row
``FOR SHARE`` (:func:`fence`): a runner whose lease expired and was taken
over writes nothing, and no takeover can happen mid-transaction.

Deleting a manifest or a pack locks its row ``FOR UPDATE`` (``SKIP LOCKED``:
rows a commit or an ``add_pack`` is referencing right now are left for the
next run), re-checks that nothing references it in a fresh statement (READ
COMMITTED: it sees whatever committed before the lock was taken), deletes
the object, then the row, and only then lets the lock go. A writer that
needs the row meanwhile waits on the lock and fails on the foreign key.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import asyncpg

from sessiond.client.errors import Aborted, FailedPrecondition, NotFound

from .gc_common import check_grace, check_job, check_limit, check_setting, deleted_session
from .metadata import BlobDeleter, GcReach
from .postgres_errors import run
from .postgres_reach import PgReach, fence
from .records import DeletedSession, JobLease, ManifestRecord, Retention

_LEASE_COLUMNS = "name, owner, expires_at"


def _lease(row: asyncpg.Record) -> JobLease:
    return JobLease(name=row["name"], owner=row["owner"], expires_at=row["expires_at"])


def _retention(row: asyncpg.Record) -> Retention:
    return Retention(
        tenant_id=row["tenant_id"],
        keep_last_snapshots=row["keep_last_snapshots"],
        expire_suspended_days=row["expire_suspended_days"],
    )


class PgGcTable:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    # -- job leases -----------------------------------------------------------

    async def acquire_job(self, name: str, owner: str, ttl: float) -> JobLease:
        check_job(name, owner, ttl)

        async def q(conn: asyncpg.Connection) -> JobLease:
            row = await conn.fetchrow(
                "INSERT INTO job_leases (name, owner, expires_at)"
                " VALUES ($1, $2, now() + make_interval(secs => $3))"
                " ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner,"
                " expires_at = EXCLUDED.expires_at"
                " WHERE job_leases.expires_at <= now() OR job_leases.owner = EXCLUDED.owner"
                f" RETURNING {_LEASE_COLUMNS}",
                name,
                owner,
                float(ttl),
            )
            if row is None:  # held by someone else: a fresh statement sees who
                row = await conn.fetchrow(
                    f"SELECT {_LEASE_COLUMNS} FROM job_leases WHERE name = $1", name
                )
            assert row is not None  # job leases are deleted only by their owner
            return _lease(row)

        return await run(self._pool, "acquire job lease", q, transaction=False)

    async def renew_job(self, name: str, owner: str, ttl: float) -> JobLease:
        check_job(name, owner, ttl)

        async def q(conn: asyncpg.Connection) -> JobLease:
            row = await conn.fetchrow(
                "UPDATE job_leases SET expires_at = now() + make_interval(secs => $3)"
                f" WHERE name = $1 AND owner = $2 RETURNING {_LEASE_COLUMNS}",
                name,
                owner,
                float(ttl),
            )
            if row is None:
                raise Aborted(f"job lease {name!r} is no longer held by {owner!r}")
            return _lease(row)

        return await run(self._pool, "renew job lease", q, transaction=False)

    async def release_job(self, name: str, owner: str) -> None:
        check_job(name, owner)

        async def q(conn: asyncpg.Connection) -> None:
            await conn.execute("DELETE FROM job_leases WHERE name = $1 AND owner = $2", name, owner)

        await run(self._pool, "release job lease", q, transaction=False)

    # -- retention ------------------------------------------------------------

    async def retention(self) -> builtins.list[Retention]:
        async def q(conn: asyncpg.Connection) -> builtins.list[Retention]:
            rows = await conn.fetch(
                # Shredded tenants are left to TenantTable.purge.
                "SELECT tenant_id, keep_last_snapshots, expire_suspended_days FROM tenants"
                " WHERE deleted_at IS NULL ORDER BY tenant_id"
            )
            return [_retention(r) for r in rows]

        return await run(self._pool, "list retention", q, transaction=False)

    async def set_retention(
        self, tenant_id: str, keep_last_snapshots: int | None, expire_suspended_days: int | None
    ) -> Retention:
        keep = check_setting("keep_last_snapshots", keep_last_snapshots)
        days = check_setting("expire_suspended_days", expire_suspended_days)

        async def q(conn: asyncpg.Connection) -> Retention:
            row = await conn.fetchrow(
                "UPDATE tenants SET keep_last_snapshots = $2, expire_suspended_days = $3"
                " WHERE tenant_id = $1"
                " RETURNING tenant_id, keep_last_snapshots, expire_suspended_days",
                tenant_id,
                keep,
                days,
            )
            if row is None:
                raise NotFound(f"tenant {tenant_id!r} not found")
            return _retention(row)

        return await run(self._pool, "set retention", q, transaction=False)

    async def expire_suspended(
        self, tenant_id: str, days: int, owner: str, *, dry_run: bool = False
    ) -> builtins.list[str]:
        check_setting("days", days)
        # Sessions someone leases right now are left alone (SKIP LOCKED, live
        # lease): they are being hydrated, not forgotten.
        select = (
            "SELECT session_id FROM sessions WHERE tenant_id = $1 AND state = 'suspended'"
            " AND updated_at < now() - make_interval(days => $2)"
            " AND (lease_owner IS NULL OR lease_expires_at <= now())"
        )

        async def q(conn: asyncpg.Connection) -> builtins.list[str]:
            if dry_run:
                return [r[0] for r in await conn.fetch(select, tenant_id, days)]
            await fence(conn, owner)
            rows = await conn.fetch(
                "UPDATE sessions SET state = 'deleted', epoch = epoch + 1, updated_at = now(),"
                " lease_owner = NULL, lease_expires_at ="
                " CASE WHEN lease_expires_at > now() THEN now() ELSE lease_expires_at END"
                f" WHERE tenant_id = $1 AND session_id IN ({select} FOR UPDATE SKIP LOCKED)"
                " RETURNING session_id",
                tenant_id,
                days,
            )
            return sorted(r[0] for r in rows)

        return await run(self._pool, "expire suspended sessions", q)

    async def prune_snapshots(
        self, tenant_id: str, keep_last: int, owner: str, *, dry_run: bool = False
    ) -> int:
        check_setting("keep_last", keep_last)
        doomed = (
            "SELECT n.snapshot_id FROM (SELECT snapshot_id, session_id, row_number() OVER"
            " (PARTITION BY session_id ORDER BY created_at DESC, snapshot_id DESC) AS rank"
            " FROM snapshots WHERE tenant_id = $1) n JOIN sessions s"
            " ON s.tenant_id = $1 AND s.session_id = n.session_id"
            " WHERE n.rank > $2 AND s.state <> 'deleted'"
            " AND n.snapshot_id IS DISTINCT FROM s.latest_snapshot_id"
        )

        async def q(conn: asyncpg.Connection) -> int:
            if dry_run:
                count = await conn.fetchval(
                    f"SELECT count(*) FROM ({doomed}) d", tenant_id, keep_last
                )
                return int(count)
            await fence(conn, owner)
            status: str = await conn.execute(
                f"DELETE FROM snapshots WHERE tenant_id = $1 AND snapshot_id IN ({doomed})",
                tenant_id,
                keep_last,
            )
            return int(status.rsplit(" ", 1)[1])

        return await run(self._pool, "prune snapshots", q)

    async def deleted_sessions(self, tenant_id: str, limit: int) -> builtins.list[DeletedSession]:
        check_limit(limit)

        async def q(conn: asyncpg.Connection) -> builtins.list[DeletedSession]:
            rows = await conn.fetch(
                "SELECT s.session_id, s.project_key, s.sdk_session_id,"
                " EXISTS (SELECT 1 FROM sessions o WHERE o.tenant_id = s.tenant_id"
                " AND o.state <> 'deleted' AND o.sdk_session_id = s.sdk_session_id) AS shared"
                " FROM sessions s WHERE s.tenant_id = $1 AND s.state = 'deleted'"
                " AND (s.sdk_session_id IS NOT NULL OR s.project_key IS NOT NULL"
                " OR s.latest_snapshot_id IS NOT NULL OR EXISTS (SELECT 1 FROM snapshots x"
                " WHERE x.tenant_id = s.tenant_id AND x.session_id = s.session_id))"
                " ORDER BY s.session_id LIMIT $2",
                tenant_id,
                limit,
            )
            return [
                deleted_session(r["session_id"], r["project_key"], r["sdk_session_id"], r["shared"])
                for r in rows
            ]

        return await run(self._pool, "list deleted sessions", q, transaction=False)

    async def purge_session(self, tenant_id: str, session_id: str, owner: str) -> int:
        async def q(conn: asyncpg.Connection) -> int:
            await fence(conn, owner)
            state = await conn.fetchval(
                "SELECT state FROM sessions WHERE tenant_id = $1 AND session_id = $2 FOR UPDATE",
                tenant_id,
                session_id,
            )
            if state is None:
                raise NotFound(f"session {session_id!r} not found")
            if state != "deleted":
                raise FailedPrecondition(f"session {session_id!r} is not deleted")
            status: str = await conn.execute(
                "DELETE FROM snapshots WHERE tenant_id = $1 AND session_id = $2",
                tenant_id,
                session_id,
            )
            await conn.execute(
                "UPDATE sessions SET latest_snapshot_id = NULL, sdk_session_id = NULL,"
                " project_key = NULL WHERE tenant_id = $1 AND session_id = $2",
                tenant_id,
                session_id,
            )
            return int(status.rsplit(" ", 1)[1])

        return await run(self._pool, "purge deleted session", q)

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
        seconds = check_grace(grace)
        check_limit(limit)
        unreferenced = (
            "NOT EXISTS (SELECT 1 FROM snapshots s WHERE s.tenant_id = m.tenant_id"
            " AND s.manifest_id = m.manifest_id)"
        )
        candidates = (
            "SELECT manifest_id, blob_key FROM manifests m WHERE m.tenant_id = $1"
            f" AND m.created_at < now() - make_interval(secs => $2) AND {unreferenced}"
        )

        async def q(conn: asyncpg.Connection) -> builtins.list[str]:
            if dry_run:
                return [r[0] for r in await conn.fetch(candidates, tenant_id, seconds)]
            await fence(conn, owner)
            rows = await conn.fetch(
                f"{candidates} ORDER BY manifest_id LIMIT $3 FOR UPDATE SKIP LOCKED",
                tenant_id,
                seconds,
                limit,
            )
            return await _delete_locked(
                conn,
                "manifests m",
                "manifest_id",
                unreferenced,
                tenant_id,
                {r["manifest_id"]: r["blob_key"] for r in rows},
                delete_blobs,
            )

        return await run(self._pool, "delete manifests", q)

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
        empty = (
            "NOT EXISTS (SELECT 1 FROM chunks c WHERE c.tenant_id = m.tenant_id"
            " AND c.pack_id = m.pack_id)"
        )
        candidates = f"SELECT pack_id, blob_key FROM packs m WHERE m.tenant_id = $1 AND {empty}"

        async def q(conn: asyncpg.Connection) -> builtins.list[str]:
            if dry_run:
                return [r[0] for r in await conn.fetch(candidates, tenant_id)]
            await fence(conn, owner)
            rows = await conn.fetch(
                f"{candidates} ORDER BY pack_id LIMIT $2 FOR UPDATE SKIP LOCKED", tenant_id, limit
            )
            return await _delete_locked(
                conn,
                "packs m",
                "pack_id",
                empty,
                tenant_id,
                {r["pack_id"]: r["blob_key"] for r in rows},
                delete_blobs,
            )

        return await run(self._pool, "delete empty packs", q)

    # -- listings for check ---------------------------------------------------

    async def snapshot_manifests(
        self, tenant_id: str, after: str, limit: int
    ) -> builtins.list[tuple[str, ManifestRecord | None]]:
        check_limit(limit)

        async def q(conn: asyncpg.Connection) -> builtins.list[tuple[str, ManifestRecord | None]]:
            rows = await conn.fetch(
                "SELECT d.manifest_id AS id, m.manifest_id, m.blob_key, m.root_tree_id,"
                " m.config_tree_id, m.size, m.created_at FROM (SELECT DISTINCT manifest_id"
                " FROM snapshots WHERE tenant_id = $1 AND manifest_id > $2"
                " ORDER BY manifest_id LIMIT $3) d LEFT JOIN manifests m"
                " ON m.tenant_id = $1 AND m.manifest_id = d.manifest_id ORDER BY d.manifest_id",
                tenant_id,
                after,
                limit,
            )
            out: builtins.list[tuple[str, ManifestRecord | None]] = []
            for r in rows:
                record = None
                if r["manifest_id"] is not None:
                    record = ManifestRecord(
                        manifest_id=r["manifest_id"],
                        blob_key=r["blob_key"],
                        root_tree_id=bytes(r["root_tree_id"]),
                        config_tree_id=bytes(r["config_tree_id"]),
                        size=r["size"],
                        created_at=r["created_at"],
                    )
                out.append((r["id"], record))
            return out

        return await run(self._pool, "list snapshot manifests", q, transaction=False)

    async def known_packs(self, tenant_id: str, pack_ids: Sequence[str]) -> set[str]:
        return await self._known("packs", "pack_id", tenant_id, pack_ids)

    async def known_manifests(self, tenant_id: str, manifest_ids: Sequence[str]) -> set[str]:
        return await self._known("manifests", "manifest_id", tenant_id, manifest_ids)

    async def _known(self, table: str, column: str, tenant_id: str, ids: Sequence[str]) -> set[str]:
        if not ids:
            return set()

        async def q(conn: asyncpg.Connection) -> set[str]:
            rows = await conn.fetch(
                f"SELECT {column} FROM {table} WHERE tenant_id = $1 AND {column} = ANY($2::text[])",
                tenant_id,
                list(ids),
            )
            return {r[0] for r in rows}

        return await run(self._pool, f"look up {table}", q, transaction=False)

    @asynccontextmanager
    async def reach(self, tenant_id: str, *, edges: bool = False) -> AsyncIterator[GcReach]:
        async with PgReach.open(self._pool, tenant_id, edges=edges) as reach:
            yield reach


async def _delete_locked(
    conn: asyncpg.Connection,
    table: str,
    column: str,
    unreferenced: str,
    tenant_id: str,
    locked: dict[str, str],
    delete_blobs: BlobDeleter,
) -> builtins.list[str]:
    """Objects first, then rows, for rows this transaction holds FOR UPDATE.
    The re-check is a new statement: it sees a reference committed after the
    locking statement's snapshot (one that committed before the lock)."""
    if not locked:
        return []
    still = await conn.fetch(
        f"SELECT {column} FROM {table} WHERE m.tenant_id = $1 AND {column} = ANY($2::text[])"
        f" AND {unreferenced}",
        tenant_id,
        list(locked),
    )
    doomed = {r[0]: locked[r[0]] for r in still}
    gone = set(await delete_blobs(list(doomed.values())))
    ids = sorted(i for i, key in doomed.items() if key in gone)
    if ids:
        await conn.execute(
            f"DELETE FROM {table} WHERE m.tenant_id = $1 AND {column} = ANY($2::text[])",
            tenant_id,
            ids,
        )
    return ids
