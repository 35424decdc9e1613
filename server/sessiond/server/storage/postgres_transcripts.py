"""Transcripts on PostgreSQL: the storage behind the SDK ``SessionStore``.

Layout (``migrations/postgres/0001_init.sql``): one ``transcript_keys`` row
per transcript (the per-key lock, seq allocator and mtime), narrow
``transcript_entries`` rows keyed by ``(key_id, seq)`` holding the entry JSON
text verbatim, and one ``transcript_summaries`` row per main transcript.

An append is one transaction of few round trips (BEGIN, 1–3 statements,
COMMIT):

1. one statement upserts the key row — which locks it, so appends to a key
   (and therefore summary folds of a session) are serialized in commit order —
   advancing ``next_seq`` by the batch size and ``mtime_ms`` to
   ``GREATEST(previous + 1, now_ms)``, and inserts the whole (already
   de-duplicated) batch from ``unnest(...) WITH ORDINALITY``; entries whose
   uuid is already stored are skipped by ``ON CONFLICT DO NOTHING`` and the
   inserted ordinals come back;
2. for a main key, read the previous summary (a fresh statement, so it sees
   what the append we waited for committed), fold only the newly inserted
   entries with the SDK's ``fold_session_summary`` and upsert it with the same
   mtime as the key.

A batch that inserts nothing is rolled back, so pure retries leave mtime,
seq and summary untouched. Seqs may have gaps; only their order matters.

Entries reference their key through the surrogate ``key_id``, so moving a
session to another project key (:meth:`PgTranscriptTable.move_session`)
rewrites only its few ``transcript_keys`` rows and its summary, never its
entries, and every entry keeps its seq (positions pinned by snapshots stay
valid).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence

import asyncpg

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
from .postgres_errors import run
from .records import (
    AppendResult,
    TranscriptEntry,
    TranscriptKey,
    TranscriptSession,
    TranscriptSummary,
)

_NOW_MS = "floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint"

_APPEND = f"""
WITH k AS (
    INSERT INTO transcript_keys AS t
        (tenant_id, project_key, session_id, subpath, next_seq, mtime_ms)
    VALUES ($1, $2, $3, $4, $5, {_NOW_MS})
    ON CONFLICT (tenant_id, project_key, session_id, subpath) DO UPDATE
        SET next_seq = t.next_seq + EXCLUDED.next_seq,
            mtime_ms = GREATEST(t.mtime_ms + 1, EXCLUDED.mtime_ms)
    RETURNING t.key_id, t.next_seq - $5 AS base, t.mtime_ms
), ins AS (
    INSERT INTO transcript_entries (tenant_id, key_id, seq, uuid, entry)
    SELECT $1, k.key_id, k.base + u.ord, u.uuid, u.entry
    FROM k, unnest($6::text[], $7::text[]) WITH ORDINALITY AS u(uuid, entry, ord)
    ON CONFLICT (key_id, uuid) WHERE uuid IS NOT NULL DO NOTHING
    RETURNING seq
)
SELECT k.mtime_ms, ARRAY(SELECT ins.seq - k.base FROM ins) AS ords FROM k
"""

_READ_SUMMARY = """
SELECT mtime_ms, data FROM transcript_summaries
WHERE tenant_id = $1 AND project_key = $2 AND session_id = $3
"""

_WRITE_SUMMARY = """
INSERT INTO transcript_summaries (tenant_id, project_key, session_id, mtime_ms, data)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (tenant_id, project_key, session_id) DO UPDATE
    SET mtime_ms = EXCLUDED.mtime_ms, data = EXCLUDED.data
