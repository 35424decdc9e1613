"""SqliteMetadataStore: the MetadataStore in one SQLite file (the embedded default).

Concurrency model: ONE ``sqlite3`` connection, owned by a dedicated
single-thread executor. Every public method submits one complete transaction
function to that thread (``BEGIN IMMEDIATE … COMMIT`` for writes, ``BEGIN …
COMMIT`` for multi-statement reads), so transactions never interleave and
the event loop never blocks on disk. The file is in WAL mode with a
``busy_timeout``, so another process (an admin CLI) can read while we write.

The database clock is this process's clock (``time.time_ns``): the embedded
default is single-replica by design. Timestamps are stored as integer
microseconds since the Unix epoch; transcript mtimes are epoch milliseconds,
strictly increasing per key.

Migrations: ``migrations/sqlite/NNNN_name.sql`` applied in order at open under
``BEGIN IMMEDIATE`` and recorded in ``schema_migrations`` (the same table as
on PostgreSQL); a newer schema than this code knows → ``FailedPrecondition``.

The tables themselves live in :mod:`.sqlite_tables` and :mod:`.sqlite_workspace`.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import secrets
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from sessiond.client.errors import (
    DataLoss,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    SessiondError,
    Unavailable,
)

from .metadata import (
    ChunkIndex,
    GcTable,
    IdempotencyTable,
    QuotaTable,
    SessionTable,
    SnapshotTable,
    TenantTable,
    TranscriptTable,
)
from .metadata_common import Migration, from_micros, load_migrations
from .sqlite_gc import SqliteGcTable
from .sqlite_idempotency import SqliteIdempotencyTable
from .sqlite_quota import SqliteQuotaTable
from .sqlite_tables import SqliteSessionTable, SqliteTenantTable, SqliteTranscriptTable
from .sqlite_workspace import SqliteChunkIndex, SqliteSnapshotTable

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How long a writer waits for another process's write lock before giving up.
BUSY_TIMEOUT_MS = 10_000
# STRICT tables need 3.37; RETURNING 3.35.
_MIN_SQLITE = (3, 37, 0)


def now_us() -> int:
    """The SQLite backend's clock: the process clock, in microseconds."""
    return time.time_ns() // 1000


def translate(exc: BaseException, what: str) -> SessiondError:
    """The sessiond error for a sqlite3 (or encoding) exception."""
    if isinstance(exc, SessiondError):
        return exc
    if isinstance(exc, UnicodeError | sqlite3.DataError):
        return InvalidArgument(f"{what}: value rejected by the database: {type(exc).__name__}")
    if isinstance(exc, sqlite3.OperationalError | OSError):
        # Locked/busy past the timeout, I/O error, disk full, unreadable file:
        # conditions of the environment that a retry (or an operator) fixes.
        return Unavailable(f"{what}: SQLite unavailable: {exc}")
    if type(exc) is sqlite3.DatabaseError:
        # SQLITE_CORRUPT / SQLITE_NOTADB: the file itself is damaged.
        return DataLoss(f"{what}: SQLite database damaged: {exc}")
    # Integrity/programming errors nobody translated: a bug, not input.
    log.error("%s: unexpected error", what, exc_info=exc)
    return Internal(f"{what}: unexpected {type(exc).__name__}")


