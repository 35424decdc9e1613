"""The GC half of the MetadataStore contract — marks in the chunk index, job
leases, retention, the reachable set, and the locked deletions of manifests
and packs — run against every backend (the fixtures of
``test_workspace_metadata.py``: adding a backend there adds it here).

Grace periods are 0 or an hour: "older than grace" is then decided by the
database clock without waiting.
"""

# Fixtures are imported from the workspace suite; pytest injects them by
# parameter name, which ruff reads as redefinition.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from sessiond.client.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound
from sessiond.server.storage.metadata import GC_JOB, MetadataStore
from sessiond.server.storage.records import NewSession, SessionChanges, SessionState
from tests.contracts.test_workspace_metadata import (  # noqa: F401 - fixtures
    M1,
    M2,
    S1,
    S2,
    T1,
    T2,
    add,
    cid,
    pack,
    snap,
    store,
)

OWNER = "gc-test"
HOUR = 3600.0


async def lease(store: MetadataStore, owner: str = OWNER, ttl: float = 60) -> None:
    got = await store.gc.acquire_job(GC_JOB, owner, ttl)
    assert got.owner == owner


class Deleter:
    """A BlobDeleter that records keys and can refuse some."""

    def __init__(self, fail: Sequence[str] = ()) -> None:
        self.deleted: list[str] = []
        self.fail = set(fail)

    async def __call__(self, keys: Sequence[str]) -> Sequence[str]:
        ok = [k for k in keys if k not in self.fail]
        self.deleted += ok
        return ok


# --- chunk index marks -----------------------------------------------------------


async def mark_all_unreachable(store: MetadataStore, tenant: str = T1) -> int:
    await lease(store)
    async with store.gc.reach(tenant) as reach:
        return await reach.mark(0, OWNER)


async def test_marked_chunks_are_missing_but_still_looked_up(store: MetadataStore) -> None:
    a, b = cid(1), cid(2)
    await add(store, T1, "p1", [a, b])
    assert await mark_all_unreachable(store) == 2
    assert await store.chunks.missing(T1, [a, b]) == [a, b]
    found = await store.chunks.lookup(T1, [a, b])
    assert found[a].marked and found[b].marked
    assert not (await store.chunks.lookup(T2, [a])).get(a)


async def test_add_pack_moves_a_marked_chunk_and_clears_its_mark(store: MetadataStore) -> None:
    a, b, c = cid(1), cid(2), cid(3)
    await add(store, T1, "p1", [a, b])
    await mark_all_unreachable(store)
    # a re-uploaded (marked → moved), c new; b stays marked in p1.
    assert await add(store, T1, "p2", [c, a], length=50) == 2
    found = await store.chunks.lookup(T1, [a, b, c])
    assert (found[a].pack_id, found[a].offset, found[a].length) == ("p2", 50, 50)
    assert not found[a].marked and found[b].marked and found[b].pack_id == "p1"
    assert await store.chunks.missing(T1, [a, b, c]) == [b]
    # An unmarked chunk keeps its first location, as before.
    assert await add(store, T1, "p3", [a]) == 0
    assert (await store.chunks.lookup(T1, [a]))[a].pack_id == "p2"
    # Moved rows are restamped: a fresh grace period before they can be marked.
    await lease(store)
    async with store.gc.reach(T1) as reach:
        assert await reach.mark(HOUR, OWNER) == 0


async def test_mark_clears_verified_and_blocks_mark_verified(store: MetadataStore) -> None:
    tree, other, data = cid("t"), cid("t2"), cid("d")
    record, locs = pack("pt", [tree, other], kind="tree")
    await store.chunks.add_pack(T1, record, locs)
    await add(store, T1, "pd", [data])
    await store.chunks.mark_verified(T1, [tree])
    await lease(store)
    async with store.gc.reach(T1) as reach:
        await reach.add([(tree, True), (other, True)])
        assert await reach.mark(0, OWNER) == 1  # data only: the trees are reachable
    assert not (await store.chunks.lookup(T1, [tree]))[tree].verified
    # While anything of the tenant is marked, no flag is set...
    await store.chunks.mark_verified(T1, [tree, other])
    assert not (await store.chunks.lookup(T1, [tree]))[tree].verified
    # ...nor is another tenant affected; once the mark is gone, flags work again.
    await add(store, T1, "pd2", [data])
    await store.chunks.mark_verified(T1, [tree])
    assert (await store.chunks.lookup(T1, [tree]))[tree].verified


# --- job leases ------------------------------------------------------------------


