"""Crash points inside snapshot (DESIGN.md "Write order is the invariant").

The hydrator is the real ``sessiond-hydrator`` process, killed
(``os._exit(137)``, :mod:`sessiond.hydrator.faults`) after its packs are
stored, after its manifest is stored, and just before its commit; the
server is a real ``sessiond serve`` process killed after it committed and
before it replied (:mod:`sessiond.server.faults`). Each time the previous
snapshot still restores byte for byte, a retry from the same working
directory (state directory intact) commits exactly one new snapshot, and
``check --read-data`` finds no damage — only counted orphans, which are
exactly the garbage the write order predicts.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from sessiond.client import AsyncClient
from sessiond.server.core.sealing import MasterKey
from tests.fixtures.server import RunningServer
from tests.fixtures.services import free_port
from tests.helpers import clean_env
from tests.hydrator.snapshot_helpers import describe, make_workspace

from .helpers import (
    Hydrator,
    ServerProcess,
    api_key,
    check_clean,
    check_cli,
    orphan_counts,
    snapshot_ids,
)


def change(ws: Path) -> None:
    """Version 2 of :func:`make_workspace`'s tree: edited, added, removed."""
    (ws / "README.md").write_text("hello again\n")
    (ws / "src" / "pkg" / "new.py").write_text("y = 2\n" * 50)
    (ws / "more.bin").write_bytes(os.urandom(5 << 20))
    (ws / "empty").unlink()


def lease_epoch(ws: Path) -> str:
    """The epoch the sandbox in ``ws`` holds (restores that must not take
    the lease away from it pass it)."""
    return str(json.loads((ws / ".sessiond" / "state.json").read_text())["lease_epoch"])


async def assert_restores(
    hydrator: Hydrator,
    target: Path,
    snapshot_id: str,
    expected: dict[bytes, tuple[Any, ...]],
    epoch: str,
) -> None:
    """``snapshot_id`` restores into a fresh ``target`` exactly as ``expected``."""
    result = await hydrator.restore(target, "--snapshot", snapshot_id, "--epoch", epoch)
    assert result.code == 0, result.err
    assert result.json()["snapshot_id"] == snapshot_id
    assert describe(target) == expected
    shutil.rmtree(target)


# What each crash leaves, before and after the retry, besides the snapshot
# rows: the new chunks' index rows (their packs are stored and indexed), and
# from the manifest on, one manifest row. The retry reuses the chunks (the
# server says it has them). A crash right after the manifest was stored
# leaves it an orphan until GC (the retry writes a new one: its creation
# time differs); a crash before the commit does not, because the hydrator
# recorded the manifest as its pending commit and the retry sends that.
EXPECTED_ORPHANS = {
    "after-packs": ({"chunk_rows"}, {}),
    "after-manifest": ({"chunk_rows", "manifest_rows"}, {"manifest_rows": 1}),
    "before-commit": ({"chunk_rows", "manifest_rows"}, {}),
}


@pytest.mark.parametrize("point", sorted(EXPECTED_ORPHANS))
async def test_hydrator_killed_inside_snapshot(
    point: str, pg_s3_server: RunningServer, tmp_path: Path
) -> None:
    server = pg_s3_server
    _, token = await server.new_tenant()
    client = await server.client(token)
    sid = (await client.create_session()).session_id
    hydrator = Hydrator(server.target, token, sid, tmp_path / "claude")
    ws = tmp_path / "ws"
    make_workspace(ws)
    v1 = describe(ws)
    first = await hydrator.snapshot(ws)
    assert first.code == 0, first.err
    s1 = first.json()["snapshot_id"]
    assert orphan_counts((await check_clean(server)).orphans) == {}

    change(ws)
    v2 = describe(ws)
    crashed = await hydrator.snapshot(ws, fault=point)
    assert crashed.code == 137, crashed.err
    assert f"fault injection: crashing at {point}" in crashed.err
    assert crashed.out == ""
    assert await snapshot_ids(client, sid) == [s1]
    epoch = lease_epoch(ws)
    await assert_restores(hydrator, tmp_path / "r", s1, v1, epoch)
    before, after = EXPECTED_ORPHANS[point]
    orphans = orphan_counts((await check_clean(server)).orphans)
    assert set(orphans) == before, orphans
    assert orphans.get("manifest_rows", 0) in (0, 1)

    retried = await hydrator.snapshot(ws)
    assert retried.code == 0, retried.err
    s2 = retried.json()["snapshot_id"]
    assert await snapshot_ids(client, sid) == [s2, s1]
    # Nothing the crashed run uploaded is sent again.
    assert retried.json()["uploaded_bytes"] < 64 << 10
    await assert_restores(hydrator, tmp_path / "r", s2, v2, epoch)
    await assert_restores(hydrator, tmp_path / "r", s1, v1, epoch)
    assert orphan_counts((await check_clean(server)).orphans) == after


