"""Fencing: work frozen with SIGSTOP past its lease cannot commit once
someone else has taken the session over (DESIGN.md: leases with fencing
epochs; the commit transaction checks the caller's epoch).

Two variants, both with two real ``sessiond serve`` replicas on one
PostgreSQL and one bucket:

* **server leases** — replica R1 runs a turn and snapshots it; its
  hydrator is frozen before its commit (``pause-before-commit``) and R1
  itself is SIGSTOPped. R2 is asked to suspend the session: it waits out
  R1's lease, takes it over (a new epoch) and snapshots; its hydrator is
  frozen before its commit too, so the order is ours to choose. R1 and its
  hydrator resume first: the commit carries R1's stale epoch and R1's own
  servicer answers ABORTED. Then R2's hydrator commits: exactly one
  snapshot, R2's.
* **hydrator epochs** — two bring-your-own-sandbox hydrators: one restores
  (epoch N) and is frozen before its commit, the other restores (N+1) and
  commits; the first, resumed, is ABORTED.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sessiond.api.v1 import common_pb2
from sessiond.client import AsyncClient
from sessiond.client.errors import Aborted, Unavailable
from sessiond.hydrator.remote import WorkspaceRemote
from sessiond.server.core.sealing import MasterKey
from tests.e2e.agent_env import ALLOWLIST, server_environ
from tests.fakeapi import FakeMessagesAPI, text, tool_use
from tests.fixtures.services import free_port
from tests.helpers import assert_eventually, clean_env
from tests.hydrator.snapshot_helpers import describe

from .helpers import Hydrator, Result, ServerProcess, api_key, check_cli, orphan_counts

LEASE_TTL = "3"


def replica_env(
    postgres_url: str, s3_blob_url: str, master_key: str, **extra: str
) -> dict[str, str]:
    return clean_env(
        SESSIOND_DATABASE_URL=postgres_url,
        SESSIOND_BLOB_URL=s3_blob_url,
        SESSIOND_AUTH="api-key",
        SESSIOND_MASTER_KEY=master_key,
        SESSIOND_LEASE_TTL=LEASE_TTL,
        SESSIOND_IDLE_TIMEOUT="3600",
        SESSIOND_DRAIN_SECONDS="5",
        **extra,
    )


def stopped_hydrators(session_id: str) -> set[int]:
    """PIDs of ``sessiond.hydrator snapshot`` processes of the session that
    are stopped (state T), found through /proc."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if (
            state == b"T"
            and b"sessiond.hydrator" in argv
            and b"snapshot" in argv
            and session_id.encode() in argv
        ):
            found.add(int(entry))
    return found


async def one_more_stopped(session_id: str, known: set[int], timeout: float) -> int:
    async def check() -> int:
        new = stopped_hydrators(session_id) - known
        assert len(new) == 1, new
        return new.pop()

    return await assert_eventually(check, timeout=timeout, interval=0.1)


async def collect(events: AsyncIterator[object]) -> list[object]:
    return [e async for e in events]