"""

_FIRST_PAGE = """
SELECT k.key_id, e.seq, e.entry
FROM transcript_keys k JOIN transcript_entries e ON e.key_id = k.key_id
WHERE k.tenant_id = $1 AND k.project_key = $2 AND k.session_id = $3 AND k.subpath = $4
ORDER BY e.seq
LIMIT $5
"""

_NEXT_PAGE = """
SELECT seq, entry FROM transcript_entries
WHERE key_id = $1 AND seq > $2
ORDER BY seq
LIMIT $3
"""

# Delete locks the key rows first (waiting for in-flight appends to them),
# then removes entries, rows and summary in one statement whose snapshot
# is taken after the lock: it sees every entry those appends committed, and
# no new entry can reach a locked key. (transcript_entries has no foreign
# key to cascade: see the migration.)
_LOCK_SESSION_KEYS = """
SELECT key_id, subpath FROM transcript_keys
WHERE tenant_id = $1 AND project_key = $2 AND session_id = $3
ORDER BY key_id  -- one lock order for concurrent deletes of a session
FOR UPDATE
"""

_LOCK_SUBKEY = """
SELECT key_id, subpath FROM transcript_keys
WHERE tenant_id = $1 AND project_key = $2 AND session_id = $3 AND subpath = $4
FOR UPDATE
"""

# The summary goes only with a locked main key: summary and main key row are
# always written together, so a main key created concurrently (after our
# lock) keeps the summary written with it.
_DELETE_KEYS = """
WITH e AS (
    DELETE FROM transcript_entries WHERE key_id = ANY($1::bigint[])
), s AS (
    DELETE FROM transcript_summaries
    WHERE $5 AND tenant_id = $2 AND project_key = $3 AND session_id = $4
)
DELETE FROM transcript_keys WHERE key_id = ANY($1::bigint[])
"""


# Moves exactly the key rows locked by _LOCK_SESSION_KEYS (entries follow
# through key_id). The summary goes only with a locked main key, as in
# _DELETE_KEYS. A key already under the target fails the unique constraint.
_MOVE_KEYS = """
WITH s AS (
    UPDATE transcript_summaries SET project_key = $4
    WHERE $6 AND tenant_id = $2 AND project_key = $3 AND session_id = $5
)
UPDATE transcript_keys SET project_key = $4 WHERE key_id = ANY($1::bigint[])
"""

_POSITION = """
SELECT e.seq
FROM transcript_keys k JOIN transcript_entries e ON e.key_id = k.key_id
WHERE k.tenant_id = $1 AND k.project_key = $2 AND k.session_id = $3 AND k.subpath = $4
  AND e.uuid = $5
"""

# One statement, so both subqueries read the same snapshot; each is a short
# backward scan of the (key_id, seq) primary key.
_LAST_POSITION = """
SELECT
    (SELECT e.uuid FROM transcript_entries e
     WHERE e.key_id = k.key_id AND e.uuid IS NOT NULL ORDER BY e.seq DESC LIMIT 1) AS uuid,
    (SELECT max(e.seq) FROM transcript_entries e WHERE e.key_id = k.key_id) AS seq
