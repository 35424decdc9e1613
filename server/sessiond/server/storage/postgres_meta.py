"""PostgresMetadataStore: the MetadataStore on PostgreSQL (asyncpg pool).

Shared by every server replica. The schema is versioned: the packaged
``migrations/postgres/NNNN_name.sql`` files are applied in order at open, in
one transaction under a ``pg_advisory_xact_lock`` (so replicas starting
together apply each migration exactly once), and recorded in
``schema_migrations(version, name, applied_at)``. A database whose schema is
newer than this code refuses to open (``FailedPrecondition``) rather than
being written by a binary that does not know its invariants.

Everything lands in the first schema of the connection's ``search_path``
(created if missing), so ``postgresql://…/db?search_path=tenant_x`` isolates a
deployment, or a test, in its own schema.

The tables live in :mod:`.postgres_sessions`, :mod:`.postgres_transcripts`
and :mod:`.postgres_workspace`;
errors are translated by :mod:`.postgres_errors`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from datetime import datetime
from urllib.parse import parse_qs, urlsplit

import asyncpg

from sessiond.client.errors import (
    FailedPrecondition,
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
from .metadata_common import Migration, load_migrations
from .postgres_errors import run, translate
from .postgres_gc import PgGcTable
from .postgres_idempotency import PgIdempotencyTable
from .postgres_quota import PgQuotaTable
from .postgres_sessions import PgSessionTable, PgTenantTable
from .postgres_transcripts import PgTranscriptTable
from .postgres_workspace import PgChunkIndex, PgSnapshotTable

log = logging.getLogger(__name__)

DEFAULT_POOL_MAX_SIZE = 20
DEFAULT_CONNECT_TIMEOUT = 10.0
_CLOSE_TIMEOUT = 10.0


class PostgresMetadataStore:
    """:class:`~.metadata.MetadataStore` on an asyncpg pool. Create it with
    :meth:`open`; every method is safe to call concurrently."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._closed = False
        self.tenants: TenantTable = PgTenantTable(pool)
        self.sessions: SessionTable = PgSessionTable(pool)
        self.transcripts: TranscriptTable = PgTranscriptTable(pool)
        self.chunks: ChunkIndex = PgChunkIndex(pool)
        self.snapshots: SnapshotTable = PgSnapshotTable(pool)
        self.gc: GcTable = PgGcTable(pool)
        self.idempotency: IdempotencyTable = PgIdempotencyTable(pool)
        self.quotas: QuotaTable = PgQuotaTable(pool)

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        max_size: int = DEFAULT_POOL_MAX_SIZE,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> PostgresMetadataStore:
        """Connect (pool of 1..``max_size``) and bring the schema up to date.

        ``Unavailable`` (one line naming host and port, never the password)
        if the server cannot be reached or refuses the login within
        ``connect_timeout`` seconds; ``InvalidArgument`` for a malformed DSN;
        ``FailedPrecondition`` if the schema is newer than this code.
        """
        if max_size < 1:
            raise InvalidArgument(f"pool max size must be at least 1, got {max_size}")
        pool = await _create_pool(dsn, max_size=max_size, connect_timeout=connect_timeout)
        try:
            async with pool.acquire() as conn, conn.transaction():
                await _migrate(conn, load_migrations("postgres"))
        except SessiondError:
            pool.terminate()
            raise
        except Exception as exc:
            pool.terminate()
            raise translate(exc, "migrate metadata schema") from exc
        except BaseException:
            pool.terminate()
            raise
        return cls(pool)

    async def now(self) -> datetime:
        async def q(conn: asyncpg.Connection) -> datetime:
            value: datetime = await conn.fetchval("SELECT now()")
            return value

        return await run(self._pool, "read database clock", q, transaction=False)

    async def server_key(self, name: str) -> bytes:
        candidate = secrets.token_bytes(32)

        async def q(conn: asyncpg.Connection) -> bytes:
            # The first inserter wins; everyone reads the winner's key.
            await conn.execute(
                "INSERT INTO server_keys (name, key) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                name,
                candidate,
            )
            return bytes(await conn.fetchval("SELECT key FROM server_keys WHERE name = $1", name))

        return await run(self._pool, "read server key", q, transaction=False)

    async def ping(self) -> None:
        async def q(conn: asyncpg.Connection) -> None:
            await conn.fetchval("SELECT 1")

        await run(self._pool, "ping", q, transaction=False)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.wait_for(self._pool.close(), timeout=_CLOSE_TIMEOUT)
        except TimeoutError:
            log.warning("metadata pool did not close in %ss; terminating", _CLOSE_TIMEOUT)
            self._pool.terminate()


# --- connecting ---------------------------------------------------------------


