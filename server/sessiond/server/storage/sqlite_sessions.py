"""Tenants and sessions on SQLite (see :mod:`.metadata` for the contracts,
:mod:`.sqlite_meta` for the threading model; transcripts live in
:mod:`.sqlite_tables`).

Every method body below is a plain function run as ONE transaction in the
database thread; it may read, decide in Python and write without races,
because no other transaction of this process can interleave and other
processes are kept out by ``BEGIN IMMEDIATE``. Lease statements still
mirror their PostgreSQL counterparts (one UPDATE whose WHERE is the lease
rule) so both backends read the same; the clock is the process clock,
sampled once per transaction.
"""

from __future__ import annotations

import builtins
import json
import secrets
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

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
    to_micros,
)

if TYPE_CHECKING:
    from .sqlite_meta import SqliteDb

Clock = Callable[[], int]

_TENANT_COLUMNS = "tenant_id, name, chunk_key, created_at, disabled"
_SESSION_COLUMNS = (
    "tenant_id, session_id, state, labels, agent_options, snapshot_policy, sdk_session_id,"
    " latest_snapshot_id, forked_from, sandbox_id, sandbox_cwd, turn_count, epoch,"
    " created_at, updated_at, last_active_at, project_key, lease_owner, lease_expires_at"
)


# The lease rules of postgres_sessions, with :now the transaction's clock
# reading: taking the lease from anyone else (a released lease's NULL owner
# included) bumps the epoch; ending one clears the owner and keeps the time
# it ended. IS NOT is SQLite's IS DISTINCT FROM.
_TAKE_LEASE = (
    "epoch = epoch + (lease_owner IS NOT :owner),"
    " updated_at = CASE WHEN lease_owner IS NOT :owner THEN :now ELSE updated_at END,"
    " lease_owner = :owner, lease_expires_at = :now + :ttl"
)

_ACQUIRE = (
    f"UPDATE sessions SET {_TAKE_LEASE}"
    " WHERE tenant_id = :t AND session_id = :s AND state <> 'deleted'"
    " AND (lease_owner IS NULL OR lease_owner = :owner OR lease_expires_at <= :now)"
    f" RETURNING {_SESSION_COLUMNS}"
)

# Served by sessions_idle_idx. (No SKIP LOCKED: one transaction at a time.)
_CLAIM_IDLE = (
    f"UPDATE sessions SET {_TAKE_LEASE}"
    " WHERE (tenant_id, session_id) IN (SELECT tenant_id, session_id FROM sessions"
    " WHERE state = 'active' AND last_active_at < :now - :idle"
    " AND (lease_owner IS NULL OR lease_expires_at <= :now)"
    " ORDER BY last_active_at LIMIT :n)"
    f" RETURNING {_SESSION_COLUMNS}"
)

_END_LEASE = (
    "lease_owner = NULL,"
    " lease_expires_at = CASE WHEN lease_expires_at > :now THEN :now ELSE lease_expires_at END"
)

# Text changes: NULL leaves the column, '' clears it.
_UPDATE_FENCED = (
    "UPDATE sessions SET state = COALESCE(:state, state),"
    " sandbox_id = CASE WHEN :sandbox_id IS NULL THEN sandbox_id"
    " ELSE NULLIF(:sandbox_id, '') END,"
    " sandbox_cwd = CASE WHEN :sandbox_cwd IS NULL THEN sandbox_cwd"
    " ELSE NULLIF(:sandbox_cwd, '') END,"
    " sdk_session_id = CASE WHEN :sdk_session_id IS NULL THEN sdk_session_id"
    " ELSE NULLIF(:sdk_session_id, '') END,"
    " project_key = CASE WHEN :project_key IS NULL THEN project_key"
    " ELSE NULLIF(:project_key, '') END,"
    " latest_snapshot_id = CASE WHEN :latest_snapshot_id IS NULL THEN latest_snapshot_id"
    " ELSE NULLIF(:latest_snapshot_id, '') END,"
    " turn_count = turn_count + :add_turns,"
    " last_active_at = CASE WHEN :touch THEN :now ELSE last_active_at END,"
    " updated_at = :now"
    f" WHERE tenant_id = :t AND session_id = :s RETURNING {_SESSION_COLUMNS}"
)