FROM transcript_keys k
WHERE k.tenant_id = $1 AND k.project_key = $2 AND k.session_id = $3 AND k.subpath = $4
"""


class _NothingAppended(Exception):
    """Raised inside the append transaction to roll it back."""


class PgTranscriptTable:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def append(
        self, tenant_id: str, key: TranscriptKey, entries: Sequence[TranscriptEntry]
    ) -> AppendResult:
        check_id("tenant_id", tenant_id)
        check_key(key)
        if not entries:
            return AppendResult(appended=0, duplicates=0, mtime_ms=0)
        batch = dedupe_batch(entries)
        uuids = [e.uuid for e in batch]
        texts = [e.data for e in batch]

        async def tx(conn: asyncpg.Connection) -> AppendResult:
            try:
                async with conn.transaction():
                    return await self._append(conn, tenant_id, key, batch, uuids, texts)
            except _NothingAppended:
                return AppendResult(appended=0, duplicates=len(entries), mtime_ms=0)

        result = await run(self._pool, "append transcript", tx, transaction=False)
        return AppendResult(
            appended=result.appended,
            duplicates=len(entries) - result.appended,
            mtime_ms=result.mtime_ms,
        )

    async def _append(
        self,
        conn: asyncpg.Connection,
        tenant_id: str,
        key: TranscriptKey,
        batch: list[TranscriptEntry],
        uuids: list[str | None],
        texts: list[str],
    ) -> AppendResult:
        try:
            row = await conn.fetchrow(
                _APPEND,
                tenant_id,
                key.project_key,
                key.session_id,
                key.subpath,
                len(batch),
                uuids,
                texts,
            )
        except asyncpg.ForeignKeyViolationError as exc:
            raise NotFound(f"tenant {tenant_id!r} not found") from exc
        ords: list[int] = sorted(row["ords"])
        if not ords:
            raise _NothingAppended
        mtime_ms: int = row["mtime_ms"]
        if key.subpath == "":
            prev_row = await conn.fetchrow(
                _READ_SUMMARY, tenant_id, key.project_key, key.session_id
            )
            prev = None
            if prev_row is not None:
                prev = (prev_row["mtime_ms"], json.loads(prev_row["data"]))
            data = fold_summary(key, prev, [batch[i - 1] for i in ords])
            await conn.execute(
                _WRITE_SUMMARY, tenant_id, key.project_key, key.session_id, mtime_ms, dumps(data)
            )
        return AppendResult(appended=len(ords), duplicates=0, mtime_ms=mtime_ms)

    async def load(
        self, tenant_id: str, key: TranscriptKey, *, page_size: int = 500
    ) -> AsyncIterator[list[str]]:
        size = check_page_size(page_size)

        async def first(conn: asyncpg.Connection) -> list[asyncpg.Record]:
            rows: list[asyncpg.Record] = await conn.fetch(
                _FIRST_PAGE, tenant_id, key.project_key, key.session_id, key.subpath, size
            )
            return rows

        rows = await run(self._pool, "load transcript", first, transaction=False)
        if not rows:
            raise NotFound(f"transcript {describe_key(key)} not found")
        key_id: int = rows[0]["key_id"]
        # Each page is its own short statement on a briefly borrowed
        # connection: nothing is held while the caller consumes a page, and
        # seq order is commit order, so later pages neither skip nor repeat.
        while True:
            yield [r["entry"] for r in rows]
            if len(rows) < size:
                return
            last: int = rows[-1]["seq"]

            async def more(conn: asyncpg.Connection, after: int = last) -> list[asyncpg.Record]:
                page: list[asyncpg.Record] = await conn.fetch(_NEXT_PAGE, key_id, after, size)
                return page

            rows = await run(self._pool, "load transcript", more, transaction=False)
            if not rows:
                return

    async def list_sessions(self, tenant_id: str, project_key: str) -> list[TranscriptSession]:
        async def q(conn: asyncpg.Connection) -> list[asyncpg.Record]:
            rows: list[asyncpg.Record] = await conn.fetch(
                "SELECT session_id, mtime_ms FROM transcript_keys"
                " WHERE tenant_id = $1 AND project_key = $2 AND subpath = ''",
                tenant_id,
                project_key,
            )
            return rows

        rows = await run(self._pool, "list transcript sessions", q, transaction=False)
        return [TranscriptSession(session_id=r["session_id"], mtime_ms=r["mtime_ms"]) for r in rows]

    async def list_summaries(self, tenant_id: str, project_key: str) -> list[TranscriptSummary]:
        async def q(conn: asyncpg.Connection) -> list[asyncpg.Record]:
            rows: list[asyncpg.Record] = await conn.fetch(
                "SELECT session_id, mtime_ms, data FROM transcript_summaries"
                " WHERE tenant_id = $1 AND project_key = $2",
                tenant_id,
                project_key,
            )
            return rows

        rows = await run(self._pool, "list transcript summaries", q, transaction=False)
        return [
            TranscriptSummary(
                session_id=r["session_id"], mtime_ms=r["mtime_ms"], data=json.loads(r["data"])
            )
            for r in rows
        ]

    async def delete(self, tenant_id: str, key: TranscriptKey) -> None:
        async def tx(conn: asyncpg.Connection) -> None:
            ident = (tenant_id, key.project_key, key.session_id)
            if key.subpath == "":
                rows = await conn.fetch(_LOCK_SESSION_KEYS, *ident)
            else:
                rows = await conn.fetch(_LOCK_SUBKEY, *ident, key.subpath)
            if not rows:
                return
            has_main = any(r["subpath"] == "" for r in rows)
            await conn.execute(_DELETE_KEYS, [r["key_id"] for r in rows], *ident, has_main)

        await run(self._pool, "delete transcript", tx)

    async def list_subkeys(self, tenant_id: str, project_key: str, session_id: str) -> list[str]:
        async def q(conn: asyncpg.Connection) -> list[asyncpg.Record]:
            rows: list[asyncpg.Record] = await conn.fetch(
                "SELECT subpath FROM transcript_keys"
                " WHERE tenant_id = $1 AND project_key = $2 AND session_id = $3 AND subpath <> ''"
                " ORDER BY subpath",
                tenant_id,
                project_key,
                session_id,
            )
            return rows

        rows = await run(self._pool, "list transcript subkeys", q, transaction=False)
        return [r["subpath"] for r in rows]

    async def move_session(
        self, tenant_id: str, session_id: str, from_project: str, to_project: str
    ) -> None:
        check_id("session_id", session_id)
        check_id("project_key", from_project)
        check_id("project_key", to_project)
        if from_project == to_project:
            return

        async def tx(conn: asyncpg.Connection) -> None:
            # Locking the source rows waits for appends in flight to them (and
            # their summary folds); appends that come later wait for us and
            # then land under the key they name.
            rows = await conn.fetch(_LOCK_SESSION_KEYS, tenant_id, from_project, session_id)
            if not rows:
                return
            taken = await conn.fetchval(
                "SELECT 1 FROM transcript_keys"
                " WHERE tenant_id = $1 AND project_key = $2 AND session_id = $3 LIMIT 1",
                tenant_id,
                to_project,
                session_id,
            )
            if taken is not None:
                raise _already_moved(session_id, to_project)
            has_main = any(r["subpath"] == "" for r in rows)
            try:
                await conn.execute(
                    _MOVE_KEYS,
                    [r["key_id"] for r in rows],
                    tenant_id,
                    from_project,
                    to_project,
                    session_id,
                    has_main,
                )
            except asyncpg.UniqueViolationError as exc:  # a key created there meanwhile
                raise _already_moved(session_id, to_project) from exc

        await run(self._pool, "move transcript", tx)

    async def position(self, tenant_id: str, key: TranscriptKey, uuid: str) -> int:
        check_key(key)
        check_id("uuid", uuid)

        async def q(conn: asyncpg.Connection) -> int | None:
            seq: int | None = await conn.fetchval(
                _POSITION, tenant_id, key.project_key, key.session_id, key.subpath, uuid
            )
            return seq

        seq = await run(self._pool, "transcript position", q, transaction=False)
        if seq is None:
            raise NotFound(f"no entry {uuid!r} in transcript {describe_key(key)}")
        return seq

    async def last_position(self, tenant_id: str, key: TranscriptKey) -> tuple[str | None, int]:
        check_key(key)

        async def q(conn: asyncpg.Connection) -> asyncpg.Record | None:
            row: asyncpg.Record | None = await conn.fetchrow(
                _LAST_POSITION, tenant_id, key.project_key, key.session_id, key.subpath
            )
            return row

        row = await run(self._pool, "last transcript position", q, transaction=False)
        if row is None or row["seq"] is None:
            return None, 0
        return row["uuid"], row["seq"]


def _already_moved(session_id: str, to_project: str) -> AlreadyExists:
    return AlreadyExists(
        f"project {to_project!r} already holds transcripts of session {session_id!r}"
    )