async def test_job_lease_one_holder(store: MetadataStore) -> None:
    first = await store.gc.acquire_job(GC_JOB, "a", 60)
    assert first.owner == "a"
    second = await store.gc.acquire_job(GC_JOB, "b", 60)
    assert second.owner == "a" and second.expires_at == first.expires_at
    again = await store.gc.acquire_job(GC_JOB, "a", 120)  # own lease: extended
    assert again.owner == "a" and again.expires_at > first.expires_at
    with pytest.raises(Aborted):
        await store.gc.renew_job(GC_JOB, "b", 60)
    await store.gc.release_job(GC_JOB, "b")  # not b's: a no-op
    assert (await store.gc.acquire_job(GC_JOB, "b", 60)).owner == "a"
    await store.gc.release_job(GC_JOB, "a")
    assert (await store.gc.acquire_job(GC_JOB, "b", 60)).owner == "b"


async def test_job_lease_expires_and_is_taken_over(store: MetadataStore) -> None:
    await store.gc.acquire_job(GC_JOB, "a", 0.05)
    await asyncio.sleep(0.1)
    await store.gc.renew_job(GC_JOB, "a", 0.05)  # expired but untaken: revived
    await asyncio.sleep(0.1)
    assert (await store.gc.acquire_job(GC_JOB, "b", 60)).owner == "b"
    with pytest.raises(Aborted):
        await store.gc.renew_job(GC_JOB, "a", 60)
    # The old holder is fenced out of every destructive call.
    async with store.gc.reach(T1) as reach:
        with pytest.raises(Aborted):
            await reach.mark(0, "a")
    with pytest.raises(Aborted):
        await store.gc.prune_snapshots(T1, 1, "a")


async def test_concurrent_acquires_have_one_winner(store: MetadataStore) -> None:
    owners = [f"o{i}" for i in range(8)]
    got = await asyncio.gather(*(store.gc.acquire_job(GC_JOB, o, 60) for o in owners))
    assert len({g.owner for g in got}) == 1


async def test_job_lease_arguments(store: MetadataStore) -> None:
    for bad in (0, -1, float("nan"), 86_401):
        with pytest.raises(InvalidArgument):
            await store.gc.acquire_job(GC_JOB, "a", bad)
    with pytest.raises(InvalidArgument):
        await store.gc.acquire_job(GC_JOB, "", 60)


# --- reachable set, mark, sweep --------------------------------------------------


async def test_mark_respects_grace_and_reachability(store: MetadataStore) -> None:
    live, dead = cid("live"), cid("dead")
    await add(store, T1, "p1", [live, dead])
    await add(store, T2, "p1", [dead])
    await lease(store)
    async with store.gc.reach(T1) as reach:
        await reach.add([(live, False)])
        assert await reach.mark(HOUR, OWNER, dry_run=True) == 0
        assert await reach.mark(HOUR, OWNER) == 0  # younger than grace
        assert await reach.mark(0, OWNER, dry_run=True) == 1
        assert await store.chunks.missing(T1, [dead]) == []  # dry run wrote nothing
        assert await reach.mark(0, OWNER) == 1
        assert await reach.mark(0, OWNER) == 0  # already marked
    assert await store.chunks.missing(T1, [live, dead]) == [dead]
    assert await store.chunks.missing(T2, [dead]) == []  # per tenant


async def test_sweep_deletes_only_old_marks_of_unreachable_chunks(store: MetadataStore) -> None:
    a, b, c = cid(1), cid(2), cid(3)
    await add(store, T1, "p1", [a, b, c])
    await mark_all_unreachable(store)
    async with store.gc.reach(T1) as reach:
        await reach.add([(b, False)])  # b became reachable again
        assert await reach.sweep(HOUR, OWNER) == 0  # marks younger than grace
        assert await reach.sweep(0, OWNER, dry_run=True) == 2
        assert await reach.unmark(OWNER) == 1
        assert await reach.sweep(0, OWNER) == 2
        stats = await reach.stats()
    assert await store.chunks.lookup(T1, [a, c]) == {}
    assert not (await store.chunks.lookup(T1, [b]))[b].marked
    assert (stats.reachable, stats.unreferenced_chunks, stats.marked_chunks) == (1, 0, 0)


async def test_reupload_between_mark_and_sweep_survives(store: MetadataStore) -> None:
    """The race in miniature: marked, needed again (missing → re-uploaded
    into another pack), then swept: the chunk stays, in its new pack."""
    a = cid("needed")
    await add(store, T1, "old", [a])
    await mark_all_unreachable(store)
    assert await store.chunks.missing(T1, [a]) == [a]
    await add(store, T1, "new", [a])
    async with store.gc.reach(T1) as reach:
        assert await reach.sweep(0, OWNER) == 0
    assert (await store.chunks.lookup(T1, [a]))[a].pack_id == "new"
    deleter = Deleter()
    assert await store.gc.delete_empty_packs(T1, OWNER, deleter) == ["old"]
    assert deleter.deleted == ["packs/old"]