def replica_env(postgres_url: str, s3_blob_url: str, master_key: str) -> dict[str, str]:
    return clean_env(
        SESSIOND_DATABASE_URL=postgres_url,
        SESSIOND_BLOB_URL=s3_blob_url,
        SESSIOND_AUTH="api-key",
        SESSIOND_MASTER_KEY=master_key,
        SESSIOND_DRAIN_SECONDS="2",
        SESSIOND_IDLE_TIMEOUT="3600",
    )


async def test_server_killed_after_commit_before_reply(
    postgres_url: str, s3_blob_url: str, tmp_path: Path
) -> None:
    """Replica A commits and dies before replying; the hydrator's own retry
    (same process, same idempotency key) reaches replica B, which answers
    with the snapshot A committed: exactly one commit. A restarts on the
    same port and data and serves again."""
    master = MasterKey.generate().encode()
    env = replica_env(postgres_url, s3_blob_url, master)
    a = ServerProcess(free_port(), tmp_path / "a", env)
    b = ServerProcess(free_port(), tmp_path / "b", env)
    try:
        await a.started(SESSIOND_FAULT_POINT="after-commit-before-reply")
        await b.started()
        token = api_key(postgres_url, tmp_path)
        async with AsyncClient(b.target, token=token) as client:
            sid = (await client.create_session()).session_id
            both = f"ipv4:{a.target},{b.target}"
            via_a = Hydrator(both, token, sid, tmp_path / "claude")
            via_b = Hydrator(b.target, token, sid, tmp_path / "claude")
            ws = tmp_path / "ws"
            make_workspace(ws)
            v1 = describe(ws)
            first = await via_b.snapshot(ws)
            assert first.code == 0, first.err
            s1 = first.json()["snapshot_id"]

            change(ws)
            v2 = describe(ws)
            second = await via_a.snapshot(ws)
            assert a.exited() == 137, a.log_tail()
            assert "fault injection: crashing at after-commit-before-reply" in a.log_text()
            assert second.code == 0, second.err
            assert "commit failed (UNAVAILABLE), retrying" in second.err
            s2 = second.json()["snapshot_id"]
            assert await snapshot_ids(client, sid) == [s2, s1]

            await a.started()
            via_a = Hydrator(a.target, token, sid, tmp_path / "claude")
            epoch = lease_epoch(ws)
            await assert_restores(via_a, tmp_path / "r", s2, v2, epoch)
            await assert_restores(via_a, tmp_path / "r", s1, v1, epoch)
            (ws / "after.txt").write_text("the service recovered\n")
            third = await via_a.snapshot(ws)
            assert third.code == 0, third.err
            assert await snapshot_ids(client, sid) == [third.json()["snapshot_id"], s2, s1]
        report = await check_cli(postgres_url, s3_blob_url, master)
        assert orphan_counts(report["orphans"]) == {}
    finally:
        a.stop()
        b.stop()


async def test_rerun_after_a_lost_reply_commits_nothing_new(
    postgres_url: str, s3_blob_url: str, tmp_path: Path
) -> None:
    """One replica, killed after the commit; the hydrator's retries run out
    before it restarts (nobody restarts it until the hydrator has exited).
    The commit landed exactly once; a re-run of the same snapshot from the
    same state directory should commit nothing new."""
    master = MasterKey.generate().encode()
    a = ServerProcess(free_port(), tmp_path / "a", replica_env(postgres_url, s3_blob_url, master))
    try:
        await a.started()
        token = api_key(postgres_url, tmp_path)
        async with AsyncClient(a.target, token=token) as client:
            sid = (await client.create_session()).session_id
            hydrator = Hydrator(a.target, token, sid, tmp_path / "claude")
            ws = tmp_path / "ws"
            make_workspace(ws)
            first = await hydrator.snapshot(ws)
            assert first.code == 0, first.err
            s1 = first.json()["snapshot_id"]
            a.stop()
            await a.started(SESSIOND_FAULT_POINT="after-commit-before-reply")

            change(ws)
            v2 = describe(ws)
            lost = await hydrator.snapshot(ws)
            assert a.exited() == 137, a.log_tail()
            assert lost.code == 1 and "(UNAVAILABLE)" in lost.err, lost.err
            await a.started()
            landed = await snapshot_ids(client, sid)
            assert len(landed) == 2 and landed[1] == s1
            await assert_restores(hydrator, tmp_path / "r", landed[0], v2, lease_epoch(ws))

            rerun = await hydrator.snapshot(ws)
            assert rerun.code == 0, rerun.err
            after = await snapshot_ids(client, sid)
        report = await check_cli(postgres_url, s3_blob_url, master)
        assert report["orphans"]["manifest_rows"] == 0
        assert after == landed, "the re-run committed a second snapshot of the same state"
    finally:
        a.stop()
