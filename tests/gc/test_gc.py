"""GC end to end: a real in-process server (SQLite and PostgreSQL), snapshots
and restores through the real hydrator, GC run against the server's stores
while it serves. Grace periods are 0 (or an hour, to show nothing young is
touched): no test waits on a clock."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from sessiond.server.core import gc as gc_module
from sessiond.server.core.gc import GcBusy
from sessiond.server.storage.metadata import GC_JOB
from sessiond.server.storage.records import SessionChanges, SessionState, TranscriptKey
from tests.fixtures.server import RunningServer
from tests.gc.helpers import (
    Session,
    backdate,
    check,
    chunk_id,
    collector,
    gc,
    new_session,
    restored,
    snap,
)

LIVE = {"keep.txt": b"live data " * 100, "dir/shared.bin": b"shared " * 300}
DEAD = {"gone.txt": b"dead data " * 100, "dir/shared.bin": b"shared " * 300}


async def objects(server: RunningServer, tenant: str, kind: str) -> set[str]:
    blobs = server.server.stores.blobs
    return {i.key async for i in blobs.list(f"t/{tenant}/{kind}/")}


async def setup(server: RunningServer, tmp: Path) -> tuple[str, Any]:
    tenant, token = await server.new_tenant()
    return tenant, await server.client(token)


async def test_gc_collects_a_deleted_session_and_keeps_live_data(
    sessiond_server: RunningServer, tmp_path: Path
) -> None:
    tenant, client = await setup(sessiond_server, tmp_path)
    live = await new_session(sessiond_server, client, tmp_path, "live")
    dead = await new_session(sessiond_server, client, tmp_path, "dead")
    live_snap = await snap(live, LIVE)
    await snap(dead, DEAD)
    meta = sessiond_server.meta
    await meta.transcripts.append(  # a transcript to go with the session
        tenant, TranscriptKey("proj", "sdk-dead"), []
    )
    record = await meta.sessions.get(tenant, dead.session_id)
    await meta.sessions.update_fenced(
        tenant,
        dead.session_id,
        record.epoch,
        SessionChanges(sdk_session_id="sdk-dead", project_key="proj"),
    )
    packs_before = await objects(sessiond_server, tenant, "packs")
    manifests_before = await objects(sessiond_server, tenant, "manifests")
    await client.delete_session(dead.session_id)

    first = await gc(sessiond_server)
    assert first.sessions_purged == 1 and first.manifests_deleted == 1
    gone, shared = chunk_id(dead, DEAD["gone.txt"]), chunk_id(dead, DEAD["dir/shared.bin"])
    found = await meta.chunks.lookup(tenant, [gone, shared])
    assert found[gone].marked and not found[shared].marked
    assert first.chunks_marked >= 1 and first.chunks_swept == 0

    second = await gc(sessiond_server)
    assert second.chunks_swept == first.chunks_marked
    assert await meta.chunks.lookup(tenant, [gone]) == {}
    assert len(await objects(sessiond_server, tenant, "manifests")) == len(manifests_before) - 1
    if second.packs_deleted:
        assert len(await objects(sessiond_server, tenant, "packs")) < len(packs_before)

    assert await restored(live, tmp_path / "back", live_snap) == LIVE
    report = await check(sessiond_server)
    assert report.ok, [d.line() for d in report.damage]
    assert report.orphans.chunk_rows == 0 and report.orphans.pack_objects == 0


async def test_gc_respects_the_grace_period(sessiond_server: RunningServer, tmp_path: Path) -> None:
    tenant, client = await setup(sessiond_server, tmp_path)
    dead = await new_session(sessiond_server, client, tmp_path, "dead")
    await snap(dead, DEAD)
    await client.delete_session(dead.session_id)
    report = await gc(sessiond_server, grace=3600)
    # The snapshot rows go at once (they are only an index); nothing younger
    # than the grace period is marked or deleted.
    assert report.sessions_purged == 1
    assert (report.manifests_deleted, report.chunks_marked, report.chunks_swept) == (0, 0, 0)
    found = await sessiond_server.meta.chunks.lookup(tenant, [chunk_id(dead, DEAD["gone.txt"])])
    assert not any(loc.marked for loc in found.values())


async def test_snapshot_reusing_a_marked_chunk_survives_the_sweep(
    sessiond_server: RunningServer, tmp_path: Path
) -> None:
    """The race: a chunk is marked; a snapshot that needs it runs
    (MissingChunks reports it missing, the re-upload moves its row and
    clears the mark); then the sweep runs. The committed snapshot restores
    and check --read-data is clean."""
    tenant, client = await setup(sessiond_server, tmp_path)
    meta = sessiond_server.meta
    old = await new_session(sessiond_server, client, tmp_path, "old")
    await snap(old, DEAD)
    await client.delete_session(old.session_id)
    await gc(sessiond_server)  # purges the session, marks its chunks
    cid = chunk_id(old, DEAD["gone.txt"])
    before = (await meta.chunks.lookup(tenant, [cid]))[cid]
    assert before.marked
    new = await new_session(sessiond_server, client, tmp_path, "new")
    assert await new.remote.missing([cid]) == {cid}
    committed = await snap(new, DEAD)
    after = (await meta.chunks.lookup(tenant, [cid]))[cid]
    assert not after.marked and after.pack_id != before.pack_id
    report = await gc(sessiond_server)
    assert report.chunks_swept >= 0
    assert (await meta.chunks.lookup(tenant, [cid]))[cid].pack_id == after.pack_id
    assert await restored(new, tmp_path / "back", committed) == DEAD
    result = await check(sessiond_server)
    assert result.ok, [d.line() for d in result.damage]


async def test_manifest_put_between_walk_and_mark_is_a_root_next_run(
    sessiond_server: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other interleaving: GC has computed what is reachable; a snapshot
    that reuses an unreachable chunk verifies it (unmarked), puts its
    manifest and commits; then GC marks that chunk. The next run finds the
    committed manifest among its roots: the chunk is un-marked, not swept."""
    tenant, client = await setup(sessiond_server, tmp_path)
    meta = sessiond_server.meta
    old = await new_session(sessiond_server, client, tmp_path, "old")
    await snap(old, DEAD)
    await client.delete_session(old.session_id)
    new = await new_session(sessiond_server, client, tmp_path, "new")
    committed: list[str] = []
    real_walk = gc_module.walk

    async def walk_then_snapshot(*args: Any, **kw: Any) -> Any:
        stats = await real_walk(*args, **kw)
        if args[2] == tenant and not committed:  # walk(meta, workspaces, tenant, reach)
            committed.append(await snap(new, DEAD))
        return stats

    monkeypatch.setattr(gc_module, "walk", walk_then_snapshot)
    first = await gc(sessiond_server)
    monkeypatch.setattr(gc_module, "walk", real_walk)
    cid = chunk_id(old, DEAD["gone.txt"])
    assert first.chunks_marked >= 1
    assert (await meta.chunks.lookup(tenant, [cid]))[cid].marked  # marked, yet committed
    second = await gc(sessiond_server)
    assert second.chunks_unmarked >= 1
    assert not (await meta.chunks.lookup(tenant, [cid]))[cid].marked
    assert await restored(new, tmp_path / "back", committed[0]) == DEAD
    result = await check(sessiond_server)
    assert result.ok, [d.line() for d in result.damage]


