"""The pieces of encryption at rest without a server: master keys (parsing,
files), data-key wrapping, the sealed frame format, and the keyring's data
key lifecycle and cache on a real metadata store."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sessiond.client import workspace_format as wf
from sessiond.client.errors import DataLoss, FailedPrecondition, InvalidArgument, NotFound
from sessiond.server.core.keyring import Keyring
from sessiond.server.core.sealing import (
    FORMAT_AES256GCM,
    FORMAT_PLAIN,
    SEALED_OVERHEAD,
    KeyUnavailable,
    MasterKey,
    Sealer,
    load_or_create_master_key,
    new_dek,
    read_master_key_file,
)
from sessiond.server.storage.metadata import MetadataStore
from sessiond.server.storage.metadata_url import open_metadata_store

RAW = bytes(range(32))


# --- master keys -----------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        RAW.hex(),
        RAW.hex().upper(),
        base64.b64encode(RAW).decode(),
        base64.urlsafe_b64encode(RAW).decode().rstrip("="),
        f"  {base64.b64encode(RAW).decode()}\n",
    ],
)
def test_master_key_parses_hex_and_base64(text: str) -> None:
    key = MasterKey.parse(text)
    assert key.key == RAW
    assert len(key.key_id) == 8
    assert key.key_id == MasterKey.from_bytes(RAW).key_id
    assert MasterKey.parse(key.encode()).key == RAW


@pytest.mark.parametrize(
    "text", ["", "nope", RAW.hex()[:-2], base64.b64encode(RAW + b"x").decode(), "zz" * 32]
)
def test_a_malformed_master_key_is_refused_without_echoing_it(text: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        MasterKey.parse(text)
    assert "32 bytes" in str(err.value)
    if text:
        assert text not in str(err.value)


def test_key_material_never_shows_in_repr() -> None:
    key = MasterKey.from_bytes(RAW)
    assert RAW.hex() not in repr(key) and str(RAW) not in repr(key)
    assert key.key_id in repr(key)


def test_master_key_files(tmp_path: Path) -> None:
    raw = tmp_path / "raw.key"
    raw.write_bytes(RAW)
    assert read_master_key_file(raw).key == RAW
    text = tmp_path / "text.key"
    text.write_text(RAW.hex() + "\n")
    assert read_master_key_file(text).key == RAW
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    with pytest.raises(InvalidArgument) as err:
        read_master_key_file(bad)
    assert str(bad) in str(err.value)
    with pytest.raises(InvalidArgument) as err:
        read_master_key_file(tmp_path / "missing.key")
    assert "missing.key" in str(err.value)


def test_the_embedded_default_key_is_generated_once_private(tmp_path: Path) -> None:
    path = tmp_path / "data" / "master.key"
    key, created = load_or_create_master_key(path)
    assert created
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again, created = load_or_create_master_key(path)
    assert not created and again.key == key.key
    assert [p.name for p in path.parent.iterdir()] == ["master.key"]  # no temp file left


def test_wrapped_data_keys_are_bound_to_tenant_and_master_key() -> None:
    k1, k2 = MasterKey.generate(), MasterKey.generate()
    dek = new_dek()
    wrapped = k1.wrap_dek("alice", dek)
    assert dek not in wrapped
    assert k1.unwrap_dek("alice", wrapped, k1.key_id) == dek
    with pytest.raises(FailedPrecondition) as err:  # the server runs with another key
        k2.unwrap_dek("alice", wrapped, k1.key_id)
    assert k1.key_id in str(err.value) and k2.key_id in str(err.value)
    with pytest.raises(DataLoss):  # copied to another tenant
        k1.unwrap_dek("bob", wrapped, k1.key_id)
    damaged = bytearray(wrapped)
    damaged[20] ^= 1
    with pytest.raises(DataLoss):
        k1.unwrap_dek("alice", bytes(damaged), k1.key_id)


# --- sealed frames ---------------------------------------------------------------


def _frame(data: bytes) -> tuple[bytes, bytes]:
    return wf.chunk_id(b"k" * 32, data), wf.compress(data)


def test_sealed_chunks_open_only_under_their_id_and_data_key() -> None:
    sealer = Sealer(new_dek(), encrypt=True)
    cid, frame = _frame(b"hello world " * 100)
    stored = sealer.seal(b"sessiond/chunk\0" + cid, frame)
    assert stored[0] == FORMAT_AES256GCM
    assert len(stored) == len(frame) + SEALED_OVERHEAD
    assert frame not in stored
    assert sealer.open_chunk(cid, stored) == frame
    other, _ = _frame(b"other")
    with pytest.raises(DataLoss) as err:  # moved under another id
        sealer.open_chunk(other, stored)
    assert other.hex()[:16] in str(err.value)
    with pytest.raises(DataLoss):  # another tenant's data key
        Sealer(new_dek(), encrypt=True).open_chunk(cid, stored)
    damaged = bytearray(stored)
    damaged[len(damaged) // 2] ^= 0x40
    with pytest.raises(DataLoss):
        sealer.open_chunk(cid, bytes(damaged))
    with pytest.raises(DataLoss):
        sealer.open_chunk(cid, stored[:20])


def test_sealing_is_deterministic_per_object_and_key() -> None:
    dek = new_dek()
    cid, frame = _frame(os.urandom(1000))
    a = Sealer(dek, encrypt=True).seal(b"a" + cid, frame)
    assert Sealer(dek, encrypt=True).seal(b"a" + cid, frame) == a
    assert Sealer(dek, encrypt=True).seal(b"b" + cid, frame)[1:13] != a[1:13]
    assert Sealer(dek, encrypt=True).seal(b"a" + cid, frame + b"x")[1:13] != a[1:13]


def test_plain_sealed_and_pre_sealing_frames_all_open() -> None:
    dek = new_dek()
    cid, frame = _frame(b"data")
    plain = Sealer(None, encrypt=False).seal(b"sessiond/chunk\0" + cid, frame)
    assert plain == bytes([FORMAT_PLAIN]) + frame
    sealed = Sealer(dek, encrypt=True).seal(b"sessiond/chunk\0" + cid, frame)
    for reader in (Sealer(dek, encrypt=True), Sealer(dek, encrypt=False)):
        assert reader.open_chunk(cid, plain) == frame
        assert reader.open_chunk(cid, sealed) == frame
        assert reader.open_chunk(cid, frame) == frame  # stored before sealing existed
    with pytest.raises(KeyUnavailable):
        Sealer(None, encrypt=False).open_chunk(cid, sealed)
    with pytest.raises(DataLoss) as err:
        Sealer(dek, encrypt=True).open_chunk(cid, b"\x07junk")
    assert "format 0x07" in str(err.value)


def test_manifests_are_sealed_under_their_id() -> None:
    sealer = Sealer(new_dek(), encrypt=True)
    manifest = b"\x08\x01" + b"manifest body"
    stored = sealer.seal_manifest("m" * 64, manifest)
    assert manifest not in stored
    assert sealer.open_manifest("m" * 64, stored) == manifest
    with pytest.raises(DataLoss):
        sealer.open_manifest("n" * 64, stored)
    assert sealer.open_manifest("m" * 64, manifest) == manifest  # pre-sealing object


# --- keyring ---------------------------------------------------------------------


@pytest.fixture
async def meta(tmp_path: Path) -> AsyncIterator[MetadataStore]:
    store = await open_metadata_store(f"sqlite:///{tmp_path / 'meta.db'}")
    try:
        await store.tenants.create("alice", "alice")
        await store.tenants.create("bob", "bob")
        yield store
    finally:
        await store.close()


async def test_a_data_key_is_made_on_first_use_and_stored_only_wrapped(
    meta: MetadataStore,
) -> None:
    master = MasterKey.generate()
    ring = Keyring(meta.tenants, master, encrypt=True)
    sealer = await ring.sealer("alice")
    wrapped, master_id = await meta.tenants.data_key("alice")
    assert wrapped is not None and master_id == master.key_id
    # Another replica (another keyring) gets the same key.
    other = await Keyring(meta.tenants, master, encrypt=True).sealer("alice")
    stored = sealer.seal_manifest("m", b"x")
    assert other.open_manifest("m", stored) == b"x"
    assert await meta.tenants.data_key("bob") == (None, None)  # only on use


async def test_encryption_off_makes_no_key_but_reads_sealed_data(meta: MetadataStore) -> None:
    master = MasterKey.generate()
    off = Keyring(meta.tenants, master, encrypt=False)
    assert not (await off.sealer("alice")).has_key
    assert await meta.tenants.data_key("alice") == (None, None)
    stored = (await Keyring(meta.tenants, master, encrypt=True).sealer("alice")).seal_manifest(
        "m", b"x"
    )
    # The cached keyless sealer cannot open it; a refresh can.
    with pytest.raises(KeyUnavailable):
        (await off.sealer("alice")).open_manifest("m", stored)
    assert (await off.sealer("alice", refresh=True)).open_manifest("m", stored) == b"x"
    with pytest.raises(ValueError):
        Keyring(meta.tenants, None, encrypt=True)


async def test_a_wrong_master_key_is_an_error_not_garbage(meta: MetadataStore) -> None:
    await Keyring(meta.tenants, MasterKey.generate(), encrypt=True).sealer("alice")
    with pytest.raises(FailedPrecondition) as err:
        await Keyring(meta.tenants, MasterKey.generate(), encrypt=True).sealer("alice")
    assert "wrong master key" in str(err.value)


async def test_a_shredded_tenant_is_forgotten_when_the_cache_expires(meta: MetadataStore) -> None:
    now = [0.0]
    ring = Keyring(meta.tenants, MasterKey.generate(), encrypt=True, clock=lambda: now[0])
    sealer = await ring.sealer("alice")
    await meta.tenants.shred("alice")
    assert await ring.sealer("alice") is sealer  # still cached
    now[0] += 31
    with pytest.raises(NotFound):
        await ring.sealer("alice")
