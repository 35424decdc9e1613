"""Quotas on PostgreSQL (see :class:`.metadata.QuotaTable`).

A reservation locks the tenant's ``tenant_usage`` row, so concurrent
reservations of one tenant are serialized and the sum they compare against
the quota includes every other reservation in flight.
"""

from __future__ import annotations

import asyncpg

from sessiond.client.errors import InvalidArgument, NotFound, ResourceExhausted

from .postgres_errors import run
from .records import Usage

_STORED = (
    "(SELECT coalesce(sum(size), 0) FROM packs WHERE tenant_id = $1)"
    " + (SELECT coalesce(sum(size), 0) FROM manifests WHERE tenant_id = $1)"
)
_LIVE = "(SELECT count(*) FROM sessions WHERE tenant_id = $1 AND state <> 'deleted')"


def _check_quota(name: str, value: int | None) -> None:
    if value is not None and value < 0:
        raise InvalidArgument(f"{name} must not be negative")


class PgQuotaTable:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def set_quota(
        self, tenant_id: str, *, quota_bytes: int | None, quota_sessions: int | None
    ) -> None:
        _check_quota("quota_bytes", quota_bytes)
        _check_quota("quota_sessions", quota_sessions)

        async def q(conn: asyncpg.Connection) -> None:
            done = await conn.execute(
                "UPDATE tenants SET quota_bytes = $2, quota_sessions = $3"
                " WHERE tenant_id = $1 AND deleted_at IS NULL",
                tenant_id,
                quota_bytes,
                quota_sessions,
            )
            if done.endswith(" 0"):
                raise NotFound(f"tenant {tenant_id!r} not found")

        await run(self._pool, "set quota", q, transaction=False)

    async def usage(self, tenant_id: str) -> Usage:
        async def q(conn: asyncpg.Connection) -> Usage:
            row = await conn.fetchrow(
                f"SELECT t.quota_bytes, t.quota_sessions, {_STORED} AS stored, {_LIVE} AS live,"
                " coalesce((SELECT reserved_bytes FROM tenant_usage u"
                " WHERE u.tenant_id = $1), 0) AS reserved"
                " FROM tenants t WHERE t.tenant_id = $1",
                tenant_id,
            )
            if row is None:
                raise NotFound(f"tenant {tenant_id!r} not found")
            return Usage(
                stored_bytes=int(row["stored"]),
                reserved_bytes=int(row["reserved"]),
                quota_bytes=row["quota_bytes"],
                live_sessions=int(row["live"]),
                quota_sessions=row["quota_sessions"],
            )

        return await run(self._pool, "read usage", q, transaction=False)

    async def reserve_bytes(self, tenant_id: str, nbytes: int) -> None:
        if nbytes < 0:
            raise InvalidArgument("a reservation must not be negative")

        async def q(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "INSERT INTO tenant_usage (tenant_id) VALUES ($1) ON CONFLICT DO NOTHING",
                tenant_id,
            )
            row = await conn.fetchrow(
                "SELECT u.reserved_bytes, t.quota_bytes FROM tenant_usage u"
                " JOIN tenants t USING (tenant_id) WHERE u.tenant_id = $1 FOR UPDATE OF u",
                tenant_id,
            )
            if row is None:
                raise NotFound(f"tenant {tenant_id!r} not found")
            quota = row["quota_bytes"]
            if quota is not None:
                stored = int(await conn.fetchval(f"SELECT {_STORED}", tenant_id))
                if stored + row["reserved_bytes"] + nbytes > quota:
                    raise ResourceExhausted(
                        f"storage quota of {quota} bytes exceeded: {stored} stored,"
                        f" {row['reserved_bytes']} reserved by uploads in flight,"
                        f" {nbytes} requested"
                    )
            await conn.execute(
                "UPDATE tenant_usage SET reserved_bytes = reserved_bytes + $2 WHERE tenant_id = $1",
                tenant_id,
                nbytes,
            )

        try:
            await run(self._pool, "reserve quota", q)
        except asyncpg.ForeignKeyViolationError as exc:  # pragma: no cover - translated by run
            raise NotFound(f"tenant {tenant_id!r} not found") from exc

    async def release_bytes(self, tenant_id: str, nbytes: int) -> None:
        async def q(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "UPDATE tenant_usage SET reserved_bytes = greatest(reserved_bytes - $2, 0)"
                " WHERE tenant_id = $1",
                tenant_id,
                nbytes,
            )

        await run(self._pool, "release quota", q, transaction=False)

    async def live_sessions(self, tenant_id: str) -> int:
        async def q(conn: asyncpg.Connection) -> int:
            return int(await conn.fetchval(f"SELECT {_LIVE}", tenant_id))

        return await run(self._pool, "count sessions", q, transaction=False)