async def test_retention_keeps_the_last_snapshots(
    sessiond_server: RunningServer, tmp_path: Path
) -> None:
    tenant, client = await setup(sessiond_server, tmp_path)
    s = await new_session(sessiond_server, client, tmp_path, "s")
    ids = [await snap(s, {"f.txt": f"version {i}".encode() * 50}) for i in range(3)]
    await sessiond_server.meta.gc.set_retention(tenant, 1, None)
    first = await gc(sessiond_server)
    assert first.snapshots_pruned == 2
    listed = await client.list_snapshots(s.session_id)
    assert [x.snapshot_id for x in listed.snapshots] == [ids[-1]]
    await gc(sessiond_server)  # sweeps what the first run marked
    assert await restored(s, tmp_path / "back") == {"f.txt": b"version 2" * 50}
    result = await check(sessiond_server)
    assert result.ok and result.orphans.chunk_rows == 0, [d.line() for d in result.damage]


async def test_retention_expires_long_suspended_sessions(
    sessiond_server: RunningServer, tmp_path: Path
) -> None:
    tenant, client = await setup(sessiond_server, tmp_path)
    meta = sessiond_server.meta
    stale = await new_session(sessiond_server, client, tmp_path, "stale")
    fresh = await new_session(sessiond_server, client, tmp_path, "fresh")
    for s in (stale, fresh):
        await snap(s, {"f.txt": s.session_id.encode()})
        rec = await meta.sessions.get(tenant, s.session_id)
        for state in (SessionState.HYDRATING, SessionState.SUSPENDED):
            rec = await meta.sessions.update_fenced(
                tenant, s.session_id, rec.epoch, SessionChanges(state=state)
            )
    await backdate(sessiond_server, tenant, stale.session_id, 3)
    await meta.gc.set_retention(tenant, None, 2)
    report = await gc(sessiond_server)
    assert (report.sessions_expired, report.sessions_purged) == (1, 1)
    assert (await meta.sessions.get(tenant, stale.session_id)).state is SessionState.DELETED
    assert (await meta.sessions.get(tenant, fresh.session_id)).state is SessionState.SUSPENDED
    assert await restored(fresh, tmp_path / "back") == {"f.txt": fresh.session_id.encode()}


async def test_one_gc_runner_at_a_time(sessiond_server: RunningServer, tmp_path: Path) -> None:
    _, client = await setup(sessiond_server, tmp_path)
    s = await new_session(sessiond_server, client, tmp_path, "s")
    await snap(s, LIVE)
    runs = [collector(sessiond_server, owner=f"runner-{i}").run() for i in range(2)]
    results = await asyncio.gather(*runs, return_exceptions=True)
    busy = [r for r in results if isinstance(r, GcBusy)]
    done = [r for r in results if not isinstance(r, BaseException)]
    assert len(busy) == 1 and len(done) == 1, results
    assert "another GC is running" in str(busy[0])
    # The lease was released at the end: the next run goes ahead.
    assert (await gc(sessiond_server)).tenants >= 1
    held = await sessiond_server.meta.gc.acquire_job(GC_JOB, "someone", 60)
    assert held.owner == "someone"
    with pytest.raises(GcBusy):
        await collector(sessiond_server).run()
    assert (await collector(sessiond_server, dry_run=True).run()).dry_run  # needs no lease


_ = Session
