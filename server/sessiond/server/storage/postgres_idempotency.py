"""Idempotency keys on PostgreSQL (see :class:`.metadata.IdempotencyTable`
for the contract).

A claim is one ``INSERT … ON CONFLICT DO UPDATE … WHERE`` whose WHERE is the
takeover rule (expired row, or an unfinished claim gone stale): the
statement either claims the key or locks the row it lost to, which the same
transaction then reads. Durations are measured on the database clock.
"""

from __future__ import annotations

import asyncpg

from sessiond.client.errors import InvalidArgument, NotFound

from .idempotency_common import check_ident
from .postgres_errors import run
from .records import IdempotencyRecord
from .session_common import check_limit, check_seconds

_COLUMNS = "tenant_id, method, key, request_hash, response, created_at"


def _record(row: asyncpg.Record) -> IdempotencyRecord:
    response = row["response"]
    return IdempotencyRecord(
        tenant_id=row["tenant_id"],
        method=row["method"],
        key=row["key"],
        request_hash=bytes(row["request_hash"]),
        response=None if response is None else bytes(response),
        created_at=row["created_at"],
    )


class PgIdempotencyTable:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

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
        stale = check_seconds("stale_after", stale_after, allow_zero=False)
        expiry = check_seconds("ttl", ttl, allow_zero=False)

        async def q(conn: asyncpg.Connection) -> IdempotencyRecord | None:
            try:
                claimed = await conn.fetchval(
                    "INSERT INTO idempotency_keys AS k (tenant_id, method, key, request_hash)"
                    " VALUES ($1, $2, $3, $4)"
                    " ON CONFLICT (tenant_id, method, key) DO UPDATE"
                    "   SET request_hash = EXCLUDED.request_hash, response = NULL,"
                    "       created_at = now()"
                    " WHERE k.created_at <= now() - make_interval(secs => $6)"
                    "    OR (k.response IS NULL"
                    "        AND k.created_at <= now() - make_interval(secs => $5))"
                    " RETURNING true",
                    tenant_id,
                    method,
                    key,
                    request_hash,
                    float(stale),
                    float(expiry),
                )
            except asyncpg.ForeignKeyViolationError as exc:
                raise NotFound(f"tenant {tenant_id!r} not found") from exc
            if claimed:
                return None
            # ON CONFLICT locked the row we lost to: it is there to read.
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM idempotency_keys"
                " WHERE tenant_id = $1 AND method = $2 AND key = $3",
                tenant_id,
                method,
                key,
            )
            assert row is not None
            return _record(row)

        return await run(self._pool, "claim idempotency key", q)

    async def complete(
        self, tenant_id: str, method: str, key: str, request_hash: bytes, response: bytes
    ) -> None:
        check_ident(tenant_id, method, key, request_hash)
        if not isinstance(response, bytes):
            raise InvalidArgument("response must be bytes")

        async def q(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "UPDATE idempotency_keys SET response = $5"
                " WHERE tenant_id = $1 AND method = $2 AND key = $3"
                " AND request_hash = $4 AND response IS NULL",
                tenant_id,
                method,
                key,
                request_hash,
                response,
            )

        await run(self._pool, "complete idempotency key", q, transaction=False)

    async def release(self, tenant_id: str, method: str, key: str, request_hash: bytes) -> None:
        check_ident(tenant_id, method, key, request_hash)

        async def q(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "DELETE FROM idempotency_keys"
                " WHERE tenant_id = $1 AND method = $2 AND key = $3"
                " AND request_hash = $4 AND response IS NULL",
                tenant_id,
                method,
                key,
                request_hash,
            )

        await run(self._pool, "release idempotency key", q, transaction=False)

    async def expire(self, older_than: float, *, limit: int = 1000) -> int:
        age = check_seconds("older_than", older_than, allow_zero=True)
        count = check_limit(limit)

        async def q(conn: asyncpg.Connection) -> int:
            # SKIP LOCKED: concurrent expirers (and a claim holding a row) do
            # not wait for each other.
            rows = await conn.fetch(
                "DELETE FROM idempotency_keys WHERE (tenant_id, method, key) IN ("
                "  SELECT tenant_id, method, key FROM idempotency_keys"
                "  WHERE created_at <= now() - make_interval(secs => $1)"
                "  ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
                " RETURNING 1",
                float(age),
                count,
            )
            return len(rows)

        return await run(self._pool, "expire idempotency keys", q)
