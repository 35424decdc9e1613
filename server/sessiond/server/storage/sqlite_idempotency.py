"""Idempotency keys on SQLite (see :class:`.metadata.IdempotencyTable` for
the contract, :mod:`.sqlite_meta` for the threading model: each method is one
transaction in the database thread, so a claim may read, decide and write
without races). Timestamps are integer microseconds of the process clock."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from sessiond.client.errors import InvalidArgument, NotFound

from .idempotency_common import check_ident
from .metadata_common import from_micros
from .records import IdempotencyRecord
from .session_common import check_limit, check_seconds, to_micros
from .sqlite_sessions import Clock, is_fk_violation

if TYPE_CHECKING:
    from .sqlite_meta import SqliteDb

_WHERE = "tenant_id = ? AND method = ? AND key = ?"


class SqliteIdempotencyTable:
    def __init__(self, db: SqliteDb, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def claim(
        self,
        tenant_id: str,
        method: str,
        key: str,
        request_hash: bytes,
        *,
        stale_after: float,
        ttl: float,
    ) -> IdempotencyRecord | None:
        check_ident(tenant_id, method, key, request_hash)
        stale = to_micros(check_seconds("stale_after", stale_after, allow_zero=False))
        expiry = to_micros(check_seconds("ttl", ttl, allow_zero=False))
        ident = (tenant_id, method, key)

        def tx(conn: sqlite3.Connection) -> IdempotencyRecord | None:
            now = self._clock()
            row = conn.execute(
                f"SELECT request_hash, response, created_at FROM idempotency_keys WHERE {_WHERE}",
                ident,
            ).fetchone()
            if row is not None:
                created = int(row[2])
                expired = created <= now - expiry
                stale_claim = row[1] is None and created <= now - stale
                if not (expired or stale_claim):
                    return IdempotencyRecord(
                        tenant_id=tenant_id,
                        method=method,
                        key=key,
                        request_hash=bytes(row[0]),
                        response=None if row[1] is None else bytes(row[1]),
                        created_at=from_micros(created),
                    )
                conn.execute(
                    "UPDATE idempotency_keys SET request_hash = ?, response = NULL,"
                    f" created_at = ? WHERE {_WHERE}",
                    (request_hash, now, *ident),
                )
                return None
            try:
                conn.execute(
                    "INSERT INTO idempotency_keys"
                    " (tenant_id, method, key, request_hash, response, created_at)"
                    " VALUES (?, ?, ?, ?, NULL, ?)",
                    (*ident, request_hash, now),
                )
            except sqlite3.IntegrityError as exc:
                if is_fk_violation(exc):
                    raise NotFound(f"tenant {tenant_id!r} not found") from exc
                raise
            return None

        return await self._db.call("claim idempotency key", tx)

    async def complete(
        self, tenant_id: str, method: str, key: str, request_hash: bytes, response: bytes
    ) -> None:
        check_ident(tenant_id, method, key, request_hash)
        if not isinstance(response, bytes):
            raise InvalidArgument("response must be bytes")

        def tx(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"UPDATE idempotency_keys SET response = ? WHERE {_WHERE}"
                " AND request_hash = ? AND response IS NULL",
                (response, tenant_id, method, key, request_hash),
            )

        await self._db.call("complete idempotency key", tx)

    async def release(self, tenant_id: str, method: str, key: str, request_hash: bytes) -> None:
        check_ident(tenant_id, method, key, request_hash)

        def tx(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"DELETE FROM idempotency_keys WHERE {_WHERE}"
                " AND request_hash = ? AND response IS NULL",
                (tenant_id, method, key, request_hash),
            )

        await self._db.call("release idempotency key", tx)

    async def expire(self, older_than: float, *, limit: int = 1000) -> int:
        age = to_micros(check_seconds("older_than", older_than, allow_zero=True))
        count = check_limit(limit)

        def tx(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "DELETE FROM idempotency_keys WHERE rowid IN ("
                " SELECT rowid FROM idempotency_keys WHERE created_at <= ?"
                " ORDER BY created_at LIMIT ?)",
                (self._clock() - age, count),
            )
            return int(cur.rowcount)

        return await self._db.call("expire idempotency keys", tx)
