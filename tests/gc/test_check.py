"""``check`` end to end: damage done behind sessiond's back is found and
named (tenant, chunk, pack, snapshots), on local blobs and on S3; the CLI's
exit codes; and GC's abort of stale multipart uploads on SeaweedFS."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

from sessiond.server.storage.metadata import GC_JOB
from sessiond.server.storage.s3_blob import S3BlobStore
from tests.fixtures.seaweedfs import S3Server
from tests.fixtures.server import RunningServer
from tests.gc.helpers import check, chunk_id, corrupt, gc, new_session, snap
from tests.helpers import assert_eventually, clean_env, sessiond_cmd

FILES = {"a.txt": b"alpha " * 400, "sub/b.txt": b"beta " * 400}


async def corrupt_a_chunk(server: RunningServer, tmp: Path) -> tuple[str, str, bytes, str]:
    """Snapshot FILES, then flip a byte inside a.txt's stored chunk. Returns
    (tenant, snapshot id, chunk id, pack id)."""
    tenant, token = await server.new_tenant()
    client = await server.client(token)
    s = await new_session(server, client, tmp, "w")
    snapshot_id = await snap(s, FILES)
    cid = chunk_id(s, FILES["a.txt"])
    loc = (await server.meta.chunks.lookup(tenant, [cid]))[cid]
    clean = await check(server)
    assert clean.ok, [d.line() for d in clean.damage]
    await corrupt(server, loc.blob_key, loc.offset + loc.length // 2)
    return tenant, snapshot_id, cid, loc.pack_id


async def assert_named(server: RunningServer, tmp: Path) -> None:
    tenant, snapshot_id, cid, pack_id = await corrupt_a_chunk(server, tmp)
    # Without reading data the pack looks whole: same size, ranges fit.
    assert (await check(server, read_data=False)).ok
    report = await check(server, read_data=True)
    assert not report.ok
    [damage] = report.damage
    assert (damage.tenant_id, damage.kind, damage.object_id) == (tenant, "chunk", cid.hex())
    assert damage.pack_id == pack_id and damage.snapshots == [snapshot_id]
    assert cid.hex() in damage.line() and snapshot_id in damage.line()


async def test_check_read_data_names_an_overwritten_chunk(
    sessiond_server: RunningServer, tmp_path: Path
) -> None:
    await assert_named(sessiond_server, tmp_path)


async def test_check_read_data_names_an_overwritten_chunk_on_s3(
    pg_s3_server: RunningServer, tmp_path: Path
) -> None:
    await assert_named(pg_s3_server, tmp_path)


async def test_check_finds_a_missing_pack_and_a_missing_manifest(
    sessiond_server: RunningServer, tmp_path: Path
) -> None:
    tenant, token = await sessiond_server.new_tenant()
    client = await sessiond_server.client(token)
    s = await new_session(sessiond_server, client, tmp_path, "w")
    snapshot_id = await snap(s, FILES)
    cid = chunk_id(s, FILES["a.txt"])
    meta, blobs = sessiond_server.meta, sessiond_server.server.stores.blobs
    loc = (await meta.chunks.lookup(tenant, [cid]))[cid]
    snapshot = await meta.snapshots.get(tenant, snapshot_id)
    record = await meta.snapshots.get_manifest(tenant, snapshot.manifest_id)
    await blobs.delete(loc.blob_key)
    await blobs.delete(record.blob_key)
    report = await check(sessiond_server, read_data=False)
    kinds = {(d.kind, d.object_id) for d in report.damage}
    assert ("pack", loc.pack_id) in kinds and ("manifest", snapshot.manifest_id) in kinds
    pack_damage = next(d for d in report.damage if d.kind == "pack")
    assert pack_damage.snapshots == [snapshot_id]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(sessiond_cmd(*args), capture_output=True, text=True, env=clean_env())


async def test_cli_exit_codes(sessiond_server: RunningServer, tmp_path: Path) -> None:
    config = sessiond_server.server.config
    stores = [
        "--database-url",
        config.database_url,
        "--blob-url",
        config.blob_url,
        "--master-key-file",
        str(config.data_dir / "master.key"),
    ]

    async def cli(*args: str) -> subprocess.CompletedProcess[str]:
        # In a thread: the in-process server must keep serving meanwhile.
        return await asyncio.to_thread(run_cli, *args)

    _, _, cid, pack_id = await corrupt_a_chunk(sessiond_server, tmp_path)
    plain = await cli("check", *stores)
    assert plain.returncode == 0, plain.stderr
    assert "no damage found" in plain.stdout
    damaged = await cli("check", "--read-data", "--json", *stores)
    assert damaged.returncode == 1, damaged.stderr
    report = json.loads(damaged.stdout)
    assert not report["ok"]
    assert [(d["object_id"], d["pack_id"]) for d in report["damage"]] == [(cid.hex(), pack_id)]
    text = await cli("check", "--read-data", *stores)
    assert text.returncode == 1 and cid.hex() in text.stdout and "DAMAGE" in text.stdout

    assert (await cli("check", "--no-such-flag", *stores)).returncode == 2
    assert (await cli("gc", "--grace", "-1", *stores)).returncode == 2

    held = await sessiond_server.meta.gc.acquire_job(GC_JOB, "another-runner", 60)
    assert held.owner == "another-runner"
    busy = await cli("gc", "--grace", "0", *stores)
    assert busy.returncode == 0 and "another GC is running" in busy.stderr
    await sessiond_server.meta.gc.release_job(GC_JOB, "another-runner")
    done = await cli("gc", "--grace", "0", "--json", *stores)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tenants"] >= 1


async def test_gc_aborts_stale_multipart_uploads(
    pg_s3_server: RunningServer, s3_server: S3Server
) -> None:
    blobs = pg_s3_server.server.stores.blobs
    assert isinstance(blobs, S3BlobStore)
    admin = s3_server.admin
    await asyncio.to_thread(
        admin.create_multipart_upload, Bucket=blobs.bucket, Key=blobs.prefix + "t/x/partial"
    )

    def uploads() -> list[object]:
        page = admin.list_multipart_uploads(Bucket=blobs.bucket, Prefix=blobs.prefix)
        return list(page.get("Uploads", ()))

    assert len(await asyncio.to_thread(uploads)) == 1
    assert (await gc(pg_s3_server, grace=3600)).uploads_aborted == 0  # not stale yet

    async def aborted() -> None:
        await gc(pg_s3_server, grace=0)
        assert await asyncio.to_thread(uploads) == []

    await assert_eventually(aborted, timeout=10)
