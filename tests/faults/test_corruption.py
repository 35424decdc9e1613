"""A stored object overwritten behind sessiond's back (a byte flipped inside
one chunk, as a disk or a bucket might): a restore of a snapshot that needs
it fails DATA_LOSS naming the chunk, leaves the target exactly as it was
and no staging behind; ``sessiond check --read-data`` names the same
chunk, its pack and the snapshot. Put the original bytes back and check is
clean again and the restore byte-identical: the damage was that object
and nothing else.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sessiond.client import workspace_format as fmt
from sessiond.hydrator.remote import WorkspaceRemote
from tests.fixtures.server import RunningServer
from tests.hydrator.snapshot_helpers import describe

from .helpers import Hydrator, check_cli, orphan_counts, run_check_cli, staging_leftovers

FILES = {
    "a.txt": b"alpha " * 400,
    "sub/b.txt": b"beta " * 400,
    "sub/deeper/c.bin": os.urandom(64 << 10),
}


def write_files(root: Path) -> None:
    for rel, data in FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


async def target_chunk(remote: WorkspaceRemote, snapshot_id: str, kind: str) -> bytes:
    """The id of a.txt's chunk (``data``) or of the root tree (``tree``)."""
    ws = await remote.workspace()
    if kind == "data":
        return fmt.chunk_id(ws.chunk_key, FILES["a.txt"])
    manifest = fmt.parse_manifest((await remote.get_manifest(snapshot_id=snapshot_id)).manifest)
    return bytes(manifest.root_tree_id)


@pytest.mark.parametrize("kind", ["data", "tree"])
async def test_corrupted_chunk_fails_restore_untouched_and_check_names_it(
    kind: str, pg_s3_server: RunningServer, tmp_path: Path
) -> None:
    server = pg_s3_server
    tenant, token = await server.new_tenant()
    client = await server.client(token)
    sid = (await client.create_session()).session_id
    hydrator = Hydrator(server.target, token, sid, tmp_path / "claude")
    ws = tmp_path / "ws"
    write_files(ws)
    taken = await hydrator.snapshot(ws)
    assert taken.code == 0, taken.err
    snapshot_id = taken.json()["snapshot_id"]
    config = server.server.config
    stores = (config.database_url, config.blob_url)
    key_file = config.data_dir / "master.key"

    cid = await target_chunk(WorkspaceRemote(client, sid), snapshot_id, kind)
    loc = (await server.meta.chunks.lookup(tenant, [cid]))[cid]
    blobs = server.server.stores.blobs
    original = await blobs.get(loc.blob_key)
    damaged = bytearray(original)
    damaged[loc.offset + loc.length // 2] ^= 0xFF
    await blobs.put(loc.blob_key, bytes(damaged))

    # A sandbox with something in it already, and a fresh one.
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("what the sandbox had before\n")
    before = describe(dest)
    for target in (dest, tmp_path / "fresh"):
        failed = await hydrator.restore(target)
        assert failed.code == 1 and "(DATA_LOSS)" in failed.err, failed.err
        assert cid.hex()[:16] in failed.err, failed.err
        assert failed.out == ""
    assert describe(dest) == before
    assert not (tmp_path / "fresh").exists()
    assert staging_leftovers(tmp_path) == []

    code, report = await run_check_cli(*stores, master_key_file=key_file)
    assert code == 1 and not report["ok"], report
    [damage] = report["damage"]
    assert (damage["tenant_id"], damage["kind"], damage["object_id"]) == (
        tenant,
        kind if kind == "tree" else "chunk",
        cid.hex(),
    )
    assert damage["pack_id"] == loc.pack_id and damage["snapshots"] == [snapshot_id]

    # Repaired, it is whole again: the damage was that object and no other.
    await blobs.put(loc.blob_key, original)
    report = await check_cli(*stores, master_key_file=key_file)
    assert orphan_counts(report["orphans"]) == {}
    restored = await hydrator.restore(dest)
    assert restored.code == 0, restored.err
    assert describe(dest) == describe(ws)
    assert staging_leftovers(tmp_path) == []
