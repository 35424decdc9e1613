"""WorkspaceService over gRPC on real stores: the write order, verification of
uploaded data, and the precise errors bad input gets."""

from __future__ import annotations

import os

import pytest

from sessiond.api.v1 import common_pb2, format_pb2, workspace_pb2
from sessiond.client import (
    Aborted,
    AsyncClient,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from sessiond.client import workspace_format as fmt
from sessiond.hydrator.remote import PendingChunk, WorkspaceRemote
from tests.fixtures.server import RunningServer

DATA = workspace_pb2.CHUNK_KIND_DATA
TREE = workspace_pb2.CHUNK_KIND_TREE


async def _setup(server: RunningServer) -> tuple[AsyncClient, WorkspaceRemote, bytes, int]:
    client = await server.client()
    session = await client.create_session()
    remote = WorkspaceRemote(client, session.session_id)
    ws = await remote.workspace(acquire_lease=True)
    return client, remote, ws.chunk_key, ws.lease_epoch


def _chunk(key: bytes, data: bytes, kind: workspace_pb2.ChunkKind = DATA) -> PendingChunk:
    return PendingChunk(
        chunk_id=fmt.chunk_id(key, data), kind=kind, frame=fmt.compress(data), raw_length=len(data)
    )


def _tree(nodes: list[format_pb2.Node]) -> bytes:
    return fmt.serialize_tree(nodes)


def _manifest(root: bytes) -> bytes:
    return format_pb2.Manifest(version=1, root_tree_id=root, source_cwd=b"/w").SerializeToString(
        deterministic=True
    )


async def test_snapshot_round_trip(sessiond_server: RunningServer) -> None:
    _, remote, key, epoch = await _setup(sessiond_server)
    body = os.urandom(300_000)
    data = _chunk(key, body)
    tree = _tree(
        [
            format_pb2.Node(
                name=b"f.bin",
                type=fmt.FILE,
                mode=0o644,
                size=len(body),
                chunk_ids=[data.chunk_id],
            )
        ]
    )
    root = _chunk(key, tree, TREE)
    assert await remote.missing([data.chunk_id, root.chunk_id]) == {data.chunk_id, root.chunk_id}
    resp = await remote.put_pack([data, root])
    assert resp.stored == 2
    assert await remote.missing([data.chunk_id, root.chunk_id]) == set()
    assert (await remote.put_pack([data, root])).stored == 0  # idempotent

    mid = await remote.put_manifest(_manifest(root.chunk_id))
    snap = await remote.commit(
        workspace_pb2.CommitSnapshotRequest(
            manifest_id=mid,
            lease_epoch=epoch,
            trigger=common_pb2.SNAPSHOT_TRIGGER_MANUAL,
            idempotency_key="k1",
        )
    )
    again = await remote.commit(
        workspace_pb2.CommitSnapshotRequest(
            manifest_id=mid,
            lease_epoch=epoch,
            trigger=common_pb2.SNAPSHOT_TRIGGER_MANUAL,
            idempotency_key="k1",
        )
    )
    assert again.snapshot_id == snap.snapshot_id
    ws = await remote.workspace()
    assert ws.latest_snapshot.snapshot_id == snap.snapshot_id

    got = await remote.get_manifest(snapshot_id=snap.snapshot_id)
    manifest = fmt.parse_manifest(got.manifest)
    chunks = [c async for c in remote.get_chunks([manifest.root_tree_id, data.chunk_id])]
    assert [c.chunk_id for c in chunks] == [root.chunk_id, data.chunk_id]
    assert fmt.open_chunk(key, data.chunk_id, chunks[1].data, chunks[1].raw_length) == body


async def test_wrong_bytes_under_an_id_are_refused(sessiond_server: RunningServer) -> None:
    _, remote, key, _ = await _setup(sessiond_server)
    good = _chunk(key, b"real content")
    forged = PendingChunk(
        chunk_id=good.chunk_id, kind=DATA, frame=fmt.compress(b"evil content"), raw_length=12
    )
    with pytest.raises(InvalidArgument) as err:
        await remote.put_pack([forged])
    assert "does not match its id" in str(err.value)
    assert await remote.missing([good.chunk_id]) == {good.chunk_id}


async def test_a_tree_chunk_must_parse(sessiond_server: RunningServer) -> None:
    _, remote, key, _ = await _setup(sessiond_server)
    bad = _tree([format_pb2.Node(name=b"..", type=fmt.FILE)])
    with pytest.raises(InvalidArgument) as err:
        await remote.put_pack([_chunk(key, bad, TREE)])
    assert "not a valid tree" in str(err.value)


async def test_manifest_must_reach_only_stored_data(sessiond_server: RunningServer) -> None:
    _, remote, key, _ = await _setup(sessiond_server)
    missing = fmt.chunk_id(key, b"never uploaded")
    tree = _tree([format_pb2.Node(name=b"a", type=fmt.FILE, size=14, chunk_ids=[missing])])
    root = _chunk(key, tree, TREE)
    await remote.put_pack([root])
    with pytest.raises(FailedPrecondition) as err:
        await remote.put_manifest(_manifest(root.chunk_id))
    assert "missing chunk" in str(err.value)
    with pytest.raises(FailedPrecondition):
        await remote.put_manifest(_manifest(fmt.chunk_id(key, b"no such tree")))
    with pytest.raises(InvalidArgument):
        await remote.put_manifest(b"\xff not a manifest")


async def test_stale_epoch_is_aborted_and_commits_nothing(sessiond_server: RunningServer) -> None:
    _, remote, key, epoch = await _setup(sessiond_server)
    root = _chunk(key, _tree([]), TREE)
    await remote.put_pack([root])
    mid = await remote.put_manifest(_manifest(root.chunk_id))
    newer = await remote.workspace(acquire_lease=True)  # another sandbox takes over
    assert newer.lease_epoch > epoch
    with pytest.raises(Aborted):
        await remote.commit(
            workspace_pb2.CommitSnapshotRequest(
                manifest_id=mid, lease_epoch=epoch, trigger=common_pb2.SNAPSHOT_TRIGGER_MANUAL
            )
        )
    assert not (await remote.workspace()).HasField("latest_snapshot")


async def test_unknown_chunk_is_data_loss_and_other_sessions_are_not_found(
    sessiond_server: RunningServer,
) -> None:
    _client, remote, key, _ = await _setup(sessiond_server)
    with pytest.raises(DataLoss):
        _ = [c async for c in remote.get_chunks([fmt.chunk_id(key, b"nope")])]
    other = await sessiond_server.client()
    foreign = WorkspaceRemote(other, remote.session_id)
    with pytest.raises(NotFound):
        await foreign.workspace()
    with pytest.raises(InvalidArgument):
        await remote.missing([b"short"])
