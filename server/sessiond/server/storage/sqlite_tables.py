"""Tenants, sessions and transcripts on SQLite (see :mod:`.metadata` for the
contracts, :mod:`.sqlite_meta` for the threading model).

Every method body below is a plain function run as ONE transaction in the
database thread; it may read, decide in Python and write without races,
because no other transaction of this process can interleave and other
processes are kept out by ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

import builtins
import json
import secrets
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sessiond.client.errors import AlreadyExists, FailedPrecondition, NotFound

from .metadata_common import (
    check_id,
    check_key,
    check_label_changes,
    check_labels,
    check_page_size,
    decode_page_token,
    dedupe_batch,
    describe_key,
    dumps,
    encode_page_token,
    fold_summary,
    from_micros,
    list_fingerprint,
    micros,
)
from .records import (
    ApiKeyRecord,
    AppendResult,
    NewSession,
    Page,
    SessionRecord,
    SessionState,
    Tenant,
    TranscriptEntry,
    TranscriptKey,
    TranscriptSession,
    TranscriptSummary,
)

if TYPE_CHECKING:
    from .sqlite_meta import SqliteDb

Clock = Callable[[], int]

_TENANT_COLUMNS = "tenant_id, name, chunk_key, created_at, disabled"
_SESSION_COLUMNS = (
    "tenant_id, session_id, state, labels, agent_options, snapshot_policy, sdk_session_id,"
    " latest_snapshot_id, forked_from, sandbox_id, sandbox_cwd, turn_count, epoch,"
    " created_at, updated_at, last_active_at"
)


def _is_unique_violation(exc: sqlite3.IntegrityError) -> bool:
    return "UNIQUE constraint failed" in str(exc) or "PRIMARY KEY" in str(exc)


def _is_fk_violation(exc: sqlite3.IntegrityError) -> bool:
    return "FOREIGN KEY constraint failed" in str(exc)


def _tenant(row: Any) -> Tenant:
    return Tenant(
        tenant_id=row[0],
        name=row[1],
        chunk_key=bytes(row[2]),
        created_at=from_micros(row[3]),
        disabled=bool(row[4]),
    )


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
                if _is_unique_violation(exc):
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
                f"SELECT {_TENANT_COLUMNS} FROM tenants WHERE tenant_id = ?", (tenant_id,)
            ).fetchone()
            return _tenant(row)

        return await self._db.call("ensure tenant", tx)

    async def get(self, tenant_id: str) -> Tenant:
        def tx(conn: sqlite3.Connection) -> Tenant:
            row = conn.execute(
                f"SELECT {_TENANT_COLUMNS} FROM tenants WHERE tenant_id = ?", (tenant_id,)
            ).fetchone()
            if row is None:
                raise NotFound(f"tenant {tenant_id!r} not found")
            return _tenant(row)

        return await self._db.call("get tenant", tx, write=False)

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
                if _is_fk_violation(exc):
                    raise NotFound(f"tenant {tenant_id!r} not found") from exc
                if _is_unique_violation(exc):
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
                if _is_unique_violation(exc):
                    raise AlreadyExists(f"session {new.session_id!r} already exists") from exc
                if _is_fk_violation(exc):
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

    async def mark_deleted(self, tenant_id: str, session_id: str) -> SessionRecord:
        def tx(conn: sqlite3.Connection) -> SessionRecord:
            row = conn.execute(
                "UPDATE sessions SET state = 'deleted', epoch = epoch + 1, updated_at = ?"
                " WHERE tenant_id = ? AND session_id = ? AND state <> 'deleted'"
                f" RETURNING {_SESSION_COLUMNS}",
                (self._clock(), tenant_id, session_id),
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


class SqliteTranscriptTable:
    def __init__(self, db: SqliteDb, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def append(
        self, tenant_id: str, key: TranscriptKey, entries: Sequence[TranscriptEntry]
    ) -> AppendResult:
        check_id("tenant_id", tenant_id)
        check_key(key)
        if not entries:
            return AppendResult(appended=0, duplicates=0, mtime_ms=0)
        batch = dedupe_batch(entries)

        def tx(conn: sqlite3.Connection) -> AppendResult:
            return self._append(conn, tenant_id, key, batch)

        result = await self._db.call("append transcript", tx)
        return AppendResult(
            appended=result.appended,
            duplicates=len(entries) - result.appended,
            mtime_ms=result.mtime_ms,
        )

    def _append(
        self,
        conn: sqlite3.Connection,
        tenant_id: str,
        key: TranscriptKey,
        batch: builtins.list[TranscriptEntry],
    ) -> AppendResult:
        ident = (tenant_id, key.project_key, key.session_id, key.subpath)
        row = conn.execute(
            "SELECT key_id, next_seq, mtime_ms FROM transcript_keys"
            " WHERE tenant_id = ? AND project_key = ? AND session_id = ? AND subpath = ?",
            ident,
        ).fetchone()
        if row is None:
            try:
                key_id = conn.execute(
                    "INSERT INTO transcript_keys"
                    " (tenant_id, project_key, session_id, subpath, next_seq, mtime_ms)"
                    " VALUES (?, ?, ?, ?, 0, 0) RETURNING key_id",
                    ident,
                ).fetchone()[0]
            except sqlite3.IntegrityError as exc:
                if _is_fk_violation(exc):
                    raise NotFound(f"tenant {tenant_id!r} not found") from exc
                raise
            seq, prev_mtime = 0, 0
        else:
            key_id, seq, prev_mtime = row
        inserted: builtins.list[TranscriptEntry] = []
        for entry in batch:
            cur = conn.execute(
                "INSERT INTO transcript_entries (tenant_id, key_id, seq, uuid, entry)"
                " VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (key_id, uuid) WHERE uuid IS NOT NULL DO NOTHING",
                (tenant_id, key_id, seq + 1, entry.uuid, entry.data),
            )
            if cur.rowcount == 1:
                seq += 1
                inserted.append(entry)
        if not inserted:
            # A pure retry: leave the key row (mtime, seq) exactly as it was.
            conn.execute("ROLLBACK")
            return AppendResult(appended=0, duplicates=0, mtime_ms=0)
        mtime_ms = max(prev_mtime + 1, self._clock() // 1000)
        conn.execute(
            "UPDATE transcript_keys SET next_seq = ?, mtime_ms = ? WHERE key_id = ?",
            (seq, mtime_ms, key_id),
        )
        if key.subpath == "":
            summary_key = (tenant_id, key.project_key, key.session_id)
            prev_row = conn.execute(
                "SELECT mtime_ms, data FROM transcript_summaries"
                " WHERE tenant_id = ? AND project_key = ? AND session_id = ?",
                summary_key,
            ).fetchone()
            prev = None if prev_row is None else (prev_row[0], json.loads(prev_row[1]))
            data = fold_summary(key, prev, inserted)
            conn.execute(
                "INSERT INTO transcript_summaries"
                " (tenant_id, project_key, session_id, mtime_ms, data) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (tenant_id, project_key, session_id) DO UPDATE"
                " SET mtime_ms = excluded.mtime_ms, data = excluded.data",
                (*summary_key, mtime_ms, dumps(data)),
            )
        return AppendResult(appended=len(inserted), duplicates=0, mtime_ms=mtime_ms)

    async def load(
        self, tenant_id: str, key: TranscriptKey, *, page_size: int = 500
    ) -> AsyncIterator[builtins.list[str]]:
        size = check_page_size(page_size)
        ident = (tenant_id, key.project_key, key.session_id, key.subpath)

        def first(conn: sqlite3.Connection) -> builtins.list[Any]:
            return conn.execute(
                "SELECT k.key_id, e.seq, e.entry"
                " FROM transcript_keys k JOIN transcript_entries e ON e.key_id = k.key_id"
                " WHERE k.tenant_id = ? AND k.project_key = ? AND k.session_id = ?"
                " AND k.subpath = ? ORDER BY e.seq LIMIT ?",
                (*ident, size),
            ).fetchall()

        rows = await self._db.call("load transcript", first, write=False)
        if not rows:
            raise NotFound(f"transcript {describe_key(key)} not found")
        key_id = rows[0][0]
        while True:
            yield [r[2] for r in rows]
            if len(rows) < size:
                return
            last = rows[-1][1]

            def more(conn: sqlite3.Connection, after: int = last) -> builtins.list[Any]:
                return conn.execute(
                    "SELECT key_id, seq, entry FROM transcript_entries"
                    " WHERE key_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                    (key_id, after, size),
                ).fetchall()

            rows = await self._db.call("load transcript", more, write=False)
            if not rows:
                return

    async def list_sessions(
        self, tenant_id: str, project_key: str
    ) -> builtins.list[TranscriptSession]:
        def tx(conn: sqlite3.Connection) -> builtins.list[Any]:
            return conn.execute(
                "SELECT session_id, mtime_ms FROM transcript_keys"
                " WHERE tenant_id = ? AND project_key = ? AND subpath = ''",
                (tenant_id, project_key),
            ).fetchall()

        rows = await self._db.call("list transcript sessions", tx, write=False)
        return [TranscriptSession(session_id=r[0], mtime_ms=r[1]) for r in rows]

    async def list_summaries(
        self, tenant_id: str, project_key: str
    ) -> builtins.list[TranscriptSummary]:
        def tx(conn: sqlite3.Connection) -> builtins.list[Any]:
            return conn.execute(
                "SELECT session_id, mtime_ms, data FROM transcript_summaries"
                " WHERE tenant_id = ? AND project_key = ?",
                (tenant_id, project_key),
            ).fetchall()

        rows = await self._db.call("list transcript summaries", tx, write=False)
        return [
            TranscriptSummary(session_id=r[0], mtime_ms=r[1], data=json.loads(r[2])) for r in rows
        ]

    async def delete(self, tenant_id: str, key: TranscriptKey) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            session = (tenant_id, key.project_key, key.session_id)
            if key.subpath == "":
                conn.execute(
                    "DELETE FROM transcript_summaries"
                    " WHERE tenant_id = ? AND project_key = ? AND session_id = ?",
                    session,
                )
                conn.execute(
                    "DELETE FROM transcript_keys"
                    " WHERE tenant_id = ? AND project_key = ? AND session_id = ?",
                    session,
                )
            else:
                conn.execute(
                    "DELETE FROM transcript_keys WHERE tenant_id = ? AND project_key = ?"
                    " AND session_id = ? AND subpath = ?",
                    (*session, key.subpath),
                )

        await self._db.call("delete transcript", tx)

    async def list_subkeys(
        self, tenant_id: str, project_key: str, session_id: str
    ) -> builtins.list[str]:
        def tx(conn: sqlite3.Connection) -> builtins.list[Any]:
            return conn.execute(
                "SELECT subpath FROM transcript_keys WHERE tenant_id = ? AND project_key = ?"
                " AND session_id = ? AND subpath <> '' ORDER BY subpath",
                (tenant_id, project_key, session_id),
            ).fetchall()

        rows = await self._db.call("list transcript subkeys", tx, write=False)
        return [r[0] for r in rows]
