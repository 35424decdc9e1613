"""Encryption at rest end to end: real snapshots and restores through an
in-process server on the embedded layout (SQLite + a blob directory + the
generated master key, all in one data dir), with the stored bytes inspected
and tampered with on disk."""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from sessiond.client import AsyncClient
from sessiond.client import workspace_format as wf
from sessiond.client.errors import DataLoss, FailedPrecondition, NotFound, Unauthenticated
from sessiond.hydrator.remote import WorkspaceRemote
from sessiond.hydrator.restore import restore
from sessiond.hydrator.snapshot import snapshot
from sessiond.server.app import SessiondServer, StoreOpenError, Stores
from sessiond.server.auth import ApiKeyAuth
from sessiond.server.config import ServerConfig
from sessiond.server.core.keyring import Keyring
from sessiond.server.core.sealing import SEALED_OVERHEAD, MasterKey
from sessiond.server.core.tenants import Tenants
from sessiond.server.storage.records import ChunkLocation
from tests.fixtures.server import RunningServer, run_server
from tests.helpers import clean_env, sessiond_cmd
from tests.hydrator.snapshot_helpers import describe

CANARY = b"SESSIOND-PLAINTEXT-CANARY-7f3a9c"
SECRET_NAME = "canary-secret-name.bin"
SECRET_DIR = "ws-canary-dir"


@asynccontextmanager
async def serve(data: Path, **config: Any) -> AsyncIterator[RunningServer]:
    """A server on the embedded layout in ``data`` (what ``sessiond serve
    --data-dir data`` uses), so restarts and ``sessiond admin`` see it all."""
    async with run_server(data, f"sqlite:///{data / 'metadata.db'}", **config) as server:
        yield server


@asynccontextmanager
async def tenant_remote(
    server: RunningServer, token: str, session_id: str | None = None
) -> AsyncIterator[WorkspaceRemote]:
    async with AsyncClient(server.target, token=token) as client:
        if session_id is None:
            session_id = (await client.create_session()).session_id
        yield WorkspaceRemote(client, session_id)


def canary_workspace(root: Path, seed: int = 7) -> list[bytes]:
    """A workspace whose content, names and path are recognisable in stored
    bytes: 1 MiB of seeded random data with a canary every 64 KiB (random,
    so compression leaves it intact), a text file, a secret file name, and
    the directory name (the manifest records the cwd). Returns needles."""
    rng = random.Random(seed)
    body = bytearray(rng.randbytes(1 << 20))
    for at in range(0, len(body) - len(CANARY), 64 << 10):
        body[at : at + len(CANARY)] = CANARY
    root.mkdir(parents=True)
    (root / SECRET_NAME).write_bytes(body)
    (root / "plan.txt").write_text("the launch code is 0451-SESSIOND-TEXT-CANARY\n" * 50)
    (root / "small").mkdir()
    for i in range(20):
        (root / "small" / f"f{i}.bin").write_bytes(rng.randbytes(100_000))
    samples = [bytes(body[at : at + 48]) for at in range(1000, len(body) - 48, 97_000)]
    names = [SECRET_NAME.encode(), SECRET_DIR.encode()]
    return [CANARY, b"0451-SESSIOND-TEXT-CANARY", *names, *samples]


def stored_files(data: Path) -> dict[str, bytes]:
    root = data / "blobs"
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def leaks(data: Path, needles: list[bytes]) -> list[tuple[str, bytes]]:
    return [
        (name, needle[:24])
        for name, content in stored_files(data).items()
        for needle in needles
        if needle in content
    ]


async def file_locations(
    server: RunningServer, tenant: str, remote: WorkspaceRemote, name: bytes
) -> list[ChunkLocation]:
    """Where the chunks of top-level file ``name`` of the latest snapshot are."""
    ws = await remote.workspace()
    resp = await remote.get_manifest(snapshot_id=ws.latest_snapshot.snapshot_id)
    manifest = wf.parse_manifest(resp.manifest)
    [root] = [c async for c in remote.get_chunks([manifest.root_tree_id])]
    tree = wf.parse_tree(wf.open_chunk(ws.chunk_key, root.chunk_id, root.data, root.raw_length))
    node = next(n for n in tree.nodes if n.name == name)
    found = await server.meta.chunks.lookup(tenant, list(node.chunk_ids))
    return [found[c] for c in node.chunk_ids]


# --- what is stored -----------------------------------------------------------------


@pytest.mark.parametrize("encryption", [True, False])
async def test_stored_packs_and_manifests_hold_no_plaintext(
    tmp_path: Path, encryption: bool
) -> None:
    ws = tmp_path / SECRET_DIR
    needles = canary_workspace(ws)
    data = tmp_path / "data"
    async with serve(data, encryption=encryption) as server:
        _, token = await server.new_tenant()
        async with tenant_remote(server, token) as remote:
            await snapshot(remote, ws)
            out = tmp_path / "restored"
            await restore(remote, out)
    assert describe(out) == describe(ws)
    names = list(stored_files(data))
    assert any("/packs/" in n for n in names) and any("/manifests/" in n for n in names)
    found = leaks(data, needles)
    if encryption:
        assert found == []
    else:  # the control: with encryption off the same scan finds the plaintext
        assert {n for _, n in found} >= {CANARY[:24], SECRET_NAME.encode()[:24]}


