"""Tenants and sessions on PostgreSQL (see :mod:`.metadata` for the contracts)."""

from __future__ import annotations

import builtins
import json
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from sessiond.client.errors import AlreadyExists, FailedPrecondition, NotFound

from .metadata_common import (
    TENANT_TABLES,
    being_deleted,
    check_data_key,
    check_id,
    check_label_changes,
    check_labels,
    check_page_size,
    decode_page_token,
    dumps,
    encode_page_token,
    from_micros,
    list_fingerprint,
    micros,
    not_shredded,
)
from .postgres_errors import run
from .records import (
    ApiKeyRecord,
    NewSession,
    Page,
    SessionChanges,
    SessionRecord,
    SessionState,
    Tenant,
)
from .session_common import (
    check_changes,
    check_epoch,
    check_limit,
    check_owner,
    check_seconds,
    refuse_fenced,
    renew_refused,
)

_TENANT_COLUMNS = "tenant_id, name, chunk_key, created_at, disabled"

_SESSION_COLUMNS = (
    "tenant_id, session_id, state, labels, agent_options, snapshot_policy, sdk_session_id,"
    " latest_snapshot_id, forked_from, sandbox_id, sandbox_cwd, turn_count, epoch,"
    " created_at, updated_at, last_active_at, project_key, lease_owner, lease_expires_at"
)

_S_SESSION_COLUMNS = ", ".join("s." + c.strip() for c in _SESSION_COLUMNS.split(","))

# Leases are judged on the database clock. now() is the statement's start:
# one that waited for the row lock judges expiry as of when it was issued
# (a lease that ended meanwhile still counts as held: the safe side) and
# grants a lease that ends no earlier than the holder, counting ttl from
# before its call, believes.
#
# Taking the lease from anyone else, the NULL owner of a released lease
# included, bumps the epoch: every earlier holder is fenced. $1 owner, $2 ttl.
_TAKE_LEASE = """
    epoch = epoch + (lease_owner IS DISTINCT FROM $1)::int,
    updated_at = CASE WHEN lease_owner IS DISTINCT FROM $1 THEN now() ELSE updated_at END,
    lease_owner = $1,
    lease_expires_at = now() + make_interval(secs => $2)
"""

_ACQUIRE = f"""
UPDATE sessions SET {_TAKE_LEASE}
WHERE tenant_id = $3 AND session_id = $4 AND state <> 'deleted'
  AND (lease_owner IS NULL OR lease_owner = $1 OR lease_expires_at <= now())
RETURNING {_SESSION_COLUMNS}
"""

# The candidates are locked with SKIP LOCKED, so replicas claiming at the
# same moment split the idle sessions between them instead of queueing on
# (or double-claiming) the same rows; a row another claimer committed
# meanwhile is re-checked by the lock and dropped (its lease is now live).
# Served by sessions_idle_idx. $3 idle seconds, $4 limit.
_CLAIM_IDLE = f"""
WITH c AS (
    SELECT tenant_id, session_id FROM sessions
    WHERE state = 'active' AND last_active_at < now() - make_interval(secs => $3)
      AND (lease_owner IS NULL OR lease_expires_at <= now())
    ORDER BY last_active_at
    LIMIT $4
    FOR UPDATE SKIP LOCKED
)
UPDATE sessions AS s SET {_TAKE_LEASE}
FROM c WHERE s.tenant_id = c.tenant_id AND s.session_id = c.session_id
RETURNING {_S_SESSION_COLUMNS}
"""

# Ending a lease clears the owner and keeps the time it ended.
_END_LEASE = (
    "lease_owner = NULL,"
    " lease_expires_at = CASE WHEN lease_expires_at > now() THEN now() ELSE lease_expires_at END"
)

# Text changes: NULL leaves the column, '' clears it.
_UPDATE_FENCED = f"""
UPDATE sessions SET
    state = COALESCE($3::text, state),
    sandbox_id = CASE WHEN $4::text IS NULL THEN sandbox_id ELSE NULLIF($4, '') END,
    sandbox_cwd = CASE WHEN $5::text IS NULL THEN sandbox_cwd ELSE NULLIF($5, '') END,
    sdk_session_id = CASE WHEN $6::text IS NULL THEN sdk_session_id ELSE NULLIF($6, '') END,
    project_key = CASE WHEN $7::text IS NULL THEN project_key ELSE NULLIF($7, '') END,
    latest_snapshot_id =
        CASE WHEN $8::text IS NULL THEN latest_snapshot_id ELSE NULLIF($8, '') END,
    turn_count = turn_count + $9::bigint,
    last_active_at = CASE WHEN $10::boolean THEN now() ELSE last_active_at END,
    updated_at = now()
WHERE tenant_id = $1 AND session_id = $2
RETURNING {_SESSION_COLUMNS}
"""