async def test_walk_bookkeeping(store: MetadataStore) -> None:
    await store.snapshots.commit(snap("s1", manifest_id=M1), expected_epoch=0)
    root, sub, d1, d2, ghost = cid(M1, "root"), cid("sub"), cid("d1"), cid("d2"), cid("ghost")
    record, locs = pack("pt", [root, sub], kind="tree")
    await store.chunks.add_pack(T1, record, locs)
    await add(store, T1, "pd", [d1, d2])
    async with store.gc.reach(T1, edges=True) as reach:
        assert await reach.add_roots(committed_only=True) == 2  # M1's root and config
        first = await reach.next_trees(10)
        assert set(first) == {root, cid(M1, "config")}
        await reach.add([(sub, True), (d1, False)], parent=root)
        await reach.add([(d2, False), (ghost, False), (d1, False)], parent=sub)
        assert await reach.next_trees(10) == [sub]
        assert await reach.next_trees(10) == []
        unindexed = await reach.unindexed(b"", 10)
        assert sorted(unindexed) == sorted([(ghost, False), (cid(M1, "config"), True)])
        packs = {p.pack_id: p for p in await reach.packs("", 10)}
        assert set(packs) == {"pt", "pd"}
        assert (packs["pd"].size, packs["pd"].end, packs["pd"].chunks) == (200, 200, 2)
        assert [p.pack_id for p in await reach.packs("pd", 10)] == ["pt"]
        data = await reach.locations("pd", data_only=True)
        assert [loc.chunk_id for loc in data] == [d1, d2]
        assert await reach.locations("pt", data_only=True) == []
        found = await reach.snapshots_reaching([d2, ghost, cid("nowhere")])
        assert found == {d2: ["s1"], ghost: ["s1"]}
        stats = await reach.stats()
        assert stats.unreferenced_manifests == 1  # M2


# --- manifests and packs --------------------------------------------------------


async def test_delete_manifests(store: MetadataStore) -> None:
    await store.snapshots.commit(snap("s1", manifest_id=M1), expected_epoch=0)
    await lease(store)
    deleter = Deleter()
    assert await store.gc.delete_manifests(T1, HOUR, OWNER, deleter) == []  # young
    assert await store.gc.delete_manifests(T1, 0, OWNER, deleter, dry_run=True) == [M2]
    assert deleter.deleted == []
    assert await store.gc.delete_manifests(T1, 0, OWNER, deleter) == [M2]
    assert deleter.deleted == [f"manifests/{M2}"]
    with pytest.raises(NotFound):
        await store.snapshots.get_manifest(T1, M2)
    await store.snapshots.get_manifest(T1, M1)  # referenced: kept
    await store.snapshots.get_manifest(T2, M2)  # other tenant: kept
    with pytest.raises(NotFound):  # a commit of a deleted manifest fails
        await store.snapshots.commit(snap("s2", manifest_id=M2), expected_epoch=0)


async def test_delete_keeps_rows_whose_objects_were_not_deleted(store: MetadataStore) -> None:
    await add(store, T1, "p1", [cid(1)])
    await add(store, T1, "p2", [cid(1)])  # all duplicates: an empty pack
    await add(store, T1, "p3", [cid(1)])
    await lease(store)
    deleter = Deleter(fail=["packs/p2"])
    assert await store.gc.delete_empty_packs(T1, OWNER, deleter, limit=1) == []
    assert await store.gc.delete_empty_packs(T1, OWNER, deleter) == ["p3"]
    deleter.fail.clear()
    assert await store.gc.delete_empty_packs(T1, OWNER, deleter) == ["p2"]
    assert await store.gc.known_packs(T1, ["p1", "p2", "p3", "p4"]) == {"p1"}


async def test_snapshot_manifests_and_known(store: MetadataStore) -> None:
    await store.snapshots.commit(snap("s1", manifest_id=M2), expected_epoch=0)
    await store.snapshots.commit(snap("s2", manifest_id=M2), expected_epoch=0)
    await store.snapshots.commit(snap("s3", manifest_id=M1, session=S2), expected_epoch=0)
    got = await store.gc.snapshot_manifests(T1, "", 10)
    assert [(mid, rec.manifest_id if rec else None) for mid, rec in got] == [(M1, M1), (M2, M2)]
    assert got[0][1] == await store.snapshots.get_manifest(T1, M1)
    assert [m for m, _ in await store.gc.snapshot_manifests(T1, M1, 10)] == [M2]
    assert await store.gc.snapshot_manifests(T2, "", 10) == []
    assert await store.gc.known_manifests(T1, [M1, "nope"]) == {M1}