def postgres_target(dsn: str) -> str:
    """``host:port`` (or socket directory) a DSN points at, for messages.
    Never includes credentials."""
    try:
        parts = urlsplit(dsn)
        query = parse_qs(parts.query)
    except ValueError:
        return "<malformed URL>"
    hosts = parts.netloc.rpartition("@")[2]
    if not hosts:
        hosts = query.get("host", ["localhost"])[0]
        if hosts.startswith("/"):
            return hosts
    port = query.get("port", ["5432"])[0]
    out = []
    for host in hosts.split(","):
        has_port = host.rsplit("]", 1)[-1].count(":") == 1 if host.startswith("[") else ":" in host
        out.append(host if has_port else f"{host}:{port}")
    return ",".join(out)


def _scrub(text: str, dsn: str) -> str:
    try:
        password = urlsplit(dsn).password
    except ValueError:
        password = None
    return text.replace(password, "***") if password else text


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's per-release RESET ALL / UNLISTEN / advisory unlock round
    trip: sessiond keeps no session state on pooled connections (only
    transaction-scoped locks and settings, and every transaction is closed
    before release), so the reset buys nothing and costs a round trip per
    call on the hot append path."""


async def _create_pool(dsn: str, *, max_size: int, connect_timeout: float) -> asyncpg.Pool:
    where = postgres_target(dsn)
    settings = {} if "application_name" in dsn else {"application_name": "sessiond"}
    try:
        pool: asyncpg.Pool = await asyncpg.create_pool(
            dsn,
            min_size=1,
            max_size=max_size,
            timeout=connect_timeout,
            server_settings=settings,
            reset=_no_reset,
        )
    except (ValueError, asyncpg.ClientConfigurationError) as exc:
        reason = _scrub(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, dsn)
        raise InvalidArgument(f"malformed PostgreSQL URL: {reason}") from exc
    except Exception as exc:
        reason = _scrub(_connect_reason(exc, connect_timeout), dsn)
        raise Unavailable(f"cannot connect to PostgreSQL at {where}: {reason}") from exc
    return pool


def _connect_reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout:g} s"
    if isinstance(exc, OSError):
        # asyncio's strerror is "Connect call failed ('h', p)"; the errno's
        # own text ("Connection refused") is the useful part.
        if exc.errno and exc.errno > 0 and not isinstance(exc, socket.gaierror):
            return os.strerror(exc.errno)
        if exc.strerror:
            return exc.strerror
    if isinstance(exc, asyncpg.PostgresError):
        return str(exc.message)
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first[:200]


# --- migrations ---------------------------------------------------------------


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _first_search_path_entry(search_path: str) -> str | None:
    """The first schema named in a ``search_path`` setting, unquoted and
    case-folded as PostgreSQL would; ``None`` if it is ``$user`` or empty."""
    text = search_path.strip()
    if text.startswith('"'):
        chars: list[str] = []
        i = 1
        while i < len(text):
            if text[i] == '"':
                if text[i + 1 : i + 2] != '"':
                    break
                i += 1  # a doubled quote stands for one quote
            chars.append(text[i])
            i += 1
        entry = "".join(chars)
    else:
        entry = text.split(",", 1)[0].strip().lower()
    return None if entry in ("", "$user") else entry


async def _target_schema(conn: asyncpg.Connection) -> str:
    setting: str = await conn.fetchval("SELECT current_setting('search_path')")
    first = _first_search_path_entry(setting)
    if first is not None:
        return first
    current: str | None = await conn.fetchval("SELECT current_schema()")
    if current is None:
        raise FailedPrecondition(
            "no schema to create the metadata tables in: set search_path in the database URL"
        )
    return current


async def _migrate(conn: asyncpg.Connection, migrations: list[Migration]) -> None:
    """Bring the target schema up to the newest migration, inside the caller's
    transaction. The advisory lock is per schema, so deployments (and tests)
    in different schemas of one database do not wait for each other."""
    schema = await _target_schema(conn)
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"sessiond.migrate:{schema}"
    )
    q = _quote_ident(schema)
    if not await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema):
        await conn.execute(f"CREATE SCHEMA {q}")
        log.info("created schema %s", schema)
    # Pin the migration's unqualified names to the target schema even if the
    # connection's search_path had to fall back to another one.
    await conn.execute(f"SET LOCAL search_path TO {q}")
    await conn.execute(
        f"""CREATE TABLE IF NOT EXISTS {q}.schema_migrations (
                version    integer PRIMARY KEY,
                name       text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )"""
    )
    applied = {
        int(r["version"]): str(r["name"])
        for r in await conn.fetch(f"SELECT version, name FROM {q}.schema_migrations")
    }
    known = migrations[-1].version if migrations else 0
    newest = max(applied, default=0)
    if newest > known:
        raise FailedPrecondition(
            f"metadata schema {schema!r} is at version {newest}, newer than this sessiond "
            f"supports (version {known}); upgrade sessiond or point it at another database"
        )
    for mig in migrations:
        if mig.version in applied:
            continue
        await conn.execute(mig.sql)
        await conn.execute(
            f"INSERT INTO {q}.schema_migrations (version, name) VALUES ($1, $2)",
            mig.version,
            mig.name,
        )
        log.info("applied metadata migration %04d_%s to schema %s", mig.version, mig.name, schema)