def _tenant(row: asyncpg.Record) -> Tenant:
    return Tenant(
        tenant_id=row["tenant_id"],
        name=row["name"],
        chunk_key=bytes(row["chunk_key"]),
        created_at=row["created_at"],
        disabled=row["disabled"],
    )


_KEY_COLUMNS = "key_id, tenant_id, secret_hash, created_at, expires_at, revoked_at"


def _api_key(row: asyncpg.Record) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=row["key_id"],
        tenant_id=row["tenant_id"],
        secret_hash=bytes(row["secret_hash"]),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
    )


def _session(row: asyncpg.Record) -> SessionRecord:
    return SessionRecord(
        tenant_id=row["tenant_id"],
        session_id=row["session_id"],
        state=SessionState(row["state"]),
        labels=json.loads(row["labels"]),
        agent_options=json.loads(row["agent_options"]),
        snapshot_policy=json.loads(row["snapshot_policy"]),
        sdk_session_id=row["sdk_session_id"],
        latest_snapshot_id=row["latest_snapshot_id"],
        forked_from=row["forked_from"],
        sandbox_id=row["sandbox_id"],
        sandbox_cwd=row["sandbox_cwd"],
        turn_count=row["turn_count"],
        epoch=row["epoch"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        last_active_at=row["last_active_at"],
        project_key=row["project_key"],
        lease_owner=row["lease_owner"],
        lease_expires_at=row["lease_expires_at"],
    )


class PgTenantTable:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, tenant_id: str, name: str) -> Tenant:
        check_id("tenant_id", tenant_id)

        async def q(conn: asyncpg.Connection) -> Tenant:
            try:
                row = await conn.fetchrow(
                    f"INSERT INTO tenants (tenant_id, name, chunk_key) VALUES ($1, $2, $3)"
                    f" RETURNING {_TENANT_COLUMNS}",
                    tenant_id,
                    name,
                    secrets.token_bytes(32),
                )
            except asyncpg.UniqueViolationError as exc:
                raise AlreadyExists(f"tenant {tenant_id!r} already exists") from exc
            return _tenant(row)

        return await run(self._pool, "create tenant", q, transaction=False)

    async def ensure(self, tenant_id: str, name: str) -> Tenant:
        check_id("tenant_id", tenant_id)

        async def q(conn: asyncpg.Connection) -> Tenant:
            # ON CONFLICT DO NOTHING waits for a concurrent inserter to commit;
            # the follow-up SELECT is a new statement with a fresh snapshot, so
            # it sees that winner's row (and its chunk key).
            row = await conn.fetchrow(
                f"INSERT INTO tenants (tenant_id, name, chunk_key) VALUES ($1, $2, $3)"
                f" ON CONFLICT (tenant_id) DO NOTHING RETURNING {_TENANT_COLUMNS}",
                tenant_id,
                name,
                secrets.token_bytes(32),
            )
            if row is None:
                row = await conn.fetchrow(
                    f"SELECT {_TENANT_COLUMNS}, deleted_at FROM tenants WHERE tenant_id = $1",
                    tenant_id,
                )
                if row is None:  # purged between the two statements
                    raise NotFound(f"tenant {tenant_id!r} not found")
                if row["deleted_at"] is not None:
                    raise being_deleted(tenant_id)
            return _tenant(row)

        return await run(self._pool, "ensure tenant", q, transaction=False)

    async def get(self, tenant_id: str) -> Tenant:
        async def q(conn: asyncpg.Connection) -> Tenant:
            row = await conn.fetchrow(
                f"SELECT {_TENANT_COLUMNS} FROM tenants"
                " WHERE tenant_id = $1 AND deleted_at IS NULL",
                tenant_id,
            )
            if row is None:
                raise NotFound(f"tenant {tenant_id!r} not found")
            return _tenant(row)

        return await run(self._pool, "get tenant", q, transaction=False)

    async def data_key(self, tenant_id: str) -> tuple[bytes | None, str | None]:
        async def q(conn: asyncpg.Connection) -> tuple[bytes | None, str | None]:
            row = await conn.fetchrow(
                "SELECT wrapped_dek, dek_master_id FROM tenants"
                " WHERE tenant_id = $1 AND deleted_at IS NULL",
                tenant_id,
            )
            if row is None:
                raise NotFound(f"tenant {tenant_id!r} not found")
            wrapped = row["wrapped_dek"]
            return (None if wrapped is None else bytes(wrapped)), row["dek_master_id"]

        return await run(self._pool, "get tenant data key", q, transaction=False)

    async def set_data_key_if_absent(
        self, tenant_id: str, wrapped: bytes, master_id: str
    ) -> tuple[bytes, str]:
        check_data_key(wrapped, master_id)

        async def q(conn: asyncpg.Connection) -> tuple[bytes, str]:
            # A concurrent setter holds the row lock until it commits; this
            # UPDATE then re-checks its WHERE on the committed row and
            # matches nothing. The SELECT (a new statement, a fresh snapshot)
            # reads whichever key won.
            await conn.execute(
                "UPDATE tenants SET wrapped_dek = $2, dek_master_id = $3"
                " WHERE tenant_id = $1 AND wrapped_dek IS NULL AND deleted_at IS NULL",
                tenant_id,
                wrapped,
                master_id,
            )
            row = await conn.fetchrow(
                "SELECT wrapped_dek, dek_master_id FROM tenants"
                " WHERE tenant_id = $1 AND deleted_at IS NULL",
                tenant_id,
            )
            if row is None or row["wrapped_dek"] is None:
                raise NotFound(f"tenant {tenant_id!r} not found")
            return bytes(row["wrapped_dek"]), row["dek_master_id"]

        return await run(self._pool, "set tenant data key", q, transaction=False)

    async def shred(self, tenant_id: str) -> None:
        async def q(conn: asyncpg.Connection) -> None:
            done = await conn.fetchval(
                "UPDATE tenants SET wrapped_dek = NULL, dek_master_id = NULL,"
                " chunk_key = CASE WHEN deleted_at IS NULL THEN $2 ELSE chunk_key END,"
                " deleted_at = coalesce(deleted_at, now())"
                " WHERE tenant_id = $1 RETURNING 1",
                tenant_id,
                secrets.token_bytes(32),
            )
            if done is None:
                raise NotFound(f"tenant {tenant_id!r} not found")

        await run(self._pool, "shred tenant", q, transaction=False)

    async def purge(self, tenant_id: str) -> None:
        async def q(conn: asyncpg.Connection) -> None:
            # Locks the row: a concurrent shred/ensure waits for the verdict.
            deleted = await conn.fetchrow(
                "SELECT deleted_at FROM tenants WHERE tenant_id = $1 FOR UPDATE", tenant_id
            )
            if deleted is None:
                return
            if deleted["deleted_at"] is None:
                raise not_shredded(tenant_id)
            for table in TENANT_TABLES:
                await conn.execute(f"DELETE FROM {table} WHERE tenant_id = $1", tenant_id)
            await conn.execute("DELETE FROM tenants WHERE tenant_id = $1", tenant_id)

        await run(self._pool, "purge tenant", q)

    async def add_api_key(
        self, tenant_id: str, key_id: str, secret_hash: bytes, expires_at: datetime | None
    ) -> ApiKeyRecord:
        check_id("key_id", key_id)

        async def q(conn: asyncpg.Connection) -> ApiKeyRecord:
            try:
                row = await conn.fetchrow(
                    "INSERT INTO api_keys (key_id, tenant_id, secret_hash, expires_at)"
                    f" VALUES ($1, $2, $3, $4) RETURNING {_KEY_COLUMNS}",
                    key_id,
                    tenant_id,
                    secret_hash,
                    expires_at,
                )
            except asyncpg.UniqueViolationError as exc:
                raise AlreadyExists(f"API key {key_id!r} already exists") from exc
            except asyncpg.ForeignKeyViolationError as exc:
                raise NotFound(f"tenant {tenant_id!r} not found") from exc
            return _api_key(row)

        return await run(self._pool, "add API key", q, transaction=False)

    async def get_api_key(self, key_id: str) -> ApiKeyRecord:
        async def q(conn: asyncpg.Connection) -> ApiKeyRecord:
            row = await conn.fetchrow(
                f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_id = $1", key_id
            )
            if row is None:
                raise NotFound("API key not found")
            return _api_key(row)

        return await run(self._pool, "get API key", q, transaction=False)

    async def list_api_keys(self, tenant_id: str) -> builtins.list[ApiKeyRecord]:
        async def q(conn: asyncpg.Connection) -> builtins.list[ApiKeyRecord]:
            rows = await conn.fetch(
                f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE tenant_id = $1"
                " ORDER BY created_at, key_id",
                tenant_id,
            )
            return [_api_key(r) for r in rows]

        return await run(self._pool, "list API keys", q, transaction=False)

    async def revoke_api_key(self, tenant_id: str, key_id: str) -> ApiKeyRecord:
        async def q(conn: asyncpg.Connection) -> ApiKeyRecord:
            row = await conn.fetchrow(
                "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())"
                f" WHERE tenant_id = $1 AND key_id = $2 RETURNING {_KEY_COLUMNS}",
                tenant_id,
                key_id,
            )
            if row is None:
                raise NotFound(f"tenant {tenant_id!r} has no API key {key_id!r}")
            return _api_key(row)

        return await run(self._pool, "revoke API key", q, transaction=False)


