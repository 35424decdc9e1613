"""PostgreSQL crashes (``pg_ctl stop -m immediate``) in the middle of a
snapshot's commit transaction, on a cluster of the test's own.

The commit is caught mid-transaction deterministically: a second
connection holds the session row ``FOR UPDATE``, so the commit's
transaction (which locks that row first) is open and waiting when the
database dies. The snapshot fails UNAVAILABLE, nothing is half-committed,
and once the database is back the *same* server instance serves again and
a retried snapshot commits exactly once.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import asyncpg
import pytest

from sessiond.client.errors import Unavailable
from tests.fixtures.postgres import LocalPostgresCluster
from tests.fixtures.server import run_server
from tests.gc.helpers import new_session, write
from tests.helpers import assert_eventually, health_status
from tests.hydrator.snapshot_helpers import describe, make_workspace

from .helpers import check_clean, orphan_counts, restore_beside, snapshot_ids, take

# The first statement of the commit transaction (postgres_workspace.py).
COMMIT_LOCK = "SELECT state, epoch FROM sessions WHERE tenant_id = $1 AND session_id = $2%"


async def test_postgres_crash_mid_commit(
    private_postgres: LocalPostgresCluster, tmp_path: Path
) -> None:
    pg = private_postgres
    async with run_server(tmp_path / "server", pg.url, health_interval=0.2) as server:
        tenant, token = await server.new_tenant()
        session = await new_session(server, await server.client(token), tmp_path, "ws")
        make_workspace(session.cwd)
        v1 = describe(session.cwd)
        s1 = await take(session)
        write(session.cwd, {"new.bin": os.urandom(1 << 20), "README.md": b"changed\n"})
        v2 = describe(session.cwd)

        locker = await asyncpg.connect(pg.url)
        watcher = await asyncpg.connect(pg.url)
        try:
            lock = locker.transaction()
            await lock.start()
            await locker.execute(
                "SELECT 1 FROM sessions WHERE tenant_id = $1 AND session_id = $2 FOR UPDATE",
                tenant,
                session.session_id,
            )
            snapping = asyncio.ensure_future(take(session))

            async def commit_waits() -> None:
                assert not snapping.done()
                # From another connection: activity is snapshotted per
                # transaction, and the locker's stays open.
                waiting = await watcher.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND query LIKE $1",
                    COMMIT_LOCK,
                )
                assert waiting == 1

            await assert_eventually(commit_waits, timeout=120)
            await asyncio.to_thread(pg.crash)
        finally:
            locker.terminate()
            watcher.terminate()

        with pytest.raises(Unavailable):
            await asyncio.wait_for(snapping, 120)

        async def status(expected: str) -> None:
            assert await asyncio.to_thread(health_status, server.target) == expected

        await assert_eventually(lambda: status("NOT_SERVING"), timeout=60)
        await asyncio.to_thread(pg.start)
        await assert_eventually(lambda: status("SERVING"), timeout=60)

        # Nothing of the commit survived the crash: no row, latest unchanged.
        assert await snapshot_ids(session.client, session.session_id) == [s1]
        ws = await session.remote.workspace()
        assert ws.latest_snapshot.snapshot_id == s1
        await restore_beside(session, tmp_path / "r1", s1)
        assert describe(tmp_path / "r1") == v1

        s2 = await take(session)
        assert await snapshot_ids(session.client, session.session_id) == [s2, s1]
        await restore_beside(session, tmp_path / "r2", s2)
        assert describe(tmp_path / "r2") == v2
        # The crashed attempt's manifest was stored before the crash; the
        # retry committed that same manifest (the hydrator's pending commit),
        # so nothing is left unreferenced.
        assert orphan_counts((await check_clean(server)).orphans) == {}