class SqliteDb:
    """The single connection and the single thread that owns it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sessiond-sqlite")
        self._conn: sqlite3.Connection | None = None

    async def call(
        self, what: str, fn: Callable[[sqlite3.Connection], T], *, write: bool = True
    ) -> T:
        """Run ``fn`` as one transaction in the database thread (``fn`` may end
        it early with ``ROLLBACK``); errors are translated, SessiondErrors
        raised by ``fn`` roll back and pass through."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._transaction, what, fn, write)
        except RuntimeError as exc:  # executor shut down: the store is closed
            raise Unavailable(f"{what}: the metadata store is closed") from exc

    def _transaction(self, what: str, fn: Callable[[sqlite3.Connection], T], write: bool) -> T:
        conn = self._conn
        if conn is None:
            raise Unavailable(f"{what}: the metadata store is closed")
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                result = fn(conn)
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            if conn.in_transaction:  # fn may have ended it early with ROLLBACK
                conn.execute("COMMIT")
            return result
        except SessiondError:
            raise
        except Exception as exc:
            raise translate(exc, what) from exc

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._open)
        except SessiondError:
            self._executor.shutdown(wait=False)
            raise
        except Exception as exc:
            self._executor.shutdown(wait=False)
            raise Unavailable(f"cannot open SQLite database {self.path}: {exc}") from exc

    def _open(self) -> None:
        if sqlite3.sqlite_version_info < _MIN_SQLITE:
            raise FailedPrecondition(
                f"SQLite {sqlite3.sqlite_version} is too old; sessiond needs 3.37 or newer"
            )
        if self.path == ":memory:":
            self._conn = self._connect()
            return
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # Switching to WAL and migrating need the database to themselves, and
        # SQLite does not wait on its busy handler for a journal-mode change:
        # concurrent openers (replicas, CLI admin commands) queue on a sidecar
        # file lock instead of failing with "database is locked".
        with open(f"{self.path}.open-lock", "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                self._conn = self._connect()
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: the module never opens transactions behind our
        # back; each transaction function says BEGIN/COMMIT itself.
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            # FULL: a commit acknowledged to the SDK survives power loss too.
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            _migrate(conn, load_migrations("sqlite"))
        except BaseException:
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        def _close() -> None:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, _close)
        except RuntimeError:
            return  # already shut down
        self._executor.shutdown(wait=True)


def _statements(sql: str) -> list[str]:
    """Split a migration script into complete statements (sqlite3 executes
    one at a time outside ``executescript``, which would COMMIT our
    ``BEGIN IMMEDIATE``)."""
    out: list[str] = []
    buf = ""
    for line in sql.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf)
            buf = ""
    if buf.strip() and not all(
        ln.strip().startswith("--") or not ln.strip() for ln in buf.splitlines()
    ):
        raise RuntimeError("migration ends with an incomplete statement")
    return out


def _migrate(conn: sqlite3.Connection, migrations: list[Migration]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)"
        )
        applied = {int(v) for (v,) in conn.execute("SELECT version FROM schema_migrations")}
        known = migrations[-1].version if migrations else 0
        newest = max(applied, default=0)
        if newest > known:
            raise FailedPrecondition(
                f"metadata schema is at version {newest}, newer than this sessiond supports "
                f"(version {known}); upgrade sessiond or point it at another database"
            )
        for mig in migrations:
            if mig.version in applied:
                continue
            for stmt in _statements(mig.sql):
                conn.execute(stmt)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (mig.version, mig.name, now_us()),
            )
            log.info("applied metadata migration %04d_%s", mig.version, mig.name)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class SqliteMetadataStore:
    """:class:`~.metadata.MetadataStore` in one SQLite file. Create it with
    :meth:`open`. Single replica only: the clock is the process clock."""

    def __init__(self, db: SqliteDb) -> None:
        self._db = db
        self._closed = False
        self.tenants: TenantTable = SqliteTenantTable(db, now_us)
        self.sessions: SessionTable = SqliteSessionTable(db, now_us)
        self.transcripts: TranscriptTable = SqliteTranscriptTable(db, now_us)
        self.chunks: ChunkIndex = SqliteChunkIndex(db, now_us)
        self.snapshots: SnapshotTable = SqliteSnapshotTable(db, now_us)
        self.gc: GcTable = SqliteGcTable(db, now_us)
        self.idempotency: IdempotencyTable = SqliteIdempotencyTable(db, now_us)
        self.quotas: QuotaTable = SqliteQuotaTable(db)

    @classmethod
    async def open(cls, path: str) -> SqliteMetadataStore:
        """Open (creating the file and its parent directory if needed) and
        migrate. ``Unavailable`` if the file cannot be opened;
        ``FailedPrecondition`` if its schema is newer than this code."""
        db = SqliteDb(path)
        await db.open()
        return cls(db)

    async def now(self) -> datetime:
        return from_micros(now_us())

    async def server_key(self, name: str) -> bytes:
        candidate = secrets.token_bytes(32)

        def tx(conn: sqlite3.Connection) -> bytes:
            conn.execute(
                "INSERT INTO server_keys (name, key, created_at) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO NOTHING",
                (name, candidate, now_us()),
            )
            row = conn.execute("SELECT key FROM server_keys WHERE name = ?", (name,)).fetchone()
            return bytes(row[0])

        return await self._db.call("read server key", tx)

    async def ping(self) -> None:
        def q(conn: sqlite3.Connection) -> None:
            conn.execute("SELECT 1").fetchone()

        await self._db.call("ping", q, write=False)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._db.close()