async def test_round_trip_with_encryption_on_off_and_mixed(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    canary_workspace(ws)
    data = tmp_path / "data"
    async with serve(data) as server:  # on (the default)
        _, token = await server.new_tenant()
        async with tenant_remote(server, token) as remote:
            first = await snapshot(remote, ws)
            session_id = remote.session_id
    before = describe(ws)
    (ws / "plan.txt").write_text("changed while encryption was off\n")
    (ws / "new.bin").write_bytes(os.urandom(300_000))
    async with (
        serve(data, encryption=False) as server,
        tenant_remote(server, token, session_id) as remote,
    ):
        second = await snapshot(remote, ws)
        # Under the snapshotter's epoch: a restore elsewhere would fence it.
        epoch = (await remote.workspace()).lease_epoch
        await restore(remote, tmp_path / "off-first", snapshot_id=first.snapshot_id, epoch=epoch)
    after = describe(ws)
    (ws / "third.txt").write_text("and on again\n")
    async with serve(data) as server, tenant_remote(server, token, session_id) as remote:
        third = await snapshot(remote, ws)
        await restore(remote, tmp_path / "on-second", snapshot_id=second.snapshot_id)
        await restore(remote, tmp_path / "on-third", snapshot_id=third.snapshot_id)
    assert describe(tmp_path / "off-first") == before
    assert describe(tmp_path / "on-second") == after
    assert describe(tmp_path / "on-third") == describe(ws)
    # Both kinds of frame really are in the store.
    formats = {content[0] for name, content in stored_files(data).items() if "/manifests/" in name}
    assert formats == {0x00, 0x01}


async def test_a_retried_pack_is_the_same_object(tmp_path: Path) -> None:
    from tests.server.test_workspace_service import _chunk

    async with serve(tmp_path / "data") as server:
        _, token = await server.new_tenant()
        async with tenant_remote(server, token) as remote:
            key = (await remote.workspace()).chunk_key
            chunks = [_chunk(key, os.urandom(5000)), _chunk(key, b"text " * 1000)]
            first = await remote.put_pack(chunks)
            again = await remote.put_pack(chunks)
    assert first.stored == 2
    assert again.pack_id == first.pack_id and again.stored == 0


# --- tampering ----------------------------------------------------------------------


async def test_a_flipped_byte_in_a_stored_pack_fails_restore_naming_the_chunk(
    tmp_path: Path,
) -> None:
    ws = tmp_path / "ws"
    canary_workspace(ws)
    data = tmp_path / "data"
    async with serve(data) as server:
        tenant, token = await server.new_tenant()
        async with tenant_remote(server, token) as remote:
            await snapshot(remote, ws)
            [loc, *_] = await file_locations(server, tenant, remote, SECRET_NAME.encode())
            pack = data / "blobs" / loc.blob_key
            content = bytearray(pack.read_bytes())
            content[loc.offset + loc.length // 2] ^= 0x01
            pack.write_bytes(content)
            with pytest.raises(DataLoss) as err:
                await restore(remote, tmp_path / "out")
    assert loc.chunk_id.hex()[:16] in str(err.value)
    assert "does not authenticate" in str(err.value)


async def test_sealed_bytes_moved_under_another_id_fail(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    # Same size, incompressible: their stored frames are the same length.
    (ws / "a.bin").write_bytes(os.urandom(100_000))
    (ws / "b.bin").write_bytes(os.urandom(100_000))
    data = tmp_path / "data"
    async with serve(data) as server:
        tenant, token = await server.new_tenant()
        async with tenant_remote(server, token) as remote:
            await snapshot(remote, ws)
            [a] = await file_locations(server, tenant, remote, b"a.bin")
            [b] = await file_locations(server, tenant, remote, b"b.bin")
            assert a.length == b.length
            packs = {
                loc.blob_key: bytearray((data / "blobs" / loc.blob_key).read_bytes())
                for loc in (a, b)
            }
            sealed_a = bytes(packs[a.blob_key][a.offset : a.offset + a.length])
            sealed_b = bytes(packs[b.blob_key][b.offset : b.offset + b.length])
            packs[a.blob_key][a.offset : a.offset + a.length] = sealed_b
            packs[b.blob_key][b.offset : b.offset + b.length] = sealed_a
            for key, content in packs.items():
                (data / "blobs" / key).write_bytes(content)
            with pytest.raises(DataLoss) as err:
                await restore(remote, tmp_path / "out")
    assert a.chunk_id.hex()[:16] in str(err.value) or b.chunk_id.hex()[:16] in str(err.value)


async def test_two_tenants_share_neither_chunk_ids_nor_ciphertext(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    canary_workspace(ws)
    data = tmp_path / "data"
    async with serve(data) as server:
        sealed: dict[str, bytes] = {}
        ids: dict[str, list[bytes]] = {}
        for name in ("alice", "bob"):
            tenant, token = await server.new_tenant(name)
            async with tenant_remote(server, token) as remote:
                await snapshot(remote, ws)
                locs = await file_locations(server, tenant, remote, SECRET_NAME.encode())
            ids[name] = [loc.chunk_id for loc in locs]
            sealed[name] = b"".join(
                (data / "blobs" / loc.blob_key).read_bytes()[loc.offset : loc.offset + loc.length]
                for loc in locs
            )
    (alice,) = [k for k in ids if k.startswith("alice")]
    (bob,) = [k for k in ids if k.startswith("bob")]
    assert not set(ids[alice]) & set(ids[bob])
    windows = [
        sealed[alice][at : at + 32] for at in range(SEALED_OVERHEAD, len(sealed[alice]), 4099)
    ]
    assert not [w for w in windows if w in sealed[bob]]


# --- master keys ----------------------------------------------------------------------


async def test_a_wrong_master_key_at_restart_is_a_clear_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    k1, k2 = MasterKey.generate(), MasterKey.generate()
    async with serve(data, master_key=k1.key) as server:
        _, token = await server.new_tenant()
        async with tenant_remote(server, token) as remote:
            await snapshot(remote, _small_workspace(tmp_path / "ws"))
    cfg = ServerConfig(
        data_dir=data,
        database_url=f"sqlite:///{data / 'metadata.db'}",
        blob_url=f"file://{data / 'blobs'}",
        listen="127.0.0.1:0",
        auth="api-key",
        master_key=k2.key,
    )
    stores = await Stores.open(cfg)
    try:
        server2 = SessiondServer(cfg, stores, ApiKeyAuth(stores.meta), environ={})
        with pytest.raises(StoreOpenError) as err:
            await server2.start()
        assert err.value.store == "master-key"
        assert isinstance(err.value.cause, FailedPrecondition)
        assert k1.key_id in str(err.value) and k2.key_id in str(err.value)
        # The same at the level of one tenant's data key.
        with pytest.raises(FailedPrecondition):
            await Keyring(stores.meta.tenants, k2, encrypt=True).sealer("t1")
    finally:
        await stores.close()
    # The right key still works.
    async with serve(data, master_key=k1.key) as server, tenant_remote(server, token) as remote:
        await restore(remote, tmp_path / "out")


def _small_workspace(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "a.txt").write_text("hello\n")
    (root / "b.bin").write_bytes(os.urandom(50_000))
    return root


# --- crypto-shredding ---------------------------------------------------------------


def _rows(db: Path, tenant: str) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        out = {}
        for table in tables:
            if "tenant_id" in [c[1] for c in conn.execute(f"PRAGMA table_info({table})")]:
                (n,) = conn.execute(
                    f"SELECT count(*) FROM {table} WHERE tenant_id = ?", (tenant,)
                ).fetchone()
                if n:
                    out[table] = n
        return out


async def test_shredding_makes_data_unreadable_then_removes_objects_and_rows(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    ws = _small_workspace(tmp_path / "ws")
    async with serve(data) as server:
        victim, victim_token = await server.new_tenant("victim")
        _, keeper_token = await server.new_tenant("keeper")
        sessions = {}
        for token in (victim_token, keeper_token):
            async with tenant_remote(server, token) as remote:
                await snapshot(remote, ws)
                sessions[token] = remote.session_id
        # Step 1 alone, as if the deletion were interrupted right after it.
        await server.meta.tenants.shred(victim)
        # Any keyring (a server whose cache expired, a restarted one) now
        # finds no key, although the sealed objects are all still there.
        with pytest.raises(NotFound):
            await Keyring(server.meta.tenants, None, encrypt=False).sealer(victim)
    assert any(n.startswith(f"t/{victim}/") for n in stored_files(data))
    async with serve(data) as server:
        with pytest.raises(Unauthenticated):
            async with tenant_remote(server, victim_token) as remote:
                await remote.workspace()
        # Re-running the deletion finishes it.
        done = await Tenants(server.meta, server.server.stores.blobs).delete(victim)
        assert done.objects > 0
        assert not [n for n in stored_files(data) if n.startswith(f"t/{victim}/")]
        assert _rows(data / "metadata.db", victim) == {}
        with pytest.raises(NotFound):
            await Tenants(server.meta, server.server.stores.blobs).delete(victim)
        # Others are untouched.
        async with tenant_remote(server, keeper_token, sessions[keeper_token]) as remote:
            await restore(remote, tmp_path / "kept")
    assert describe(tmp_path / "kept") == describe(ws)


async def test_admin_tenants_rm(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with serve(data) as server:
        tenant, token = await server.new_tenant("gone")
        async with tenant_remote(server, token) as remote:
            await snapshot(remote, _small_workspace(tmp_path / "ws"))
    rm = sessiond_cmd("admin", "--data-dir", str(data), "tenants", "rm", tenant)
    proc = await asyncio.to_thread(_run, rm)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"deleted tenant {tenant} (")
    assert not [n for n in stored_files(data) if n.startswith(f"t/{tenant}/")]
    assert _rows(data / "metadata.db", tenant) == {}
    again = await asyncio.to_thread(_run, rm)
    assert again.returncode == 1 and "not found" in again.stderr


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=60)