def is_unique_violation(exc: sqlite3.IntegrityError) -> bool:
    return "UNIQUE constraint failed" in str(exc) or "PRIMARY KEY" in str(exc)


def is_fk_violation(exc: sqlite3.IntegrityError) -> bool:
    return "FOREIGN KEY constraint failed" in str(exc)


def _tenant(row: Any) -> Tenant:
    return Tenant(
        tenant_id=row[0],
        name=row[1],
        chunk_key=bytes(row[2]),
        created_at=from_micros(row[3]),
        disabled=bool(row[4]),
    )


def _data_key(conn: sqlite3.Connection, tenant_id: str) -> tuple[bytes | None, str | None]:
    row = conn.execute(
        "SELECT wrapped_dek, dek_master_id FROM tenants WHERE tenant_id = ? AND deleted_at IS NULL",
        (tenant_id,),
    ).fetchone()
    if row is None:
        raise NotFound(f"tenant {tenant_id!r} not found")
    return (None if row[0] is None else bytes(row[0])), row[1]


_KEY_COLUMNS = "key_id, tenant_id, secret_hash, created_at, expires_at, revoked_at"


def _api_key(row: Any) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=row[0],
        tenant_id=row[1],
        secret_hash=bytes(row[2]),
        created_at=from_micros(row[3]),
        expires_at=None if row[4] is None else from_micros(row[4]),
        revoked_at=None if row[5] is None else from_micros(row[5]),
    )


def _session(row: Any) -> SessionRecord:
    return SessionRecord(
        tenant_id=row[0],
        session_id=row[1],
        state=SessionState(row[2]),
        labels=json.loads(row[3]),
        agent_options=json.loads(row[4]),
        snapshot_policy=json.loads(row[5]),
        sdk_session_id=row[6],
        latest_snapshot_id=row[7],
        forked_from=row[8],
        sandbox_id=row[9],
        sandbox_cwd=row[10],
        turn_count=row[11],
        epoch=row[12],
        created_at=from_micros(row[13]),
        updated_at=from_micros(row[14]),
        last_active_at=from_micros(row[15]),
        project_key=row[16],
        lease_owner=row[17],
        lease_expires_at=None if row[18] is None else from_micros(row[18]),
    )


