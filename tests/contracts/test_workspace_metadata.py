"""The workspace half of the MetadataStore contract — chunk index, manifests,
snapshots, fencing epochs — run against every backend.

Same shape as ``test_metadata_store.py``: adding a backend = adding a
``metadata_store`` fixture parameter. Every test checks a promise made in
the docstrings of ``ChunkIndex``, ``SnapshotTable`` and
``SessionTable.bump_epoch`` in ``sessiond.server.storage.metadata``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sessiond.client.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from sessiond.server.storage.metadata import MetadataStore
from sessiond.server.storage.records import (
    ChunkLocation,
    ManifestRecord,
    NewSession,
    NewSnapshot,
    PackRecord,
    SnapshotRecord,
)

T1 = "tenant-1"
T2 = "tenant-2"
S1 = "sess-1"
S2 = "sess-2"
M1 = "man-1"
M2 = "man-2"


@pytest.fixture
async def store(metadata_store: MetadataStore) -> MetadataStore:
    """Tenants T1 and T2, each with sessions S1 and S2 and manifests M1, M2."""
    for tenant in (T1, T2):
        await metadata_store.tenants.create(tenant, tenant)
        for sid in (S1, S2):
            await metadata_store.sessions.create(NewSession(tenant_id=tenant, session_id=sid))
        for mid in (M1, M2):
            await metadata_store.snapshots.put_manifest(tenant, manifest(mid))
    return metadata_store


# --- helpers -------------------------------------------------------------------


def cid(n: int | str, salt: str = "") -> bytes:
    """A 32-byte chunk id."""
    return hashlib.sha256(f"{salt}:{n}".encode()).digest()


def pack(
    pack_id: str,
    ids: Sequence[bytes],
    *,
    kind: str = "data",
    length: int = 100,
    blob_key: str | None = None,
) -> tuple[PackRecord, list[ChunkLocation]]:
    """A pack holding ``ids`` back to back, ``length`` bytes each."""
    key = blob_key or f"packs/{pack_id}"
    locs = [
        ChunkLocation(
            chunk_id=c,
            pack_id=pack_id,
            blob_key=key,
            offset=i * length,
            length=length,
            raw_length=length * 3 + i,
            kind=kind,
        )
        for i, c in enumerate(ids)
    ]
    return PackRecord(pack_id=pack_id, blob_key=key, size=len(ids) * length), locs


async def add(
    store: MetadataStore, tenant: str, pack_id: str, ids: Sequence[bytes], **kw: Any
) -> int:
    record, locs = pack(pack_id, ids, **kw)
    return await store.chunks.add_pack(tenant, record, locs)


def manifest(mid: str, *, blob_key: str | None = None, config: bool = True) -> ManifestRecord:
    return ManifestRecord(
        manifest_id=mid,
        blob_key=blob_key or f"manifests/{mid}",
        root_tree_id=cid(mid, "root"),
        config_tree_id=cid(mid, "config") if config else b"",
        size=1234,
        # Ignored by the store: it stamps the database clock.
        created_at=datetime(2000, 1, 1, tzinfo=UTC),
    )


def snap(
    snapshot_id: str,
    *,
    tenant: str = T1,
    session: str = S1,
    manifest_id: str = M1,
    seq: int = 0,
    key: str | None = None,
    parent: str | None = None,
    **kw: Any,
) -> NewSnapshot:
    return NewSnapshot(
        tenant_id=tenant,
        snapshot_id=snapshot_id,
        session_id=session,
        parent_snapshot_id=parent,
        manifest_id=manifest_id,
        trigger="manual",
        transcript_seq=seq,
        idempotency_key=key,
        **kw,
    )


async def all_snapshots(
    store: MetadataStore, tenant: str = T1, session: str = S1, page_size: int = 1000
) -> list[SnapshotRecord]:
    out: list[SnapshotRecord] = []
    token = ""
    while True:
        page = await store.snapshots.list(tenant, session, page_size=page_size, page_token=token)
        out += page.items
        token = page.next_token
        if not token:
            return out


async def latest(store: MetadataStore, tenant: str = T1, session: str = S1) -> str | None:
    return (await store.sessions.get(tenant, session)).latest_snapshot_id


# --- chunk index: missing / lookup -----------------------------------------------


async def test_missing_on_empty_index_is_input_order_deduplicated(store: MetadataStore) -> None:
    a, b, c = cid(1), cid(2), cid(3)
    assert await store.chunks.missing(T1, [b, a, b, c, a]) == [b, a, c]
    assert await store.chunks.missing(T1, []) == []
    assert await store.chunks.lookup(T1, []) == {}


async def test_missing_leaves_out_indexed_ids(store: MetadataStore) -> None:
    a, b, c, d = cid(1), cid(2), cid(3), cid(4)
    assert await add(store, T1, "p1", [a, b]) == 2
    assert await store.chunks.missing(T1, [c, a, d, b, c, d]) == [c, d]
    assert await store.chunks.missing(T1, [a, b, a]) == []


async def test_lookup_returns_locations_and_omits_unknown_ids(store: MetadataStore) -> None:
    a, b, c = cid(1), cid(2), cid(3)
    record, locs = pack("p1", [a, b], kind="tree", length=40)
    await store.chunks.add_pack(T1, record, locs)
    found = await store.chunks.lookup(T1, [c, b, a, b])
    assert set(found) == {a, b}
    assert found[a] == locs[0]
    assert found[b] == ChunkLocation(
        chunk_id=b,
        pack_id="p1",
        blob_key="packs/p1",
        offset=40,
        length=40,
        raw_length=121,
        kind="tree",
        verified=False,
    )


async def test_missing_and_lookup_with_5k_ids(store: MetadataStore) -> None:
    known = [cid(i) for i in range(5000)]
    unknown = [cid(i, "unknown") for i in range(5000)]
    assert await add(store, T1, "p1", known[:2500], length=10) == 2500
    assert await add(store, T1, "p2", known[2500:], length=10) == 2500
    mixed = [x for pair in zip(unknown, known, strict=True) for x in pair]

    assert await store.chunks.missing(T1, mixed) == unknown
    assert await store.chunks.missing(T1, known) == []

    found = await store.chunks.lookup(T1, mixed)
    assert len(found) == 5000 and set(found) == set(known)
    assert found[known[0]].pack_id == "p1" and found[known[4999]].pack_id == "p2"
    assert found[known[2501]].offset == 10


async def test_chunk_ids_must_be_32_bytes(store: MetadataStore) -> None:
    with pytest.raises(InvalidArgument):
        await store.chunks.missing(T1, [cid(1), b"short"])
    with pytest.raises(InvalidArgument):
        await store.chunks.lookup(T1, [cid(1).hex()])  # type: ignore[list-item]
    with pytest.raises(InvalidArgument):
        await store.chunks.mark_verified(T1, [cid(1) + b"x"])


# --- chunk index: add_pack --------------------------------------------------------


async def test_add_pack_is_idempotent(store: MetadataStore) -> None:
    ids = [cid(i) for i in range(3)]
    record, locs = pack("p1", ids)
    assert await store.chunks.add_pack(T1, record, locs) == 3
    assert await store.chunks.add_pack(T1, record, locs) == 0
    assert await store.chunks.lookup(T1, ids) == {loc.chunk_id: loc for loc in locs}


async def test_add_pack_keeps_the_first_location(store: MetadataStore) -> None:
    a, b, c = cid(1), cid(2), cid(3)
    await add(store, T1, "p1", [a, b])
    # b is stored again in p2: the index keeps p1's copy (p2's is garbage).
    assert await add(store, T1, "p2", [b, c]) == 1
    found = await store.chunks.lookup(T1, [a, b, c])
    assert (found[a].pack_id, found[b].pack_id, found[c].pack_id) == ("p1", "p1", "p2")
    assert (found[b].offset, found[b].blob_key) == (100, "packs/p1")
    assert found[c].offset == 100


async def test_add_pack_with_an_id_twice_indexes_the_first(store: MetadataStore) -> None:
    a, b = cid(1), cid(2)
    assert await add(store, T1, "p1", [a, b, a]) == 2
    assert (await store.chunks.lookup(T1, [a]))[a].offset == 0


async def test_add_pack_with_no_chunks_records_nothing_to_index(store: MetadataStore) -> None:
    assert await store.chunks.add_pack(T1, PackRecord("p0", "packs/p0", 0), []) == 0


async def test_add_pack_id_reused_for_another_blob(store: MetadataStore) -> None:
    await add(store, T1, "p1", [cid(1)])
    with pytest.raises(AlreadyExists):
        await add(store, T1, "p1", [cid(2)], blob_key="packs/elsewhere")
    assert await store.chunks.missing(T1, [cid(2)]) == [cid(2)]


@pytest.mark.parametrize(
    "broken",
    [
        {"offset": 150},  # ends past the pack
        {"offset": -1},
        {"length": 0},
        {"raw_length": -1},
        {"pack_id": "other"},
        {"blob_key": "packs/other"},
        {"kind": "blob"},
        {"verified": True},  # a data chunk cannot be a verified tree
        {"chunk_id": b"\x01" * 31},
    ],
)
async def test_add_pack_rejects_bad_locations_and_writes_nothing(
    store: MetadataStore, broken: dict[str, Any]
) -> None:
    record, locs = pack("p1", [cid(1), cid(2)])
    fields = {
        "chunk_id": locs[1].chunk_id,
        "pack_id": "p1",
        "blob_key": "packs/p1",
        "offset": 100,
        "length": 100,
        "raw_length": 1,
        "kind": "data",
        **broken,
    }
    with pytest.raises(InvalidArgument):
        await store.chunks.add_pack(T1, record, [locs[0], ChunkLocation(**fields)])
    assert await store.chunks.missing(T1, [cid(1)]) == [cid(1)]
    # The pack row was not written either: the same id with other bytes is fine.
    assert await add(store, T1, "p1", [cid(9)], blob_key="packs/p1-retry") == 1


async def test_add_pack_unknown_tenant(store: MetadataStore) -> None:
    with pytest.raises(NotFound):
        await add(store, "nobody", "p1", [cid(1)])


async def test_chunk_index_is_per_tenant(store: MetadataStore) -> None:
    a, b = cid(1), cid(2)
    await add(store, T1, "p1", [a, b])
    assert await store.chunks.missing(T2, [a, b]) == [a, b]
    assert await store.chunks.lookup(T2, [a, b]) == {}
    # The same chunk id (and even pack id) under T2 is an unrelated row.
    assert await add(store, T2, "p1", [b, a], blob_key="t2/packs/p1") == 2
    t1, t2 = await store.chunks.lookup(T1, [a]), await store.chunks.lookup(T2, [a])
    assert (t1[a].blob_key, t1[a].offset) == ("packs/p1", 0)
    assert (t2[a].blob_key, t2[a].offset) == ("t2/packs/p1", 100)


async def test_concurrent_packs_sharing_chunks(
    store: MetadataStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sessiond.server.storage")

    async def one(ids: list[bytes], name: str, n: int) -> int:
        # Overlapping windows, every other one reversed: a deadlock magnet
        # for a store that inserts index rows in input order.
        window = ids[n * 200 : n * 200 + 1200]
        return await add(store, T1, name, window if n % 2 else window[::-1], length=1)

    for rnd in range(3):
        ids = [cid(i, f"round{rnd}") for i in range(3000)]
        stored = await asyncio.gather(*(one(ids, f"p{rnd}-{n}", n) for n in range(10)))
        distinct = 9 * 200 + 1200
        assert sum(stored) == distinct
        assert len(await store.chunks.lookup(T1, ids)) == distinct
    # Not even a deadlock that a retry papered over (40P01 on PostgreSQL).
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]


# --- chunk index: mark_verified ---------------------------------------------------


async def test_mark_verified(store: MetadataStore) -> None:
    t1, t2, d = cid("t1"), cid("t2"), cid("d")
    await add(store, T1, "trees", [t1, t2], kind="tree")
    await add(store, T1, "data", [d])
    await add(store, T2, "trees", [t1], kind="tree")

    await store.chunks.mark_verified(T1, [t1, d, cid("unknown"), t1])
    found = await store.chunks.lookup(T1, [t1, t2, d])
    assert (found[t1].verified, found[t2].verified, found[d].verified) == (True, False, False)
    assert not (await store.chunks.lookup(T2, [t1]))[t1].verified

    await store.chunks.mark_verified(T1, [t1, t2])  # idempotent
    found = await store.chunks.lookup(T1, [t1, t2])
    assert found[t1].verified and found[t2].verified
    await store.chunks.mark_verified(T1, [])


async def test_add_pack_can_index_a_verified_tree(store: MetadataStore) -> None:
    t = cid("t")
    record, locs = pack("p1", [t], kind="tree")
    await store.chunks.add_pack(
        T1, record, [ChunkLocation(**{**_fields(locs[0]), "verified": True})]
    )
    assert (await store.chunks.lookup(T1, [t]))[t].verified


def _fields(loc: ChunkLocation) -> dict[str, Any]:
    return {name: getattr(loc, name) for name in ChunkLocation.__slots__}


# --- manifests --------------------------------------------------------------------


async def test_put_manifest_stamps_the_database_clock(metadata_store: MetadataStore) -> None:
    store = metadata_store
    await store.tenants.create(T1, "one")
    before = await store.now()
    stored = await store.snapshots.put_manifest(T1, manifest(M1))
    after = await store.now()
    assert before - timedelta(seconds=1) <= stored.created_at <= after + timedelta(seconds=1)
    want = manifest(M1)
    assert (stored.manifest_id, stored.blob_key, stored.root_tree_id, stored.size) == (
        want.manifest_id,
        want.blob_key,
        want.root_tree_id,
        want.size,
    )
    assert stored.config_tree_id == want.config_tree_id
    assert await store.snapshots.get_manifest(T1, M1) == stored


async def test_put_manifest_is_idempotent(store: MetadataStore) -> None:
    first = await store.snapshots.get_manifest(T1, M1)
    again = await store.snapshots.put_manifest(T1, manifest(M1, blob_key="manifests/other"))
    assert again == first


async def test_manifest_without_config_tree(store: MetadataStore) -> None:
    stored = await store.snapshots.put_manifest(T1, manifest("bare", config=False))
    assert stored.config_tree_id == b""
    assert (await store.snapshots.get_manifest(T1, "bare")).config_tree_id == b""


async def test_get_manifest_not_found(store: MetadataStore) -> None:
    with pytest.raises(NotFound):
        await store.snapshots.get_manifest(T1, "nope")
    await store.snapshots.put_manifest(T1, manifest("only-t1"))
    with pytest.raises(NotFound):
        await store.snapshots.get_manifest(T2, "only-t1")


async def test_put_manifest_checks(store: MetadataStore) -> None:
    with pytest.raises(NotFound):
        await store.snapshots.put_manifest("nobody", manifest("m"))
    bad = ManifestRecord("m", "k", b"short", b"", 1, datetime.now(UTC))
    with pytest.raises(InvalidArgument):
        await store.snapshots.put_manifest(T1, bad)


# --- snapshots: commit ------------------------------------------------------------


async def test_commit_happy_path(store: MetadataStore) -> None:
    before = await store.sessions.get(T1, S1)
    assert before.latest_snapshot_id is None
    record = await store.snapshots.commit(
        snap(
            "s1",
            seq=7,
            transcript_uuid="u-7",
            file_history_included=True,
            stats={"files": 3, "bytes": 4096, "new_bytes": 10},
        ),
        expected_epoch=before.epoch,
    )
    assert record == SnapshotRecord(
        tenant_id=T1,
        snapshot_id="s1",
        session_id=S1,
        parent_snapshot_id=None,
        manifest_id=M1,
        trigger="manual",
        transcript_uuid="u-7",
        transcript_seq=7,
        file_history_included=True,
        stats={"files": 3, "bytes": 4096, "new_bytes": 10},
        created_at=record.created_at,
    )
    assert record.created_at >= before.created_at
    assert await store.snapshots.get(T1, "s1") == record
    after = await store.sessions.get(T1, S1)
    assert after.latest_snapshot_id == "s1"
    assert after.updated_at >= record.created_at
    assert after.epoch == before.epoch

    child = await store.snapshots.commit(snap("s2", parent="s1"), expected_epoch=before.epoch)
    assert child.parent_snapshot_id == "s1"
    assert await latest(store) == "s2"
    # Other sessions and tenants are untouched.
    assert await latest(store, T1, S2) is None
    assert await latest(store, T2, S1) is None


async def test_commit_normalizes_empty_optional_strings(store: MetadataStore) -> None:
    record = await store.snapshots.commit(
        snap("s1", parent="", key="", transcript_uuid=""), expected_epoch=0
    )
    assert (record.parent_snapshot_id, record.transcript_uuid) == (None, None)
    # "" is no idempotency key: a second commit is a new snapshot.
    await store.snapshots.commit(snap("s2", key=""), expected_epoch=0)
    assert len(await all_snapshots(store)) == 2


async def test_commit_with_a_stale_epoch_is_aborted_and_writes_nothing(
    store: MetadataStore,
) -> None:
    await store.sessions.bump_epoch(T1, S1)
    with pytest.raises(Aborted, match="lease lost: session 'sess-1' epoch is 1, caller holds 0"):
        await store.snapshots.commit(snap("s1", key="k"), expected_epoch=0)
    with pytest.raises(Aborted):
        await store.snapshots.commit(snap("s1"), expected_epoch=2)
    assert await all_snapshots(store) == []
    assert await latest(store) is None
    with pytest.raises(NotFound):
        await store.snapshots.get(T1, "s1")
    # The current holder can commit, and the aborted idempotency key is free.
    record = await store.snapshots.commit(snap("s1", key="k"), expected_epoch=1)
    assert await latest(store) == record.snapshot_id


async def test_commit_on_a_deleted_session(store: MetadataStore) -> None:
    live = await store.sessions.get(T1, S1)
    deleted = await store.sessions.mark_deleted(T1, S1)
    for epoch in (live.epoch, deleted.epoch):
        with pytest.raises(FailedPrecondition):
            await store.snapshots.commit(snap("s1"), expected_epoch=epoch)
    assert await all_snapshots(store) == []
    assert await latest(store) is None


async def test_commit_unknown_session_or_manifest(store: MetadataStore) -> None:
    with pytest.raises(NotFound):
        await store.snapshots.commit(snap("s1", session="nope"), expected_epoch=0)
    with pytest.raises(NotFound):
        await store.snapshots.commit(snap("s1", tenant="nobody"), expected_epoch=0)
    with pytest.raises(NotFound):
        await store.snapshots.commit(snap("s1", manifest_id="nope"), expected_epoch=0)
    # A manifest of another tenant does not exist for this one.
    await store.snapshots.put_manifest(T2, manifest("t2-only"))
    with pytest.raises(NotFound):
        await store.snapshots.commit(snap("s1", manifest_id="t2-only"), expected_epoch=0)
    assert await all_snapshots(store) == []
    assert await latest(store) is None


async def test_commit_is_idempotent_on_its_key(store: MetadataStore) -> None:
    first = await store.snapshots.commit(snap("s1", key="k1", seq=3), expected_epoch=0)
    # A retry (the server mints a fresh snapshot id each time) gets the same
    # snapshot back and writes nothing.
    again = await store.snapshots.commit(snap("s1-retry", key="k1", seq=3), expected_epoch=0)
    assert again == first
    other = await store.snapshots.commit(snap("s2", key="k2"), expected_epoch=0)
    assert await latest(store) == other.snapshot_id
    assert await store.snapshots.commit(snap("s3", key="k1"), expected_epoch=0) == first
    assert await latest(store) == other.snapshot_id  # the replay did not move latest
    with pytest.raises(NotFound):
        await store.snapshots.get(T1, "s1-retry")

    # The replay happens before the lease checks: a retry whose first attempt
    # landed gets its snapshot even after a takeover or a deletion.
    await store.sessions.bump_epoch(T1, S1)
    assert await store.snapshots.commit(snap("s4", key="k1"), expected_epoch=0) == first
    await store.sessions.mark_deleted(T1, S1)
    assert await store.snapshots.commit(snap("s5", key="k1"), expected_epoch=0) == first
    assert [s.snapshot_id for s in await all_snapshots(store)] == ["s2", "s1"]

    # Keys are per session (and per tenant).
    s2 = await store.snapshots.commit(snap("x1", session=S2, key="k1"), expected_epoch=0)
    t2 = await store.snapshots.commit(snap("x1", tenant=T2, key="k1"), expected_epoch=0)
    assert (s2.snapshot_id, t2.snapshot_id) == ("x1", "x1")


async def test_commit_snapshot_id_taken(store: MetadataStore) -> None:
    await store.snapshots.commit(snap("s1"), expected_epoch=0)
    with pytest.raises(AlreadyExists):
        await store.snapshots.commit(snap("s1", session=S2), expected_epoch=0)
    assert await latest(store, T1, S2) is None


@pytest.mark.parametrize(
    "bad",
    [
        {"snapshot_id": ""},
        {"trigger": ""},
        {"transcript_seq": -1},
        {"stats": {"x": float("nan")}},
        {"stats": {"x": "a\0b"}},
    ],
)
async def test_commit_rejects_bad_input(store: MetadataStore, bad: dict[str, Any]) -> None:
    fields = _fields_of(snap("s1"))
    with pytest.raises(InvalidArgument):
        await store.snapshots.commit(NewSnapshot(**{**fields, **bad}), expected_epoch=0)
    assert await all_snapshots(store) == []


def _fields_of(new: NewSnapshot) -> dict[str, Any]:
    return {name: getattr(new, name) for name in NewSnapshot.__slots__}


async def test_concurrent_commits_with_the_same_epoch_all_land(store: MetadataStore) -> None:
    results = await asyncio.gather(
        *(store.snapshots.commit(snap(f"s{i}", key=f"k{i}"), expected_epoch=0) for i in range(10))
    )
    ids = {r.snapshot_id for r in results}
    assert ids == {f"s{i}" for i in range(10)}
    listed = await all_snapshots(store)
    assert {s.snapshot_id for s in listed} == ids
    # Commit order is created_at order: the newest is the session's latest.
    assert await latest(store) == listed[0].snapshot_id


async def test_concurrent_retries_of_one_commit_land_once(store: MetadataStore) -> None:
    results = await asyncio.gather(
        *(store.snapshots.commit(snap(f"try{i}", key="k"), expected_epoch=0) for i in range(10))
    )
    assert len({r.snapshot_id for r in results}) == 1
    assert results == [results[0]] * 10
    assert [s.snapshot_id for s in await all_snapshots(store)] == [results[0].snapshot_id]
    assert await latest(store) == results[0].snapshot_id


async def test_concurrent_commits_racing_a_takeover(store: MetadataStore) -> None:
    async def commit(i: int) -> SnapshotRecord | Aborted:
        try:
            return await store.snapshots.commit(snap(f"s{i}", key=f"k{i}"), expected_epoch=0)
        except Aborted as exc:
            return exc

    async def takeover() -> int:
        return (await store.sessions.bump_epoch(T1, S1)).epoch

    # The takeover is issued in the middle of the burst: commits that reach
    # the session row before it land, the rest are fenced.
    outcome = await asyncio.gather(
        *(commit(i) for i in range(5)), takeover(), *(commit(i) for i in range(5, 10))
    )
    epoch = outcome.pop(5)
    assert epoch == 1
    results = [r for r in outcome if not isinstance(r, int)]
    assert len(results) == 10
    landed = {r.snapshot_id for r in results if isinstance(r, SnapshotRecord)}
    listed = await all_snapshots(store)
    assert {s.snapshot_id for s in listed} == landed
    assert await latest(store) == (listed[0].snapshot_id if listed else None)

    # After the takeover every stale commit is refused, however many race.
    stale = await asyncio.gather(*(commit(i) for i in range(10, 20)))
    assert all(isinstance(r, Aborted) for r in stale)
    assert {s.snapshot_id for s in await all_snapshots(store)} == landed
    fresh = await store.snapshots.commit(snap("new", key="new"), expected_epoch=epoch)
    assert await latest(store) == fresh.snapshot_id


# --- snapshots: get / list / covering ----------------------------------------------


async def test_get_snapshot_not_found(store: MetadataStore) -> None:
    await store.snapshots.commit(snap("s1"), expected_epoch=0)
    with pytest.raises(NotFound):
        await store.snapshots.get(T1, "nope")
    with pytest.raises(NotFound):
        await store.snapshots.get(T2, "s1")


async def test_list_pages_newest_first(store: MetadataStore) -> None:
    for i in range(7):
        await store.snapshots.commit(snap(f"s{i}"), expected_epoch=0)
    await store.snapshots.commit(snap("other", session=S2), expected_epoch=0)

    sizes, ids, token = [], [], ""
    while True:
        page = await store.snapshots.list(T1, S1, page_size=3, page_token=token)
        sizes.append(len(page.items))
        ids += [s.snapshot_id for s in page.items]
        token = page.next_token
        if not token:
            break
    assert sizes == [3, 3, 1]
    assert ids == [f"s{i}" for i in reversed(range(7))]
    created = [s.created_at for s in await all_snapshots(store)]
    assert created == sorted(created, reverse=True)
    exact = await store.snapshots.list(T1, S1, page_size=7)
    assert (len(exact.items), exact.next_token) == (7, "")


async def test_list_paging_is_stable_under_new_commits(store: MetadataStore) -> None:
    for i in range(4):
        await store.snapshots.commit(snap(f"s{i}"), expected_epoch=0)
    first = await store.snapshots.list(T1, S1, page_size=2)
    await store.snapshots.commit(snap("late"), expected_epoch=0)
    rest = await store.snapshots.list(T1, S1, page_size=10, page_token=first.next_token)
    assert [s.snapshot_id for s in first.items + rest.items] == ["s3", "s2", "s1", "s0"]


async def test_list_edge_cases(store: MetadataStore) -> None:
    assert (await store.snapshots.list(T1, S1)).items == []
    with pytest.raises(NotFound):
        await store.snapshots.list(T1, "nope")
    with pytest.raises(NotFound):
        await store.snapshots.list("nobody", S1)
    await store.sessions.mark_deleted(T1, S2)
    assert (await store.snapshots.list(T1, S2)).items == []
    for i in range(3):
        await store.snapshots.commit(snap(f"s{i}"), expected_epoch=0)
    token = (await store.snapshots.list(T1, S1, page_size=1)).next_token
    assert token
    with pytest.raises(InvalidArgument):
        await store.snapshots.list(T1, S1, page_token="garbage!")
    with pytest.raises(InvalidArgument):  # another session's token
        await store.snapshots.list(T1, S2, page_token=token)
    with pytest.raises(InvalidArgument):  # another tenant's
        await store.snapshots.list(T2, S1, page_token=token)
    session_token = (await store.sessions.list(T1, page_size=1, include_deleted=True)).next_token
    assert session_token
    with pytest.raises(InvalidArgument):  # a session-list token
        await store.snapshots.list(T1, S1, page_token=session_token)
    with pytest.raises(InvalidArgument):
        await store.snapshots.list(T1, S1, page_size=0)


async def test_covering(store: MetadataStore) -> None:
    with pytest.raises(NotFound):
        await store.snapshots.covering(T1, S1, 1)
    for sid, seq in [("a5", 5), ("b10", 10), ("c10", 10), ("d20", 20)]:
        await store.snapshots.commit(snap(sid, seq=seq), expected_epoch=0)

    async def at(seq: int) -> str:
        return (await store.snapshots.covering(T1, S1, seq)).snapshot_id

    with pytest.raises(NotFound):
        await at(21)
    with pytest.raises(NotFound):
        await store.snapshots.covering(T2, S1, 1)
    assert await at(0) == "a5"
    assert await at(5) == "a5"
    assert await at(6) == "c10"  # the newest of the two at seq 10
    assert await at(10) == "c10"
    assert await at(11) == "d20"
    assert await at(20) == "d20"
    with pytest.raises(InvalidArgument):
        await at(-1)


async def test_covering_is_the_first_snapshot_after_the_message(store: MetadataStore) -> None:
    # A snapshot committed later but pinned to an earlier message (a restore
    # of an old state) covers the messages up to its own position.
    await store.snapshots.commit(snap("late-pos", seq=50), expected_epoch=0)
    await store.snapshots.commit(snap("early-pos", seq=10), expected_epoch=0)
    assert (await store.snapshots.covering(T1, S1, 20)).snapshot_id == "late-pos"
    assert (await store.snapshots.covering(T1, S1, 8)).snapshot_id == "early-pos"
    assert await latest(store) == "early-pos"


# --- bump_epoch -----------------------------------------------------------------


async def test_bump_epoch_increments_and_fences(store: MetadataStore) -> None:
    before = await store.sessions.get(T1, S1)
    one = await store.sessions.bump_epoch(T1, S1)
    two = await store.sessions.bump_epoch(T1, S1)
    assert (one.epoch, two.epoch) == (before.epoch + 1, before.epoch + 2)
    assert two.updated_at >= before.updated_at
    assert (await store.sessions.get(T1, S1)).epoch == two.epoch
    assert (await store.sessions.get(T2, S1)).epoch == before.epoch
    with pytest.raises(Aborted):
        await store.snapshots.commit(snap("s1"), expected_epoch=one.epoch)
    await store.snapshots.commit(snap("s1"), expected_epoch=two.epoch)


async def test_bump_epoch_concurrent_takeovers_are_distinct(store: MetadataStore) -> None:
    epochs = await asyncio.gather(*(store.sessions.bump_epoch(T1, S1) for _ in range(10)))
    assert sorted(r.epoch for r in epochs) == list(range(1, 11))


async def test_bump_epoch_errors(store: MetadataStore) -> None:
    with pytest.raises(NotFound):
        await store.sessions.bump_epoch(T1, "nope")
    with pytest.raises(NotFound):
        await store.sessions.bump_epoch("nobody", S1)
    deleted = await store.sessions.mark_deleted(T1, S1)
    with pytest.raises(FailedPrecondition):
        await store.sessions.bump_epoch(T1, S1)
    assert (await store.sessions.get(T1, S1)).epoch == deleted.epoch