# --- retention -------------------------------------------------------------------


async def test_set_retention(store: MetadataStore) -> None:
    r = await store.gc.set_retention(T1, 3, 7)
    assert (r.keep_last_snapshots, r.expire_suspended_days) == (3, 7)
    listed = {x.tenant_id: x for x in await store.gc.retention()}
    assert listed[T1] == r and listed[T2].keep_last_snapshots is None
    await store.gc.set_retention(T1, None, 7)
    assert {x.tenant_id: x for x in await store.gc.retention()}[T1].keep_last_snapshots is None
    with pytest.raises(NotFound):
        await store.gc.set_retention("nobody", 1, 1)
    with pytest.raises(InvalidArgument):
        await store.gc.set_retention(T1, 0, None)


async def test_prune_snapshots_keeps_newest_and_latest(store: MetadataStore) -> None:
    for i in range(5):
        await store.snapshots.commit(snap(f"a{i}"), expected_epoch=0)
    for i in range(2):
        await store.snapshots.commit(snap(f"b{i}", session=S2), expected_epoch=0)
    await lease(store)
    assert await store.gc.prune_snapshots(T1, 2, OWNER, dry_run=True) == 3
    assert await store.gc.prune_snapshots(T1, 2, OWNER) == 3
    remaining = [s.snapshot_id for s in (await store.snapshots.list(T1, S1)).items]
    assert remaining == ["a4", "a3"]
    assert len((await store.snapshots.list(T1, S2)).items) == 2
    # latest_snapshot_id always stays, even when it is not among the newest.
    rec = await store.sessions.get(T1, S1)
    await store.sessions.update_fenced(T1, S1, rec.epoch, SessionChanges(latest_snapshot_id="a3"))
    assert await store.gc.prune_snapshots(T1, 1, OWNER) == 1  # S2's b0 only
    assert [s.snapshot_id for s in (await store.snapshots.list(T1, S1)).items] == ["a4", "a3"]


async def test_expire_suspended(store: MetadataStore) -> None:
    for sid in ("old", "new"):
        await store.sessions.create(NewSession(tenant_id=T1, session_id=sid))
        rec = await store.sessions.get(T1, sid)
        for state in (SessionState.HYDRATING, SessionState.SUSPENDED):
            rec = await store.sessions.update_fenced(
                T1, sid, rec.epoch, SessionChanges(state=state)
            )
    await lease(store)
    # Nothing is a day old; the contract is tested at the edge with days=1
    # being "not yet" for all of them.
    assert await store.gc.expire_suspended(T1, 1, OWNER, dry_run=True) == []
    assert await store.gc.expire_suspended(T1, 1, OWNER) == []
    assert (await store.sessions.get(T1, "old")).state is SessionState.SUSPENDED


async def test_deleted_sessions_and_purge(store: MetadataStore) -> None:
    await store.snapshots.commit(snap("s1"), expected_epoch=0)
    rec = await store.sessions.get(T1, S1)
    await store.sessions.update_fenced(
        T1, S1, rec.epoch, SessionChanges(sdk_session_id="sdk-1", project_key="proj")
    )
    await lease(store)
    assert await store.gc.deleted_sessions(T1, 10) == []
    with pytest.raises(FailedPrecondition):
        await store.gc.purge_session(T1, S1, OWNER)
    await store.sessions.mark_deleted(T1, S1)
    dead = await store.gc.deleted_sessions(T1, 10)
    assert [d.session_id for d in dead] == [S1]
    assert dead[0].transcript is not None and dead[0].transcript.session_id == "sdk-1"
    assert await store.gc.purge_session(T1, S1, OWNER) == 1
    assert await store.gc.deleted_sessions(T1, 10) == []
    gone = await store.sessions.get(T1, S1)
    assert (gone.state, gone.latest_snapshot_id, gone.sdk_session_id) == (
        SessionState.DELETED,
        None,
        None,
    )
    with pytest.raises(NotFound):
        await store.snapshots.get(T1, "s1")


async def test_shared_sdk_session_keeps_its_transcript(store: MetadataStore) -> None:
    for sid in (S1, S2):
        rec = await store.sessions.get(T1, sid)
        await store.sessions.update_fenced(
            T1, sid, rec.epoch, SessionChanges(sdk_session_id="same", project_key="proj")
        )
    await store.sessions.mark_deleted(T1, S1)
    dead = await store.gc.deleted_sessions(T1, 10)
    assert [(d.session_id, d.transcript) for d in dead] == [(S1, None)]