class SqliteTenantTable:
    def __init__(self, db: SqliteDb, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def create(self, tenant_id: str, name: str) -> Tenant:
        check_id("tenant_id", tenant_id)
        key = secrets.token_bytes(32)

        def tx(conn: sqlite3.Connection) -> Tenant:
            try:
                row = conn.execute(
                    "INSERT INTO tenants (tenant_id, name, chunk_key, created_at)"
                    f" VALUES (?, ?, ?, ?) RETURNING {_TENANT_COLUMNS}",
                    (tenant_id, name, key, self._clock()),
                ).fetchone()
            except sqlite3.IntegrityError as exc:
                if is_unique_violation(exc):
                    raise AlreadyExists(f"tenant {tenant_id!r} already exists") from exc
                raise
            return _tenant(row)

        return await self._db.call("create tenant", tx)

    async def ensure(self, tenant_id: str, name: str) -> Tenant:
        check_id("tenant_id", tenant_id)
        key = secrets.token_bytes(32)

        def tx(conn: sqlite3.Connection) -> Tenant:
            conn.execute(
                "INSERT INTO tenants (tenant_id, name, chunk_key, created_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (tenant_id) DO NOTHING",
                (tenant_id, name, key, self._clock()),
            )
            row = conn.execute(
                f"SELECT {_TENANT_COLUMNS}, deleted_at FROM tenants WHERE tenant_id = ?",
                (tenant_id,),
            ).fetchone()
            if row[5] is not None:
                raise being_deleted(tenant_id)
            return _tenant(row)

        return await self._db.call("ensure tenant", tx)

    async def get(self, tenant_id: str) -> Tenant:
        def tx(conn: sqlite3.Connection) -> Tenant:
            row = conn.execute(
                f"SELECT {_TENANT_COLUMNS} FROM tenants WHERE tenant_id = ? AND deleted_at IS NULL",
                (tenant_id,),
            ).fetchone()
            if row is None:
                raise NotFound(f"tenant {tenant_id!r} not found")
            return _tenant(row)

        return await self._db.call("get tenant", tx, write=False)

    async def data_key(self, tenant_id: str) -> tuple[bytes | None, str | None]:
        def tx(conn: sqlite3.Connection) -> tuple[bytes | None, str | None]:
            return _data_key(conn, tenant_id)

        return await self._db.call("get tenant data key", tx, write=False)

    async def set_data_key_if_absent(
        self, tenant_id: str, wrapped: bytes, master_id: str
    ) -> tuple[bytes, str]:
        check_data_key(wrapped, master_id)

        def tx(conn: sqlite3.Connection) -> tuple[bytes, str]:
            conn.execute(
                "UPDATE tenants SET wrapped_dek = ?, dek_master_id = ?"
                " WHERE tenant_id = ? AND wrapped_dek IS NULL AND deleted_at IS NULL",
                (wrapped, master_id, tenant_id),
            )
            stored, stored_id = _data_key(conn, tenant_id)
            if stored is None or stored_id is None:  # pragma: no cover - set just above
                raise NotFound(f"tenant {tenant_id!r} not found")
            return stored, stored_id

        return await self._db.call("set tenant data key", tx)

    async def shred(self, tenant_id: str) -> None:
        fresh = secrets.token_bytes(32)

        def tx(conn: sqlite3.Connection) -> None:
            done = conn.execute(
                "UPDATE tenants SET wrapped_dek = NULL, dek_master_id = NULL,"
                " chunk_key = CASE WHEN deleted_at IS NULL THEN ? ELSE chunk_key END,"
                " deleted_at = coalesce(deleted_at, ?)"
                " WHERE tenant_id = ? RETURNING 1",
                (fresh, self._clock(), tenant_id),
            ).fetchone()
            if done is None:
                raise NotFound(f"tenant {tenant_id!r} not found")

        await self._db.call("shred tenant", tx)

    async def purge(self, tenant_id: str) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "SELECT deleted_at FROM tenants WHERE tenant_id = ?", (tenant_id,)
            ).fetchone()
            if row is None:
                return
            if row[0] is None:
                raise not_shredded(tenant_id)
            for table in TENANT_TABLES:
                conn.execute(f"DELETE FROM {table} WHERE tenant_id = ?", (tenant_id,))
            conn.execute("DELETE FROM tenants WHERE tenant_id = ?", (tenant_id,))

        await self._db.call("purge tenant", tx)

    async def add_api_key(
        self, tenant_id: str, key_id: str, secret_hash: bytes, expires_at: datetime | None
    ) -> ApiKeyRecord:
        check_id("key_id", key_id)
        expires = None if expires_at is None else micros(expires_at)

        def tx(conn: sqlite3.Connection) -> ApiKeyRecord:
            try:
                row = conn.execute(
                    "INSERT INTO api_keys (key_id, tenant_id, secret_hash, created_at, expires_at)"
                    f" VALUES (?, ?, ?, ?, ?) RETURNING {_KEY_COLUMNS}",
                    (key_id, tenant_id, secret_hash, self._clock(), expires),
                ).fetchone()
            except sqlite3.IntegrityError as exc:
                if is_fk_violation(exc):
                    raise NotFound(f"tenant {tenant_id!r} not found") from exc
                if is_unique_violation(exc):
                    raise AlreadyExists(f"API key {key_id!r} already exists") from exc
                raise
            return _api_key(row)

        return await self._db.call("add API key", tx)

    async def get_api_key(self, key_id: str) -> ApiKeyRecord:
        def tx(conn: sqlite3.Connection) -> ApiKeyRecord:
            row = conn.execute(
                f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,)
            ).fetchone()
            if row is None:
                raise NotFound("API key not found")
            return _api_key(row)

        return await self._db.call("get API key", tx, write=False)

    async def list_api_keys(self, tenant_id: str) -> builtins.list[ApiKeyRecord]:
        def tx(conn: sqlite3.Connection) -> builtins.list[ApiKeyRecord]:
            rows = conn.execute(
                f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE tenant_id = ?"
                " ORDER BY created_at, key_id",
                (tenant_id,),
            ).fetchall()
            return [_api_key(r) for r in rows]

        return await self._db.call("list API keys", tx, write=False)

    async def revoke_api_key(self, tenant_id: str, key_id: str) -> ApiKeyRecord:
        def tx(conn: sqlite3.Connection) -> ApiKeyRecord:
            row = conn.execute(
                "UPDATE api_keys SET revoked_at = coalesce(revoked_at, ?)"
                f" WHERE tenant_id = ? AND key_id = ? RETURNING {_KEY_COLUMNS}",
                (self._clock(), tenant_id, key_id),
            ).fetchone()
            if row is None:
                raise NotFound(f"tenant {tenant_id!r} has no API key {key_id!r}")
            return _api_key(row)

        return await self._db.call("revoke API key", tx)


