"""open_metadata_store(url): schemes, URL errors, connection errors, and the
versioned migrations of both backends (idempotent, concurrent-safe, refusing
a schema newer than the code)."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from sessiond.client.errors import FailedPrecondition, InvalidArgument, Unavailable
from sessiond.server.storage.metadata_common import load_migrations
from sessiond.server.storage.metadata_url import open_metadata_store, redact_dsn, sqlite_path
from sessiond.server.storage.postgres_meta import PostgresMetadataStore
from sessiond.server.storage.sqlite_meta import SqliteMetadataStore
from tests.fixtures.postgres import LocalPostgresCluster, with_search_path
from tests.fixtures.services import free_port
from tests.helpers import assert_eventually

# --- URL parsing -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("/var/lib/meta.db", "no scheme"),
        ("mysql://u@h/db", "'mysql'"),
        ("redis://h", "'redis'"),
        ("sqlite://somehost/meta.db", "host"),
        ("sqlite:", "no database file"),
        ("sqlite:///", "no database file"),
        ("sqlite:///var/lib/", "directory"),
        ("sqlite:///meta.db?mode=ro", "no query"),
    ],
)
async def test_bad_urls_invalid_argument(url: str, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        await open_metadata_store(url)
    assert fragment in str(info.value)


async def test_malformed_postgres_url_never_shows_password() -> None:
    with pytest.raises(InvalidArgument) as info:
        await open_metadata_store("postgresql://bob:hunter2@127.0.0.1:notaport/db")
    assert "hunter2" not in str(info.value)
    assert "***" in str(info.value)


def test_sqlite_paths() -> None:
    assert sqlite_path("sqlite:///abs/path/meta.db") == "/abs/path/meta.db"
    assert sqlite_path("sqlite:relative/meta.db") == "relative/meta.db"
    assert sqlite_path("sqlite:///with%20space/m.db") == "/with space/m.db"
    assert sqlite_path("sqlite::memory:") == ":memory:"
    assert sqlite_path("sqlite:///:memory:") == ":memory:"


def test_redact_dsn() -> None:
    assert redact_dsn("postgresql://bob:hunter2@db:5432/x") == "postgresql://bob:***@db:5432/x"
    assert (
        redact_dsn("postgres://bob@db/x?sslmode=require") == "postgres://bob@db/x?sslmode=require"
    )
    assert "hunter2" not in redact_dsn("postgresql://db/x?user=bob&password=hunter2&a=b")
    assert redact_dsn("postgresql://bob:p%40ss@h1:1,h2:2/x") == "postgresql://bob:***@h1:1,h2:2/x"
    assert redact_dsn("sqlite:///a/b.db") == "sqlite:///a/b.db"


async def test_sqlite_absolute_relative_and_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await open_metadata_store(f"sqlite:///{tmp_path}/deep/er/meta.db")
    assert isinstance(store, SqliteMetadataStore)
    await store.tenants.create("t", "T")
    await store.close()
    assert (tmp_path / "deep/er/meta.db").is_file()

    monkeypatch.chdir(tmp_path)
    store = await open_metadata_store("sqlite:rel/meta.db")
    await store.ping()
    await store.close()
    assert (tmp_path / "rel/meta.db").is_file()

    store = await open_metadata_store("sqlite::memory:")
    await store.tenants.create("t", "T")
    assert (await store.tenants.get("t")).name == "T"
    await store.close()


async def test_sqlite_file_that_is_not_a_database_unavailable(tmp_path: Path) -> None:
    bogus = tmp_path / "meta.db"
    bogus.write_bytes(b"this is not a database" * 100)
    with pytest.raises(Unavailable) as info:
        await open_metadata_store(f"sqlite:///{bogus}")
    assert str(bogus) in str(info.value)


# --- PostgreSQL connection errors ------------------------------------------------


async def test_unreachable_postgres_one_line_unavailable_without_password() -> None:
    port = free_port()  # nothing listens there
    url = f"postgresql://bob:hunter2@127.0.0.1:{port}/db"
    started = time.monotonic()
    with pytest.raises(Unavailable) as info:
        await open_metadata_store(url)
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert message == f"cannot connect to PostgreSQL at 127.0.0.1:{port}: Connection refused"
    assert "\n" not in message and "hunter2" not in message


async def test_wrong_database_unavailable_names_the_problem(postgres_server_url: str) -> None:
    url = postgres_server_url.rsplit("/", 1)[0] + "/no_such_db_" + secrets.token_hex(3)
    with pytest.raises(Unavailable) as info:
        await open_metadata_store(url)
    assert "cannot connect to PostgreSQL at" in str(info.value)
    assert "does not exist" in str(info.value)


# --- migrations ------------------------------------------------------------------


@pytest.fixture
def fresh_schema_url(postgres_server_url: str) -> Iterator[str]:
    """A URL whose search_path schema does NOT exist yet (open must create it)."""
    schema = f"m_{secrets.token_hex(6)}"
    yield with_search_path(postgres_server_url, schema)
    asyncio.run(_execute(postgres_server_url, f"DROP SCHEMA IF EXISTS {schema} CASCADE"))


async def _execute(url: str, sql: str, *args: object) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


async def _fetch(url: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(sql)
        return rows
    finally:
        await conn.close()


def _schema_of(url: str) -> str:
    return url.rsplit("search_path=", 1)[1]


async def test_postgres_creates_schema_and_tables_in_it(fresh_schema_url: str) -> None:
    store = await open_metadata_store(fresh_schema_url)
    assert isinstance(store, PostgresMetadataStore)
    await store.close()
    schema = _schema_of(fresh_schema_url)
    rows = await _fetch(
        fresh_schema_url,
        "SELECT table_schema, table_name FROM information_schema.tables"
        " WHERE table_name IN ('schema_migrations', 'tenants', 'sessions', 'transcript_keys',"
        " 'transcript_entries', 'transcript_summaries') AND table_schema = current_schema()",
    )
    assert {r["table_schema"] for r in rows} == {schema}
    assert len(rows) == 6


async def test_postgres_migrations_idempotent_across_opens(fresh_schema_url: str) -> None:
    store = await open_metadata_store(fresh_schema_url)
    tenant = await store.tenants.create("t", "T")
    await store.close()
    store = await open_metadata_store(fresh_schema_url)
    assert await store.tenants.get("t") == tenant
    await store.close()
    rows = await _fetch(fresh_schema_url, "SELECT version, name FROM schema_migrations")
    expected = [(m.version, m.name) for m in load_migrations("postgres")]
    assert sorted((r["version"], r["name"]) for r in rows) == expected


async def test_postgres_concurrent_opens_are_safe(fresh_schema_url: str) -> None:
    stores = await asyncio.gather(*(open_metadata_store(fresh_schema_url) for _ in range(4)))
    try:
        await asyncio.gather(*(s.tenants.ensure("t", "T") for s in stores))
    finally:
        for s in stores:
            await s.close()
    rows = await _fetch(fresh_schema_url, "SELECT version FROM schema_migrations")
    assert sorted(r["version"] for r in rows) == [m.version for m in load_migrations("postgres")]


async def test_postgres_schema_newer_than_code_failed_precondition(fresh_schema_url: str) -> None:
    await (await open_metadata_store(fresh_schema_url)).close()
    await _execute(
        fresh_schema_url, "INSERT INTO schema_migrations (version, name) VALUES (999, 'future')"
    )
    with pytest.raises(FailedPrecondition) as info:
        await open_metadata_store(fresh_schema_url)
    assert "999" in str(info.value) and "newer" in str(info.value)


async def test_sqlite_migrations_idempotent_and_concurrent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/meta.db"
    stores = await asyncio.gather(*(open_metadata_store(url) for _ in range(3)))
    tenant = await stores[0].tenants.create("t", "T")
    for s in stores:
        assert await s.tenants.get("t") == tenant
        await s.close()
    store = await open_metadata_store(url)
    await store.close()
    with sqlite3.connect(tmp_path / "meta.db") as conn:
        rows = conn.execute("SELECT version, name FROM schema_migrations").fetchall()
        journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert sorted(rows) == [(m.version, m.name) for m in load_migrations("sqlite")]
    assert journal == "wal"


async def test_sqlite_schema_newer_than_code_failed_precondition(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/meta.db"
    await (await open_metadata_store(url)).close()
    with sqlite3.connect(tmp_path / "meta.db") as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (999, 'future', 0)")
    with pytest.raises(FailedPrecondition) as info:
        await open_metadata_store(url)
    assert "999" in str(info.value) and "newer" in str(info.value)


async def test_postgres_connect_timeout_unavailable() -> None:
    # A listener that accepts and never answers: only the timeout ends it.
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    started = time.monotonic()
    try:
        with pytest.raises(Unavailable) as info:
            await PostgresMetadataStore.open(
                f"postgresql://bob:hunter2@127.0.0.1:{port}/db", connect_timeout=0.5
            )
    finally:
        server.close()
    assert time.monotonic() - started < 5
    assert (
        str(info.value)
        == f"cannot connect to PostgreSQL at 127.0.0.1:{port}: timed out after 0.5 s"
    )


async def test_postgres_outage_is_unavailable_and_the_pool_recovers(
    private_postgres: LocalPostgresCluster,
) -> None:
    store = await open_metadata_store(private_postgres.url + "?search_path=outage")
    try:
        tenant = await store.tenants.create("t", "T")
        private_postgres.crash()  # pg_ctl stop -m immediate
        with pytest.raises(Unavailable):
            await store.ping()
        with pytest.raises(Unavailable):
            await store.tenants.get("t")
        private_postgres.start()  # crash recovery, same port and data

        async def back() -> None:
            try:
                await store.ping()
            except Unavailable as exc:
                raise AssertionError(str(exc)) from exc

        await assert_eventually(back, timeout=30)
        assert await store.tenants.get("t") == tenant
    finally:
        await store.close()
