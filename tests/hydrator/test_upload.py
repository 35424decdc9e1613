"""The upload pipeline against a fake remote: packs in flight, tree packs,
back-pressure, errors."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from sessiond.api.v1 import workspace_pb2
from sessiond.client.errors import Unavailable
from sessiond.hydrator import upload
from sessiond.hydrator.remote import PendingChunk
from sessiond.hydrator.upload import DATA, TREE, Uploader


class SlowRemote:
    """Everything is missing; each PutPack takes ``delay`` seconds."""

    def __init__(self, delay: float = 0.05, fail: bool = False) -> None:
        self.delay, self.fail = delay, fail
        self.in_flight = self.most_in_flight = 0
        self.packs: list[list[PendingChunk]] = []

    async def missing(self, chunk_ids: Sequence[bytes]) -> set[bytes]:
        return set(chunk_ids)

    async def put_pack(self, chunks: Sequence[PendingChunk]) -> workspace_pb2.PutPackResponse:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            if self.fail:
                raise Unavailable("storage is down")
            self.packs.append(list(chunks))
            return workspace_pb2.PutPackResponse(pack_id=f"p{len(self.packs)}")
        finally:
            self.in_flight -= 1


async def run(remote: SlowRemote, items: list[tuple[bytes, int, bytes]], pack: int) -> Uploader:
    with ThreadPoolExecutor(2) as pool:
        up = Uploader(remote, pool, pack_bytes=pack)  # type: ignore[arg-type]
        await asyncio.to_thread(up.submit_many, items)
        await up.finish()
    return up


def chunks(n: int, size: int, kind: int = DATA) -> list[tuple[bytes, int, bytes]]:
    return [(os.urandom(32), kind, os.urandom(size)) for _ in range(n)]


async def test_two_packs_are_sent_at_once_and_all_are_stored() -> None:
    remote = SlowRemote()
    items = chunks(64, 16 << 10)
    up = await run(remote, items, pack=64 << 10)
    assert remote.most_in_flight == upload.PACKS_IN_FLIGHT == 2
    assert sorted(c.chunk_id for p in remote.packs for c in p) == sorted(i[0] for i in items)
    assert up.stats.new_chunks == 64 and up.stats.packs == len(remote.packs)


async def test_trees_close_the_last_pack_or_fill_their_own() -> None:
    remote = SlowRemote(delay=0)
    items = chunks(8, 1000) + chunks(3, 500, TREE) + chunks(4, 1000)
    await run(remote, items, pack=1 << 20)
    (only,) = remote.packs
    kinds = [c.kind for c in only]
    assert kinds == [DATA] * 12 + [TREE] * 3
    remote = SlowRemote(delay=0)
    await run(remote, chunks(40, 16 << 10, TREE) + chunks(40, 16 << 10), pack=128 << 10)
    assert all(len({c.kind for c in p}) == 1 for p in remote.packs[:-1])


async def test_a_failed_pack_fails_finish() -> None:
    with pytest.raises(Unavailable):
        await run(SlowRemote(fail=True), chunks(8, 16 << 10), pack=32 << 10)