class SqliteSessionTable:
    def __init__(self, db: SqliteDb, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def create(self, new: NewSession) -> SessionRecord:
        check_id("tenant_id", new.tenant_id)
        check_id("session_id", new.session_id)
        labels = check_labels(new.labels)
        values = (
            new.tenant_id,
            new.session_id,
            dumps(labels),
            dumps(new.agent_options),
            dumps(new.snapshot_policy),
            new.forked_from,
        )

        def tx(conn: sqlite3.Connection) -> SessionRecord:
            now = self._clock()
            try:
                row = conn.execute(
                    "INSERT INTO sessions (tenant_id, session_id, state, labels, agent_options,"
                    " snapshot_policy, forked_from, created_at, updated_at, last_active_at)"
                    " VALUES (?, ?, 'new', ?, ?, ?, ?, ?, ?, ?)"
                    f" RETURNING {_SESSION_COLUMNS}",
                    (*values, now, now, now),
                ).fetchone()
            except sqlite3.IntegrityError as exc:
                if is_unique_violation(exc):
                    raise AlreadyExists(f"session {new.session_id!r} already exists") from exc
                if is_fk_violation(exc):
                    raise NotFound(f"tenant {new.tenant_id!r} not found") from exc
                raise
            return _session(row)

        return await self._db.call("create session", tx)

    async def get(self, tenant_id: str, session_id: str) -> SessionRecord:
        def tx(conn: sqlite3.Connection) -> SessionRecord:
            row = _get_session(conn, tenant_id, session_id)
            if row is None:
                raise NotFound(f"session {session_id!r} not found")
            return _session(row)

        return await self._db.call("get session", tx, write=False)

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
        where = ["tenant_id = ?"]
        args: builtins.list[Any] = [tenant_id]
        for k, v in labels.items():
            # json_each instead of a JSON path: any key is matched literally.
            where.append(
                "EXISTS (SELECT 1 FROM json_each(sessions.labels) AS l"
                " WHERE l.key = ? AND l.type = 'text' AND l.value = ?)"
            )
            args += [k, v]
        if not include_deleted:
            where.append("state <> 'deleted'")
        if cursor is not None:
            where.append("(created_at, session_id) < (?, ?)")
            args += [cursor[0], cursor[1]]
        sql = (
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE {' AND '.join(where)}"
            " ORDER BY created_at DESC, session_id DESC LIMIT ?"
        )
        args.append(size + 1)

        def tx(conn: sqlite3.Connection) -> builtins.list[Any]:
            return conn.execute(sql, args).fetchall()

        rows = await self._db.call("list sessions", tx, write=False)
        items = [_session(r) for r in rows[:size]]
        token = ""
        if len(rows) > size:
            last = rows[size - 1]
            token = encode_page_token(fingerprint, last[13], last[1])
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
        removed = builtins.list(remove_labels)
        options = None if agent_options is None else dumps(agent_options)
        policy = None if snapshot_policy is None else dumps(snapshot_policy)

        def tx(conn: sqlite3.Connection) -> SessionRecord:
            row = _get_session(conn, tenant_id, session_id)
            if row is None:
                raise NotFound(f"session {session_id!r} not found")
            if row[2] == SessionState.DELETED:
                raise FailedPrecondition(f"session {session_id!r} is deleted")
            labels: dict[str, str] = json.loads(row[3])
            for k in removed:
                labels.pop(k, None)
            labels.update(set_labels)
            updated = conn.execute(
                "UPDATE sessions SET labels = ?, agent_options = COALESCE(?, agent_options),"
                " snapshot_policy = COALESCE(?, snapshot_policy), updated_at = ?"
                f" WHERE tenant_id = ? AND session_id = ? RETURNING {_SESSION_COLUMNS}",
                (dumps(labels), options, policy, self._clock(), tenant_id, session_id),
            ).fetchone()
            return _session(updated)

        return await self._db.call("update session", tx)

    async def bump_epoch(self, tenant_id: str, session_id: str) -> SessionRecord:
        def tx(conn: sqlite3.Connection) -> SessionRecord:
            row = conn.execute(
                "UPDATE sessions SET epoch = epoch + 1, updated_at = ?"
                " WHERE tenant_id = ? AND session_id = ? AND state <> 'deleted'"
                f" RETURNING {_SESSION_COLUMNS}",
                (self._clock(), tenant_id, session_id),
            ).fetchone()
            if row is not None:
                return _session(row)
            if _get_session(conn, tenant_id, session_id) is not None:
                raise FailedPrecondition(f"session {session_id!r} is deleted")
            raise NotFound(f"session {session_id!r} not found")

        return await self._db.call("bump session epoch", tx)

    async def acquire_lease(
        self, tenant_id: str, session_id: str, owner: str, ttl: float
    ) -> SessionRecord | None:
        check_owner(owner)
        ttl_us = to_micros(check_seconds("ttl", ttl, allow_zero=False))

        def tx(conn: sqlite3.Connection) -> SessionRecord | None:
            args = {"owner": owner, "ttl": ttl_us, "now": self._clock()}
            row = conn.execute(_ACQUIRE, {**args, "t": tenant_id, "s": session_id}).fetchone()
            if row is not None:
                return _session(row)
            current = _get_session(conn, tenant_id, session_id)
            if current is None:
                raise NotFound(f"session {session_id!r} not found")
            if current[2] == SessionState.DELETED:
                raise FailedPrecondition(f"session {session_id!r} is deleted")
            return None

        return await self._db.call("acquire session lease", tx)

    async def renew_lease(
        self, tenant_id: str, session_id: str, owner: str, epoch: int, ttl: float
    ) -> None:
        check_owner(owner)
        check_epoch(epoch)
        ttl_us = to_micros(check_seconds("ttl", ttl, allow_zero=False))

        def tx(conn: sqlite3.Connection) -> None:
            done = conn.execute(
                "UPDATE sessions SET lease_expires_at = ? WHERE tenant_id = ? AND session_id = ?"
                " AND lease_owner = ? AND epoch = ? AND state <> 'deleted' RETURNING 1",
                (self._clock() + ttl_us, tenant_id, session_id, owner, epoch),
            ).fetchone()
            if done is not None:
                return
            if _get_session(conn, tenant_id, session_id) is None:
                raise NotFound(f"session {session_id!r} not found")
            raise renew_refused(session_id, owner, epoch)

        await self._db.call("renew session lease", tx)

    async def release_lease(self, tenant_id: str, session_id: str, owner: str, epoch: int) -> None:
        check_owner(owner)
        check_epoch(epoch)

        def tx(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"UPDATE sessions SET {_END_LEASE} WHERE tenant_id = :t AND session_id = :s"
                " AND lease_owner = :owner AND epoch = :epoch",
                {
                    "now": self._clock(),
                    "t": tenant_id,
                    "s": session_id,
                    "owner": owner,
                    "epoch": epoch,
                },
            )

        await self._db.call("release session lease", tx)

    async def update_fenced(
        self, tenant_id: str, session_id: str, epoch: int, changes: SessionChanges
    ) -> SessionRecord:
        check_epoch(epoch)
        ch = check_changes(changes)
        args = {
            "t": tenant_id,
            "s": session_id,
            "state": None if ch.state is None else ch.state.value,
            "sandbox_id": ch.sandbox_id,
            "sandbox_cwd": ch.sandbox_cwd,
            "sdk_session_id": ch.sdk_session_id,
            "project_key": ch.project_key,
            "latest_snapshot_id": ch.latest_snapshot_id,
            "add_turns": ch.add_turns,
            "touch": int(ch.touch),
        }

        def tx(conn: sqlite3.Connection) -> SessionRecord:
            cur = _get_session(conn, tenant_id, session_id)
            if cur is None:
                raise NotFound(f"session {session_id!r} not found")
            refuse_fenced(session_id, SessionState(cur[2]), cur[12], epoch, ch.state)
            row = conn.execute(_UPDATE_FENCED, {**args, "now": self._clock()}).fetchone()
            return _session(row)

        return await self._db.call("update session (fenced)", tx)

    async def claim_idle(
        self, owner: str, idle_seconds: float, ttl: float, limit: int
    ) -> builtins.list[SessionRecord]:
        check_owner(owner)
        idle_us = to_micros(check_seconds("idle_seconds", idle_seconds, allow_zero=True))
        ttl_us = to_micros(check_seconds("ttl", ttl, allow_zero=False))
        n = check_limit(limit)

        def tx(conn: sqlite3.Connection) -> builtins.list[Any]:
            args = {"owner": owner, "ttl": ttl_us, "idle": idle_us, "n": n, "now": self._clock()}
            return conn.execute(_CLAIM_IDLE, args).fetchall()

        rows = await self._db.call("claim idle sessions", tx)
        claimed = [_session(r) for r in rows]
        claimed.sort(key=lambda r: (r.last_active_at, r.tenant_id, r.session_id))
        return claimed

    async def list_leased_by(self, owner: str) -> builtins.list[SessionRecord]:
        check_owner(owner)

        def tx(conn: sqlite3.Connection) -> builtins.list[Any]:
            return conn.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE lease_owner = ?"
                " AND lease_expires_at > ? AND state <> 'deleted'"
                " ORDER BY tenant_id, session_id",
                (owner, self._clock()),
            ).fetchall()

        rows = await self._db.call("list leased sessions", tx, write=False)
        return [_session(r) for r in rows]

    async def mark_deleted(self, tenant_id: str, session_id: str) -> SessionRecord:
        def tx(conn: sqlite3.Connection) -> SessionRecord:
            row = conn.execute(
                "UPDATE sessions SET state = 'deleted', epoch = epoch + 1, updated_at = :now,"
                f" {_END_LEASE} WHERE tenant_id = :t AND session_id = :s AND state <> 'deleted'"
                f" RETURNING {_SESSION_COLUMNS}",
                {"now": self._clock(), "t": tenant_id, "s": session_id},
            ).fetchone()
            if row is None:
                # Already deleted (a no-op: the epoch was bumped then) or absent.
                row = _get_session(conn, tenant_id, session_id)
            if row is None:
                raise NotFound(f"session {session_id!r} not found")
            return _session(row)

        return await self._db.call("delete session", tx)


def _get_session(conn: sqlite3.Connection, tenant_id: str, session_id: str) -> Any:
    return conn.execute(
        f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE tenant_id = ? AND session_id = ?",
        (tenant_id, session_id),
    ).fetchone()
