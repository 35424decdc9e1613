"""Transcripts on SQLite: the storage behind the SDK ``SessionStore`` (see
:mod:`.metadata` for the contracts, :mod:`.sqlite_meta` for the threading
model). Tenants and sessions live in :mod:`.sqlite_sessions`.

Every method body below is a plain function run as ONE transaction in the
database thread; it may read, decide in Python and write without races,
because no other transaction of this process can interleave and other
processes are kept out by ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from sessiond.client.errors import AlreadyExists, NotFound

from .metadata_common import (
    check_id,
    check_key,
    check_page_size,
    dedupe_batch,
    describe_key,
    dumps,
    fold_summary,
)
from .records import (
    AppendResult,
    TranscriptEntry,
    TranscriptKey,
    TranscriptSession,
    TranscriptSummary,
)

# Re-exported: sqlite_meta imports every SQLite table from here.
from .sqlite_sessions import Clock, is_fk_violation
from .sqlite_sessions import SqliteSessionTable as SqliteSessionTable
from .sqlite_sessions import SqliteTenantTable as SqliteTenantTable

if TYPE_CHECKING:
    from .sqlite_meta import SqliteDb


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
                if is_fk_violation(exc):
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

    async def move_session(
        self, tenant_id: str, session_id: str, from_project: str, to_project: str
    ) -> None:
        check_id("session_id", session_id)
        check_id("project_key", from_project)
        check_id("project_key", to_project)
        if from_project == to_project:
            return

        def tx(conn: sqlite3.Connection) -> None:
            # Entries follow through key_id: only the key rows and the
            # summary change, and every entry keeps its seq.
            ident = (tenant_id, from_project, session_id)
            if not conn.execute(
                "SELECT 1 FROM transcript_keys"
                " WHERE tenant_id = ? AND project_key = ? AND session_id = ? LIMIT 1",
                ident,
            ).fetchone():
                return
            if conn.execute(
                "SELECT 1 FROM transcript_keys"
                " WHERE tenant_id = ? AND project_key = ? AND session_id = ? LIMIT 1",
                (tenant_id, to_project, session_id),
            ).fetchone():
                raise _already_moved(session_id, to_project)
            # No key can appear under the target between that check and
            # these updates: this is the only writer (BEGIN IMMEDIATE).
            for table in ("transcript_keys", "transcript_summaries"):
                conn.execute(
                    f"UPDATE {table} SET project_key = ?"
                    " WHERE tenant_id = ? AND project_key = ? AND session_id = ?",
                    (to_project, *ident),
                )

        await self._db.call("move transcript", tx)

    async def position(self, tenant_id: str, key: TranscriptKey, uuid: str) -> int:
        check_key(key)
        check_id("uuid", uuid)

        def tx(conn: sqlite3.Connection) -> Any:
            return conn.execute(
                "SELECT e.seq"
                " FROM transcript_keys k JOIN transcript_entries e ON e.key_id = k.key_id"
                " WHERE k.tenant_id = ? AND k.project_key = ? AND k.session_id = ?"
                " AND k.subpath = ? AND e.uuid = ?",
                (tenant_id, key.project_key, key.session_id, key.subpath, uuid),
            ).fetchone()

        row = await self._db.call("transcript position", tx, write=False)
        if row is None:
            raise NotFound(f"no entry {uuid!r} in transcript {describe_key(key)}")
        seq: int = row[0]
        return seq

    async def last_position(self, tenant_id: str, key: TranscriptKey) -> tuple[str | None, int]:
        check_key(key)

        def tx(conn: sqlite3.Connection) -> Any:
            return conn.execute(
                "SELECT"
                " (SELECT e.uuid FROM transcript_entries e WHERE e.key_id = k.key_id"
                " AND e.uuid IS NOT NULL ORDER BY e.seq DESC LIMIT 1),"
                " (SELECT max(e.seq) FROM transcript_entries e WHERE e.key_id = k.key_id)"
                " FROM transcript_keys k WHERE k.tenant_id = ? AND k.project_key = ?"
                " AND k.session_id = ? AND k.subpath = ?",
                (tenant_id, key.project_key, key.session_id, key.subpath),
            ).fetchone()

        row = await self._db.call("last transcript position", tx, write=False)
        if row is None or row[1] is None:
            return None, 0
        return row[0], row[1]


def _already_moved(session_id: str, to_project: str) -> AlreadyExists:
    return AlreadyExists(
        f"project {to_project!r} already holds transcripts of session {session_id!r}"
    )
