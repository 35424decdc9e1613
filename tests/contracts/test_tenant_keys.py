"""The tenant-key half of the TenantTable contract — data keys, shredding,
purging — run against every backend (same shape as ``test_metadata_store.py``:
adding a backend = adding a fixture parameter). Every test checks a promise
made in the docstrings of ``TenantTable`` in ``sessiond.server.storage.metadata``.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from sessiond.client.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from sessiond.server.storage.metadata import MetadataStore
from sessiond.server.storage.metadata_url import open_metadata_store
from sessiond.server.storage.records import (
    ChunkLocation,
    ManifestRecord,
    NewSession,
    NewSnapshot,
    PackRecord,
    TranscriptEntry,
    TranscriptKey,
)

T1 = "tenant-1"
T2 = "tenant-2"


@dataclass
class Backend:
    store: MetadataStore
    # Row counts of the tenant in every table that has a tenant_id column.
    rows: Callable[[str], Awaitable[dict[str, int]]]
    # Run one write statement with ``?`` placeholders.
    execute: Callable[[str, tuple[object, ...]], Awaitable[None]]


@pytest.fixture
async def sqlite_backend(tmp_path: Path) -> AsyncIterator[Backend]:
    path = tmp_path / "meta.db"
    store = await open_metadata_store(f"sqlite:///{path}")

    def _rows(tenant: str) -> dict[str, int]:
        with sqlite3.connect(path) as conn:
            tables = [
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            ]
            out = {}
            for table in tables:
                cols = [c[1] for c in conn.execute(f"PRAGMA table_info({table})")]
                if "tenant_id" in cols:
                    (n,) = conn.execute(
                        f"SELECT count(*) FROM {table} WHERE tenant_id = ?", (tenant,)
                    ).fetchone()
                    out[table] = n
            return out

    async def rows(tenant: str) -> dict[str, int]:
        return await asyncio.to_thread(_rows, tenant)

    async def execute(sql: str, args: tuple[object, ...]) -> None:
        def run() -> None:
            with sqlite3.connect(path) as conn:
                conn.execute(sql, args)

        await asyncio.to_thread(run)

    try:
        yield Backend(store, rows, execute)
    finally:
        await store.close()


@pytest.fixture
async def postgres_backend(postgres_url: str) -> AsyncIterator[Backend]:
    store = await open_metadata_store(postgres_url, pool_max_size=12)

    async def rows(tenant: str) -> dict[str, int]:
        conn = await asyncpg.connect(postgres_url)
        try:
            tables = await conn.fetch(
                "SELECT table_name FROM information_schema.columns"
                " WHERE column_name = 'tenant_id' AND table_schema = current_schema()"
            )
            return {
                r["table_name"]: await conn.fetchval(
                    f"SELECT count(*) FROM {r['table_name']} WHERE tenant_id = $1", tenant
                )
                for r in tables
            }
        finally:
            await conn.close()

    async def execute(sql: str, args: tuple[object, ...]) -> None:
        n = 0

        def number(_: object) -> str:
            nonlocal n
            n += 1
            return f"${n}"

        conn = await asyncpg.connect(postgres_url)
        try:
            await conn.execute(re.sub(r"\?", number, sql), *args)
        finally:
            await conn.close()

    try:
        yield Backend(store, rows, execute)
    finally:
        await store.close()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> Backend:
    b: Backend = request.getfixturevalue(f"{request.param}_backend")
    return b


@pytest.fixture
async def store(backend: Backend) -> MetadataStore:
    for tenant in (T1, T2):
        await backend.store.tenants.create(tenant, tenant)
    return backend.store


def cid(n: int | str) -> bytes:
    return hashlib.sha256(str(n).encode()).digest()


# --- data keys -----------------------------------------------------------------


async def test_a_new_tenant_has_no_data_key(store: MetadataStore) -> None:
    assert await store.tenants.data_key(T1) == (None, None)
    with pytest.raises(NotFound):
        await store.tenants.data_key("nobody")


async def test_the_first_data_key_stored_wins(store: MetadataStore) -> None:
    assert await store.tenants.set_data_key_if_absent(T1, b"wrapped-1", "m1") == (
        b"wrapped-1",
        "m1",
    )
    assert await store.tenants.set_data_key_if_absent(T1, b"wrapped-2", "m2") == (
        b"wrapped-1",
        "m1",
    )
    assert await store.tenants.data_key(T1) == (b"wrapped-1", "m1")
    assert await store.tenants.data_key(T2) == (None, None)  # per tenant


async def test_concurrent_first_users_all_get_the_same_key(store: MetadataStore) -> None:
    results = await asyncio.gather(
        *(store.tenants.set_data_key_if_absent(T1, f"w{i}".encode(), "m") for i in range(12))
    )
    assert len(set(results)) == 1
    assert await store.tenants.data_key(T1) == results[0]


async def test_data_key_arguments_are_checked(store: MetadataStore) -> None:
    with pytest.raises(InvalidArgument):
        await store.tenants.set_data_key_if_absent(T1, b"", "m")
    with pytest.raises(InvalidArgument):
        await store.tenants.set_data_key_if_absent(T1, b"w", "")
    with pytest.raises(NotFound):
        await store.tenants.set_data_key_if_absent("nobody", b"w", "m")
    assert await store.tenants.data_key(T1) == (None, None)


# --- shredding -----------------------------------------------------------------


async def test_a_shredded_tenant_is_gone_and_its_key_destroyed(store: MetadataStore) -> None:
    await store.tenants.set_data_key_if_absent(T1, b"wrapped", "m")
    await store.tenants.set_data_key_if_absent(T2, b"other", "m")
    await store.tenants.shred(T1)
    with pytest.raises(NotFound):
        await store.tenants.get(T1)
    with pytest.raises(NotFound):
        await store.tenants.data_key(T1)
    with pytest.raises(NotFound):  # never a new key for a shredded tenant
        await store.tenants.set_data_key_if_absent(T1, b"again", "m")
    with pytest.raises(FailedPrecondition):
        await store.tenants.ensure(T1, T1)
    with pytest.raises(AlreadyExists):  # the id stays taken until purged
        await store.tenants.create(T1, T1)
    await store.tenants.shred(T1)  # idempotent
    # Another tenant is untouched.
    assert (await store.tenants.get(T2)).tenant_id == T2
    assert await store.tenants.data_key(T2) == (b"other", "m")
    with pytest.raises(NotFound):
        await store.tenants.shred("nobody")


async def test_shredding_replaces_the_chunk_key(backend: Backend, store: MetadataStore) -> None:
    before = (await store.tenants.get(T1)).chunk_key
    await store.tenants.shred(T1)
    await store.tenants.purge(T1)
    again = await store.tenants.create(T1, T1)
    assert again.chunk_key != before
    assert await store.tenants.data_key(T1) == (None, None)


# --- purging -------------------------------------------------------------------


async def _fill(backend: Backend, tenant: str) -> None:
    """A row of the tenant in every table that has one."""
    store = backend.store
    await store.sessions.create(NewSession(tenant_id=tenant, session_id="s1"))
    key = TranscriptKey("proj", "s1")
    entry = TranscriptEntry(data='{"uuid":"u1","type":"user"}', parsed={"type": "user"}, uuid="u1")
    await store.transcripts.append(tenant, key, [entry])
    await store.transcripts.append(tenant, TranscriptKey("proj", "s1", "subagents/a"), [entry])
    await store.tenants.add_api_key(tenant, f"k-{tenant}", b"h" * 32, None)
    pack = PackRecord(pack_id="p1", blob_key=f"t/{tenant}/packs/p1/p1", size=10)
    loc = ChunkLocation(
        chunk_id=cid(1),
        pack_id="p1",
        blob_key=pack.blob_key,
        offset=0,
        length=10,
        raw_length=20,
        kind="data",
    )
    await store.chunks.add_pack(tenant, pack, [loc])
    await store.snapshots.put_manifest(
        tenant,
        ManifestRecord(
            manifest_id="m1",
            blob_key=f"t/{tenant}/manifests/m1",
            root_tree_id=cid("root"),
            config_tree_id=b"",
            size=10,
            created_at=datetime(2000, 1, 1, tzinfo=UTC),
        ),
    )
    await store.snapshots.commit(
        NewSnapshot(
            tenant_id=tenant,
            snapshot_id="snap1",
            session_id="s1",
            parent_snapshot_id=None,
            manifest_id="m1",
            trigger="manual",
        ),
        expected_epoch=0,
    )
    # Tables without a store API of their own yet.
    await backend.execute(
        "INSERT INTO tenant_usage (tenant_id, stored_bytes) VALUES (?, ?)", (tenant, 10)
    )
    await backend.execute(
        "INSERT INTO idempotency_keys (tenant_id, method, key, request_hash, created_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (tenant, "m", "k", b"h", _now_value(backend)),
    )


def _now_value(backend: Backend) -> object:
    # SQLite stores microseconds, PostgreSQL timestamptz.
    name = type(backend.store).__name__
    now = datetime.now(UTC)
    return int(now.timestamp() * 1_000_000) if "Sqlite" in name else now


async def test_purge_deletes_every_row_of_the_tenant_only(
    backend: Backend, store: MetadataStore
) -> None:
    for tenant in (T1, T2):
        await _fill(backend, tenant)
    before = await backend.rows(T1)
    assert all(n > 0 for n in before.values()), before
    with pytest.raises(FailedPrecondition):  # shredding comes first
        await store.tenants.purge(T1)
    assert await backend.rows(T1) == before
    await store.tenants.shred(T1)
    await store.tenants.purge(T1)
    assert {t: n for t, n in (await backend.rows(T1)).items() if n} == {}
    assert await backend.rows(T2) == before  # the other tenant keeps everything
    await store.tenants.purge(T1)  # a finished deletion can be repeated
    await store.tenants.purge("nobody")
