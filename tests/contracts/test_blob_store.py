"""The BlobStore contract, run against every backend.

Adding a backend = adding a ``blob_store`` fixture parameter. Every test here
checks a promise made in the docstrings of ``sessiond.server.storage.blob``;
backend-specific behaviour lives in ``tests/storage/``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sessiond.client.errors import (
    AlreadyExists,
    DataLoss,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from sessiond.server.storage.blob import BlobInfo, BlobStore
from sessiond.server.storage.blob_url import open_blob_store

MiB = 1 << 20


@pytest.fixture
async def local_blob_store(tmp_path: Path) -> AsyncIterator[BlobStore]:
    store = await open_blob_store(str(tmp_path / "blobs"))
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture(params=["local", "s3"])
def blob_store(request: pytest.FixtureRequest) -> BlobStore:
    store = request.getfixturevalue(f"{request.param}_blob_store")
    assert isinstance(store, BlobStore)
    return store


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


async def pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def collect(it: AsyncIterator[bytes]) -> list[bytes]:
    return [piece async for piece in it]


async def keys(store: BlobStore, prefix: str = "") -> list[str]:
    return [info.key async for info in store.list(prefix)]


# -- put / get --------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 20 * MiB], ids=["empty", "1B", "20MiB"])
async def test_put_get_round_trip(blob_store: BlobStore, size: int) -> None:
    data = payload(size)
    await blob_store.put("objects/k", data)
    assert await blob_store.get("objects/k") == data
    assert await blob_store.stat("objects/k") == BlobInfo("objects/k", size)


async def test_put_overwrites(blob_store: BlobStore) -> None:
    await blob_store.put("k", b"first")
    await blob_store.put("k", b"second, longer")
    assert await blob_store.get("k") == b"second, longer"
    await blob_store.put("k", b"3")
    assert await blob_store.get("k") == b"3"


async def test_put_if_absent(blob_store: BlobStore) -> None:
    await blob_store.put("k", b"original", if_absent=True)
    with pytest.raises(AlreadyExists):
        await blob_store.put("k", b"replacement", if_absent=True)
    assert await blob_store.get("k") == b"original"


async def test_put_if_absent_race_has_one_winner(blob_store: BlobStore) -> None:
    datas = [payload(64 * 1024, seed=i) for i in range(8)]
    results = await asyncio.gather(
        *(blob_store.put("race", d, if_absent=True) for d in datas), return_exceptions=True
    )
    winners = [i for i, r in enumerate(results) if r is None]
    assert len(winners) == 1, results
    assert all(isinstance(r, AlreadyExists) for r in results if r is not None), results
    assert await blob_store.get("race") == datas[winners[0]]


async def test_concurrent_puts_and_gets(blob_store: BlobStore) -> None:
    datas = {f"c/{i:02d}": payload(1000 + i, seed=i) for i in range(32)}
    await asyncio.gather(*(blob_store.put(k, d) for k, d in datas.items()))
    got = await asyncio.gather(*(blob_store.get(k) for k in datas))
    assert dict(zip(datas, got, strict=True)) == datas


# -- put_stream ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "piece"),
    [(0, 1), (5, 2), (8 * MiB, MiB), (8 * MiB + 1, MiB), (20 * MiB, MiB), (20 * MiB, 3 * MiB + 7)],
    ids=["empty", "small", "8MiB", "8MiB+1", "20MiB-1MiB-pieces", "20MiB-odd-pieces"],
)
async def test_put_stream(blob_store: BlobStore, size: int, piece: int) -> None:
    data = payload(size)
    assert await blob_store.put_stream("s/k", pieces(data, piece)) == size
    assert await blob_store.stat("s/k") == BlobInfo("s/k", size)
    assert await blob_store.get("s/k") == data


async def test_put_stream_accepts_empty_pieces(blob_store: BlobStore) -> None:
    async def gen() -> AsyncIterator[bytes]:
        for p in (b"", b"ab", b"", b"cd", b""):
            yield p

    assert await blob_store.put_stream("k", gen()) == 4
    assert await blob_store.get("k") == b"abcd"


class Boom(Exception):
    pass


@pytest.mark.parametrize("before", [0, 100, 9 * MiB], ids=["at-once", "small", "past-a-part"])
async def test_put_stream_failing_iterator_leaves_nothing(
    blob_store: BlobStore, before: int
) -> None:
    async def gen() -> AsyncIterator[bytes]:
        async for p in pieces(payload(before), MiB):
            yield p
        raise Boom

    await blob_store.put("old", b"previous")
    for key in ("new", "old"):
        with pytest.raises(Boom):
            await blob_store.put_stream(key, gen())
    assert not await blob_store.exists("new")
    assert await blob_store.get("old") == b"previous"
    assert await keys(blob_store) == ["old"]


# -- reads ----------------------------------------------------------------------


async def test_get_range(blob_store: BlobStore) -> None:
    data = payload(1000)
    await blob_store.put("r", data)
    for offset, length in [(0, 10), (500, 123), (990, 10), (0, 1000), (7, 0), (1000, 0)]:
        assert await blob_store.get_range("r", offset, length) == data[offset : offset + length]


@pytest.mark.parametrize(("offset", "length"), [(995, 10), (1000, 1), (1001, 0), (5000, 10)])
async def test_get_range_past_end_is_data_loss(
    blob_store: BlobStore, offset: int, length: int
) -> None:
    await blob_store.put("r", payload(1000))
    with pytest.raises(DataLoss):
        await blob_store.get_range("r", offset, length)


@pytest.mark.parametrize(("offset", "length"), [(-1, 10), (0, -1), (-5, -5)])
async def test_get_range_negative_is_invalid(
    blob_store: BlobStore, offset: int, length: int
) -> None:
    await blob_store.put("r", payload(100))
    with pytest.raises(InvalidArgument):
        await blob_store.get_range("r", offset, length)


@pytest.mark.parametrize(("size", "chunk"), [(0, MiB), (10, 3), (2 * MiB + 5, MiB), (3 * MiB, MiB)])
async def test_iter_chunks(blob_store: BlobStore, size: int, chunk: int) -> None:
    data = payload(size)
    await blob_store.put("big", data)
    got = await collect(blob_store.iter_chunks("big", chunk))
    assert all(0 < len(p) <= chunk for p in got)
    assert b"".join(got) == data


async def test_iter_chunks_stops_early(blob_store: BlobStore) -> None:
    await blob_store.put("big", payload(4 * MiB))
    it = blob_store.iter_chunks("big", MiB)
    async for first in it:
        assert len(first) == MiB
        break
    await it.aclose()  # type: ignore[attr-defined]
    assert await blob_store.get_range("big", 0, 4) == payload(4 * MiB)[:4]


async def test_stat_and_exists(blob_store: BlobStore) -> None:
    assert not await blob_store.exists("a/b")
    await blob_store.put("a/b", b"12345")
    assert await blob_store.exists("a/b")
    assert await blob_store.stat("a/b") == BlobInfo("a/b", 5)
    assert not await blob_store.exists("a")  # a prefix is not an object


async def test_missing_key_is_not_found(blob_store: BlobStore) -> None:
    await blob_store.put("present/x", b"x")
    for key in ("absent", "present/y", "present/x/deeper"):
        with pytest.raises(NotFound):
            await blob_store.get(key)
        with pytest.raises(NotFound):
            await blob_store.get_range(key, 0, 1)
        with pytest.raises(NotFound):
            await blob_store.get_range(key, 0, 0)
        with pytest.raises(NotFound):
            await blob_store.stat(key)
        with pytest.raises(NotFound):
            await collect(blob_store.iter_chunks(key))
        assert not await blob_store.exists(key)


async def test_delete_is_idempotent(blob_store: BlobStore) -> None:
    await blob_store.put("d/k", b"x")
    await blob_store.delete("d/k")
    assert not await blob_store.exists("d/k")
    await blob_store.delete("d/k")
    await blob_store.delete("never/was")
    with pytest.raises(NotFound):
        await blob_store.get("d/k")


# -- list -----------------------------------------------------------------------

# Sibling components never extend one another with '-' or '.', where
# backends may legitimately differ in order (see BlobStore.list).
LISTED = [
    "manifests/m1",
    "manifests/m2",
    "packs/00/aa",
    "packs/00/bb",
    "packs/01/aa",
    "packs/1f/00",
    "z",
]


async def test_list_in_key_order(blob_store: BlobStore) -> None:
    for i, key in enumerate(reversed(LISTED)):
        await blob_store.put(key, payload(i, seed=i))
    infos = [info async for info in blob_store.list()]
    assert [i.key for i in infos] == LISTED
    assert {i.key: i.size for i in infos} == {k: len(LISTED) - 1 - n for n, k in enumerate(LISTED)}


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("", LISTED),
        ("packs/", LISTED[2:6]),
        ("packs", LISTED[2:6]),
        ("packs/0", LISTED[2:5]),
        ("packs/00/", LISTED[2:4]),
        ("packs/00/a", LISTED[2:3]),
        ("packs/00/aa", LISTED[2:3]),
        ("manifests/m", LISTED[:2]),
        ("z", ["z"]),
        ("nothing/", []),
        ("packs/2", []),
    ],
)
async def test_list_prefix(blob_store: BlobStore, prefix: str, expected: list[str]) -> None:
    for key in LISTED:
        await blob_store.put(key, b"x")
    assert await keys(blob_store, prefix) == expected


async def test_list_names_each_object_once(blob_store: BlobStore) -> None:
    names = ["a-c", "a.d", "a/b", "a/b-c/d", "a/b.e", "a0", "A", "_"]
    for key in names:
        await blob_store.put(key, b"x")
    listed = await keys(blob_store)
    assert sorted(listed) == sorted(names)
    assert await keys(blob_store, "a/") == sorted(
        listed_key for listed_key in names if listed_key.startswith("a/")
    )


async def test_list_empty_store(blob_store: BlobStore) -> None:
    assert await keys(blob_store) == []


# -- keys, lifecycle -----------------------------------------------------------

BAD_KEYS = [
    "",
    "../x",
    "a/../b",
    "/abs",
    "a//b",
    "a/./b",
    "a/",
    ".",
    "with space",
    "ü",
    "tab\t",
    "a\\b",
    "x" * 2000,
]


def calls(store: BlobStore, key: str) -> list[object]:
    """A coroutine or async iterator per method touching ``key``."""
    return [
        store.put(key, b"x"),
        store.put(key, b"x", if_absent=True),
        store.put_stream(key, pieces(b"x", 1)),
        store.get(key),
        store.get_range(key, 0, 1),
        store.stat(key),
        store.exists(key),
        store.delete(key),
    ]


async def expect_invalid(store: BlobStore, key: str) -> None:
    for call in calls(store, key):
        with pytest.raises(InvalidArgument):
            await call  # type: ignore[misc]
    with pytest.raises(InvalidArgument):
        await collect(store.iter_chunks(key))


@pytest.mark.parametrize("key", BAD_KEYS, ids=lambda k: repr(k)[:20])
async def test_malformed_key_is_invalid_argument(blob_store: BlobStore, key: str) -> None:
    await expect_invalid(blob_store, key)
    assert await keys(blob_store) == []


@pytest.mark.parametrize(
    "prefix",
    [
        "../",
        "/abs",
        "a/./",
        "ü",
        "with space",
        "a//",
    ],
)
async def test_malformed_list_prefix_is_invalid_argument(
    blob_store: BlobStore, prefix: str
) -> None:
    with pytest.raises(InvalidArgument):
        await keys(blob_store, prefix)


async def test_keys_are_validated_before_any_io(blob_store: BlobStore) -> None:
    # A closed store fails every I/O with Unavailable; a malformed key must
    # still be InvalidArgument, so validation happened first.
    await blob_store.close()
    with pytest.raises(Unavailable):
        await blob_store.get("fine")
    for key in ("../x", "a//b", ""):
        await expect_invalid(blob_store, key)
    with pytest.raises(InvalidArgument):
        await keys(blob_store, "../")


async def test_ping(blob_store: BlobStore) -> None:
    await blob_store.ping()


async def test_close_is_idempotent_and_final(blob_store: BlobStore) -> None:
    await blob_store.put("k", b"x")
    await blob_store.close()
    await blob_store.close()
    with pytest.raises(Unavailable):
        await blob_store.get("k")
    with pytest.raises(Unavailable):
        await blob_store.put("k", b"y")
    with pytest.raises(Unavailable):
        await blob_store.ping()
    with pytest.raises(Unavailable):
        await keys(blob_store)