@pytest.mark.cli
@pytest.mark.timeout(900)
async def test_replica_paused_past_its_lease_is_fenced(
    postgres_url: str, s3_blob_url: str, fake_api: FakeMessagesAPI, tmp_path: Path
) -> None:
    fake_api.add_turn(tool_use("Bash", {"command": "echo from R1 > turn.txt"}), text("done"))
    master = MasterKey.generate().encode()
    shared = {
        **replica_env(postgres_url, s3_blob_url, master),
        **server_environ(fake_api),
        "SESSIOND_ENV_ALLOWLIST": ",".join((*ALLOWLIST, "SESSIOND_FAULT_POINT")),
        # One sandbox root for both: any replica can exec into any sandbox.
        "SESSIOND_SANDBOX_PROVIDER": f"local://{tmp_path / 'sandboxes'}",
    }
    p1, p2 = free_port(), free_port()
    # Sandboxes R1 creates freeze every snapshot before its commit.
    r1 = ServerProcess(
        p1,
        tmp_path / "r1",
        {
            **shared,
            "SESSIOND_ADVERTISE_ADDRESS": f"127.0.0.1:{p1}",
            "SESSIOND_FAULT_POINT": "pause-before-commit",
        },
    )
    r2 = ServerProcess(
        p2, tmp_path / "r2", {**shared, "SESSIOND_ADVERTISE_ADDRESS": f"127.0.0.1:{p2}"}
    )
    frozen: set[int] = set()
    try:
        await r1.started()
        await r2.started()
        token = api_key(postgres_url, tmp_path)
        async with (
            AsyncClient(r1.target, token=token, timeout=120) as c1,
            AsyncClient(r2.target, token=token, timeout=120) as c2,
        ):
            sid = (await c1.create_session()).session_id
            turn = asyncio.ensure_future(
                collect(c1.query(sid, "write it", snapshot_after_turn=True, deadline=600))
            )
            h1 = await one_more_stopped(sid, frozen, timeout=300)
            frozen.add(h1)
            stale = (await WorkspaceRemote(c2, sid).workspace()).lease_epoch
            r1.signal(signal.SIGSTOP)

            suspend = asyncio.ensure_future(c2.suspend(sid))
            h2 = await one_more_stopped(sid, frozen, timeout=300)
            frozen.add(h2)
            assert (await WorkspaceRemote(c2, sid).workspace()).lease_epoch > stale
            assert (await c2.get_session(sid)).state == common_pb2.SESSION_STATE_SUSPENDING

            # R1 and its hydrator wake up; the commit R1's hydrator sends
            # carries the epoch R1 held.
            r1.signal(signal.SIGCONT)
            os.kill(h1, signal.SIGCONT)
            frozen.discard(h1)
            # R1's Query fails (UNAVAILABLE "snapshot exited with 1: … lease
            # lost … (ABORTED)"; not asserted on: a client keepalive may have
            # given up on the paused R1 first). The commit's own answer is in
            # R1's log, below.
            with pytest.raises((Aborted, Unavailable)):
                await asyncio.wait_for(turn, 300)
            assert (await c2.list_snapshots(sid)).snapshots == []

            os.kill(h2, signal.SIGCONT)
            frozen.discard(h2)
            won = await asyncio.wait_for(suspend, 300)
            snaps = (await c2.list_snapshots(sid)).snapshots
            assert [s.snapshot_id for s in snaps] == [won.snapshot.snapshot_id]
            assert snaps[0].trigger == common_pb2.SNAPSHOT_TRIGGER_MANUAL
            assert won.session.state == common_pb2.SESSION_STATE_SUSPENDED

            # R1's servicer fenced its hydrator's commit.
            log = r1.log_text()
            assert "CommitSnapshot code=ABORTED" in log, r1.log_tail()
            assert "CommitSnapshot code=OK" not in log

            # The winner is whole: R2 hydrates a fresh sandbox from it.
            resumed = await c2.resume(sid)
            assert Path(resumed.sandbox_cwd, "turn.txt").read_text() == "from R1\n"
        report = await check_cli(postgres_url, s3_blob_url, master)
        # R1's hydrator stored its manifest before it was fenced.
        assert orphan_counts(report["orphans"]) == {"manifest_rows": 1}
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        r1.stop()
        r2.stop()


async def test_hydrator_frozen_past_a_takeover_is_fenced(
    postgres_url: str, s3_blob_url: str, tmp_path: Path
) -> None:
    master = MasterKey.generate().encode()
    env = replica_env(postgres_url, s3_blob_url, master)
    a = ServerProcess(free_port(), tmp_path / "a", env)
    b = ServerProcess(free_port(), tmp_path / "b", env)
    try:
        await a.started()
        await b.started()
        token = api_key(postgres_url, tmp_path)
        async with AsyncClient(b.target, token=token) as client:
            sid = (await client.create_session()).session_id
            via_a = Hydrator(a.target, token, sid, tmp_path / "claude")
            via_b = Hydrator(b.target, token, sid, tmp_path / "claude")
            first, second = tmp_path / "first", tmp_path / "second"
            for ws in (first, second):
                ws.mkdir()
                (ws / "common.txt").write_text("shared\n")

            # The first sandbox takes the session (epoch N) through A, then
            # freezes before its commit.
            restored = await via_a.restore(first)
            assert restored.code == 0, restored.err
            epoch_n = restored.json()["lease_epoch"]
            (first / "mine.txt").write_text("from the first sandbox\n")
            proc = await asyncio.create_subprocess_exec(
                *via_a.command("snapshot", first),
                env=via_a.env("pause-before-commit"),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                stopped = await one_more_stopped(sid, set(), timeout=120)
                assert stopped == proc.pid

                # The second takes it over (N+1) through B and commits.
                restored = await via_b.restore(second)
                assert restored.code == 0, restored.err
                assert restored.json()["lease_epoch"] == epoch_n + 1
                (second / "mine.txt").write_text("from the second sandbox\n")
                won = await via_b.snapshot(second)
                assert won.code == 0, won.err
                winner = won.json()["snapshot_id"]
            finally:
                os.kill(proc.pid, signal.SIGCONT)
            out, err = await asyncio.wait_for(proc.communicate(), 120)
            late = Result(proc.returncode or 0, out.decode(), err.decode())
            assert late.code == 1 and "(ABORTED)" in late.err, late
            assert late.out == ""

            snaps = await client.list_snapshots(sid)
            assert [s.snapshot_id for s in snaps.snapshots] == [winner]
            check = tmp_path / "check"
            result = await via_b.restore(check, "--snapshot", winner)
            assert result.code == 0, result.err
            assert describe(check) == describe(second)
        report = await check_cli(postgres_url, s3_blob_url, master)
        # The fenced sandbox's manifest and its own chunk are garbage now.
        orphans = orphan_counts(report["orphans"])
        assert orphans.get("manifest_rows") == 1 and orphans.get("chunk_rows", 0) >= 1, orphans
        assert set(orphans) <= {"manifest_rows", "chunk_rows"}, orphans
    finally:
        a.stop()
        b.stop()
