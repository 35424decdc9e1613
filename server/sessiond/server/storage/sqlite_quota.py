"""Quotas on SQLite (see :class:`.metadata.QuotaTable`; transactions are
serialized by ``BEGIN IMMEDIATE``, so a reservation's check and update are
atomic)."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from sessiond.client.errors import InvalidArgument, NotFound, ResourceExhausted

from .records import Usage

if TYPE_CHECKING:
    from .sqlite_meta import SqliteDb

_STORED = (
    "(SELECT coalesce(sum(size), 0) FROM packs WHERE tenant_id = :t)"
    " + (SELECT coalesce(sum(size), 0) FROM manifests WHERE tenant_id = :t)"
)
_LIVE = "(SELECT count(*) FROM sessions WHERE tenant_id = :t AND state <> 'deleted')"


def _check_quota(name: str, value: int | None) -> None:
    if value is not None and value < 0:
        raise InvalidArgument(f"{name} must not be negative")


class SqliteQuotaTable:
    def __init__(self, db: SqliteDb) -> None:
        self._db = db

    async def set_quota(
        self, tenant_id: str, *, quota_bytes: int | None, quota_sessions: int | None
    ) -> None:
        _check_quota("quota_bytes", quota_bytes)
        _check_quota("quota_sessions", quota_sessions)

        def tx(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "UPDATE tenants SET quota_bytes = ?, quota_sessions = ?"
                " WHERE tenant_id = ? AND deleted_at IS NULL",
                (quota_bytes, quota_sessions, tenant_id),
            )
            if cur.rowcount == 0:
                raise NotFound(f"tenant {tenant_id!r} not found")

        await self._db.call("set quota", tx)

    async def usage(self, tenant_id: str) -> Usage:
        def tx(conn: sqlite3.Connection) -> Usage:
            row = conn.execute(
                f"SELECT quota_bytes, quota_sessions, {_STORED}, {_LIVE},"
                " coalesce((SELECT reserved_bytes FROM tenant_usage WHERE tenant_id = :t), 0)"
                " FROM tenants WHERE tenant_id = :t",
                {"t": tenant_id},
            ).fetchone()
            if row is None:
                raise NotFound(f"tenant {tenant_id!r} not found")
            return Usage(
                stored_bytes=int(row[2]),
                reserved_bytes=int(row[4]),
                quota_bytes=row[0],
                live_sessions=int(row[3]),
                quota_sessions=row[1],
            )

        return await self._db.call("read usage", tx, write=False)

    async def reserve_bytes(self, tenant_id: str, nbytes: int) -> None:
        if nbytes < 0:
            raise InvalidArgument("a reservation must not be negative")

        def tx(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                f"SELECT quota_bytes, {_STORED},"
                " coalesce((SELECT reserved_bytes FROM tenant_usage WHERE tenant_id = :t), 0)"
                " FROM tenants WHERE tenant_id = :t",
                {"t": tenant_id},
            ).fetchone()
            if row is None:
                raise NotFound(f"tenant {tenant_id!r} not found")
            quota, stored, reserved = row
            if quota is not None and stored + reserved + nbytes > quota:
                raise ResourceExhausted(
                    f"storage quota of {quota} bytes exceeded: {stored} stored,"
                    f" {reserved} reserved by uploads in flight, {nbytes} requested"
                )
            conn.execute(
                "INSERT INTO tenant_usage (tenant_id, reserved_bytes) VALUES (?, ?)"
                " ON CONFLICT (tenant_id) DO UPDATE SET"
                " reserved_bytes = reserved_bytes + excluded.reserved_bytes",
                (tenant_id, nbytes),
            )

        await self._db.call("reserve quota", tx)

    async def release_bytes(self, tenant_id: str, nbytes: int) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE tenant_usage SET reserved_bytes = max(reserved_bytes - ?, 0)"
                " WHERE tenant_id = ?",
                (nbytes, tenant_id),
            )

        await self._db.call("release quota", tx)

    async def live_sessions(self, tenant_id: str) -> int:
        def tx(conn: sqlite3.Connection) -> int:
            return int(conn.execute(f"SELECT {_LIVE}", {"t": tenant_id}).fetchone()[0])

        return await self._db.call("count sessions", tx, write=False)