class PgSessionTable:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, new: NewSession) -> SessionRecord:
        check_id("tenant_id", new.tenant_id)
        check_id("session_id", new.session_id)
        labels = check_labels(new.labels)

        async def q(conn: asyncpg.Connection) -> SessionRecord:
            try:
                row = await conn.fetchrow(
                    "INSERT INTO sessions (tenant_id, session_id, state, labels, agent_options,"
                    " snapshot_policy, forked_from, created_at, updated_at, last_active_at)"
                    " VALUES ($1, $2, 'new', $3::jsonb, $4::jsonb, $5::jsonb, $6,"
                    " now(), now(), now())"
                    f" RETURNING {_SESSION_COLUMNS}",
                    new.tenant_id,
                    new.session_id,
                    dumps(labels),
                    dumps(new.agent_options),
                    dumps(new.snapshot_policy),
                    new.forked_from,
                )
            except asyncpg.UniqueViolationError as exc:
                raise AlreadyExists(f"session {new.session_id!r} already exists") from exc
            except asyncpg.ForeignKeyViolationError as exc:
                raise NotFound(f"tenant {new.tenant_id!r} not found") from exc
            return _session(row)

        return await run(self._pool, "create session", q, transaction=False)

    async def get(self, tenant_id: str, session_id: str) -> SessionRecord:
        async def q(conn: asyncpg.Connection) -> SessionRecord:
            row = await conn.fetchrow(
                f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE tenant_id = $1 AND session_id = $2",
                tenant_id,
                session_id,
            )
            if row is None:
                raise NotFound(f"session {session_id!r} not found")
            return _session(row)

        return await run(self._pool, "get session", q, transaction=False)

    async def list(
        self,
        tenant_id: str,
        *,
        labels: Mapping[str, str] | None = None,
        page_size: int = 100,
        page_token: str = "",
        include_deleted: bool = False,
    ) -> Page[SessionRecord]:
        size = check_page_size(page_size)
        labels = check_labels(labels)
        fingerprint = list_fingerprint(tenant_id, labels, include_deleted)
        cursor = decode_page_token(page_token, fingerprint)
        # The statement is assembled from fixed fragments (never from input) so
        # each variant gets its own prepared plan that can use the indexes; a
        # single "($n IS NULL OR …)" statement would defeat them.
        where = ["tenant_id = $1"]
        args: builtins.list[Any] = [tenant_id]
        if labels:
            args.append(dumps(labels))
            where.append(f"labels @> ${len(args)}::jsonb")
        if not include_deleted:
            where.append("state <> 'deleted'")
        if cursor is not None:
            args += [from_micros(cursor[0]), cursor[1]]
            where.append(f"(created_at, session_id) < (${len(args) - 1}, ${len(args)})")
        args.append(size + 1)
        sql = (
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE {' AND '.join(where)}"
            f" ORDER BY created_at DESC, session_id DESC LIMIT ${len(args)}"
        )

        async def q(conn: asyncpg.Connection) -> builtins.list[asyncpg.Record]:
            rows: builtins.list[asyncpg.Record] = await conn.fetch(sql, *args)
            return rows

        rows = await run(self._pool, "list sessions", q, transaction=False)
        items = [_session(r) for r in rows[:size]]
        token = ""
        if len(rows) > size:
            last = items[-1]
            token = encode_page_token(fingerprint, micros(last.created_at), last.session_id)
        return Page(items=items, next_token=token)

    async def update(
        self,
        tenant_id: str,
        session_id: str,
        *,
        set_labels: Mapping[str, str] | None = None,
        remove_labels: Sequence[str] = (),
        agent_options: dict[str, Any] | None = None,
        snapshot_policy: dict[str, Any] | None = None,
    ) -> SessionRecord:
        set_labels = check_labels(set_labels)
        check_label_changes(set_labels, remove_labels)

        async def q(conn: asyncpg.Connection) -> SessionRecord:
            # One UPDATE applies every change atomically; the follow-up read
            # only decides which error to report when nothing matched.
            row = await conn.fetchrow(
                "UPDATE sessions SET labels = (labels - $3::text[]) || $4::jsonb,"
                " agent_options = COALESCE($5::jsonb, agent_options),"
                " snapshot_policy = COALESCE($6::jsonb, snapshot_policy),"
                " updated_at = now()"
                " WHERE tenant_id = $1 AND session_id = $2 AND state <> 'deleted'"
                f" RETURNING {_SESSION_COLUMNS}",
                tenant_id,
                session_id,
                builtins.list(remove_labels),
                dumps(set_labels),
                None if agent_options is None else dumps(agent_options),
                None if snapshot_policy is None else dumps(snapshot_policy),
            )
            if row is not None:
                return _session(row)
            state = await conn.fetchval(
                "SELECT state FROM sessions WHERE tenant_id = $1 AND session_id = $2",
                tenant_id,
                session_id,
            )
            if state == SessionState.DELETED:
                raise FailedPrecondition(f"session {session_id!r} is deleted")
            raise NotFound(f"session {session_id!r} not found")

        return await run(self._pool, "update session", q, transaction=False)

    async def bump_epoch(self, tenant_id: str, session_id: str) -> SessionRecord:
        async def q(conn: asyncpg.Connection) -> SessionRecord:
            # The row lock this UPDATE takes queues it behind any commit in
            # flight: that commit either landed under the old epoch or, once
            # this returns, is refused.
            row = await conn.fetchrow(
                "UPDATE sessions SET epoch = epoch + 1, updated_at = now()"
                " WHERE tenant_id = $1 AND session_id = $2 AND state <> 'deleted'"
                f" RETURNING {_SESSION_COLUMNS}",
                tenant_id,
                session_id,
            )
            if row is not None:
                return _session(row)
            state = await conn.fetchval(
                "SELECT state FROM sessions WHERE tenant_id = $1 AND session_id = $2",
                tenant_id,
                session_id,
            )
            if state == SessionState.DELETED:
                raise FailedPrecondition(f"session {session_id!r} is deleted")
            raise NotFound(f"session {session_id!r} not found")

        return await run(self._pool, "bump session epoch", q, transaction=False)

    async def acquire_lease(
        self, tenant_id: str, session_id: str, owner: str, ttl: float
    ) -> SessionRecord | None:
        check_owner(owner)
        secs = check_seconds("ttl", ttl, allow_zero=False)

        async def q(conn: asyncpg.Connection) -> SessionRecord | None:
            # One statement: concurrent acquirers queue on the row lock and
            # each re-checks the lease the previous one left (exactly one
            # wins a free lease).
            row = await conn.fetchrow(_ACQUIRE, owner, secs, tenant_id, session_id)
            if row is not None:
                return _session(row)
            state = await conn.fetchval(
                "SELECT state FROM sessions WHERE tenant_id = $1 AND session_id = $2",
                tenant_id,
                session_id,
            )
            if state is None:
                raise NotFound(f"session {session_id!r} not found")
            if state == SessionState.DELETED:
                raise FailedPrecondition(f"session {session_id!r} is deleted")
            return None

        return await run(self._pool, "acquire session lease", q, transaction=False)

    async def renew_lease(
        self, tenant_id: str, session_id: str, owner: str, epoch: int, ttl: float
    ) -> None:
        check_owner(owner)
        check_epoch(epoch)
        secs = check_seconds("ttl", ttl, allow_zero=False)

        async def q(conn: asyncpg.Connection) -> None:
            done = await conn.fetchval(
                "UPDATE sessions SET lease_expires_at = now() + make_interval(secs => $5)"
                " WHERE tenant_id = $1 AND session_id = $2 AND lease_owner = $3 AND epoch = $4"
                " AND state <> 'deleted' RETURNING 1",
                tenant_id,
                session_id,
                owner,
                epoch,
                secs,
            )
            if done is not None:
                return
            exists = await conn.fetchval(
                "SELECT 1 FROM sessions WHERE tenant_id = $1 AND session_id = $2",
                tenant_id,
                session_id,
            )
            if exists is None:
                raise NotFound(f"session {session_id!r} not found")
            raise renew_refused(session_id, owner, epoch)

        await run(self._pool, "renew session lease", q, transaction=False)

    async def release_lease(self, tenant_id: str, session_id: str, owner: str, epoch: int) -> None:
        check_owner(owner)
        check_epoch(epoch)

        async def q(conn: asyncpg.Connection) -> None:
            await conn.execute(
                f"UPDATE sessions SET {_END_LEASE}"
                " WHERE tenant_id = $1 AND session_id = $2 AND lease_owner = $3 AND epoch = $4",
                tenant_id,
                session_id,
                owner,
                epoch,
            )

        await run(self._pool, "release session lease", q, transaction=False)

    async def update_fenced(
        self, tenant_id: str, session_id: str, epoch: int, changes: SessionChanges
    ) -> SessionRecord:
        check_epoch(epoch)
        ch = check_changes(changes)

        async def q(conn: asyncpg.Connection) -> SessionRecord:
            # The row lock orders this against takeovers, deletion and
            # snapshot commits: the checks below hold until we commit.
            cur = await conn.fetchrow(
                "SELECT state, epoch FROM sessions WHERE tenant_id = $1 AND session_id = $2"
                " FOR UPDATE",
                tenant_id,
                session_id,
            )
            if cur is None:
                raise NotFound(f"session {session_id!r} not found")
            refuse_fenced(session_id, SessionState(cur["state"]), cur["epoch"], epoch, ch.state)
            row = await conn.fetchrow(
                _UPDATE_FENCED,
                tenant_id,
                session_id,
                None if ch.state is None else ch.state.value,
                ch.sandbox_id,
                ch.sandbox_cwd,
                ch.sdk_session_id,
                ch.project_key,
                ch.latest_snapshot_id,
                ch.add_turns,
                ch.touch,
            )
            return _session(row)

        return await run(self._pool, "update session (fenced)", q)

    async def claim_idle(
        self, owner: str, idle_seconds: float, ttl: float, limit: int
    ) -> builtins.list[SessionRecord]:
        check_owner(owner)
        idle = check_seconds("idle_seconds", idle_seconds, allow_zero=True)
        secs = check_seconds("ttl", ttl, allow_zero=False)
        n = check_limit(limit)

        async def q(conn: asyncpg.Connection) -> builtins.list[asyncpg.Record]:
            rows: builtins.list[asyncpg.Record] = await conn.fetch(
                _CLAIM_IDLE, owner, secs, idle, n
            )
            return rows

        rows = await run(self._pool, "claim idle sessions", q, transaction=False)
        claimed = [_session(r) for r in rows]
        claimed.sort(key=lambda r: (r.last_active_at, r.tenant_id, r.session_id))
        return claimed

    async def list_leased_by(self, owner: str) -> builtins.list[SessionRecord]:
        check_owner(owner)

        async def q(conn: asyncpg.Connection) -> builtins.list[asyncpg.Record]:
            rows: builtins.list[asyncpg.Record] = await conn.fetch(
                f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE lease_owner = $1"
                " AND lease_expires_at > now() AND state <> 'deleted'"
                " ORDER BY tenant_id, session_id",
                owner,
            )
            return rows

        rows = await run(self._pool, "list leased sessions", q, transaction=False)
        return [_session(r) for r in rows]

    async def mark_deleted(self, tenant_id: str, session_id: str) -> SessionRecord:
        async def q(conn: asyncpg.Connection) -> SessionRecord:
            row = await conn.fetchrow(
                "UPDATE sessions SET state = 'deleted', epoch = epoch + 1, updated_at = now(),"
                f" {_END_LEASE}"
                " WHERE tenant_id = $1 AND session_id = $2 AND state <> 'deleted'"
                f" RETURNING {_SESSION_COLUMNS}",
                tenant_id,
                session_id,
            )
            if row is None:
                # Already deleted (a no-op: the epoch was bumped then) or absent.
                row = await conn.fetchrow(
                    f"SELECT {_SESSION_COLUMNS} FROM sessions"
                    " WHERE tenant_id = $1 AND session_id = $2",
                    tenant_id,
                    session_id,
                )
            if row is None:
                raise NotFound(f"session {session_id!r} not found")
            return _session(row)

        return await run(self._pool, "delete session", q, transaction=False)
