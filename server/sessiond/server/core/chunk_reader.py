"""Reading stored chunks back: ranged GETs on packs, coalesced and parallel.

Chunks requested together that sit close to each other in one pack are read
with one ranged GET; different packs are read concurrently. Memory is bounded
by the caller's window (``read_window``), never by the request size.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from sessiond.client.errors import DataLoss, NotFound

from ..storage.blob import BlobStore
from ..storage.records import ChunkLocation

log = logging.getLogger(__name__)

# Read the bytes between two wanted chunks instead of issuing another request
# when the gap is at most this many bytes.
COALESCE_GAP = 256 << 10
PARALLEL_READS = 8
WINDOW_BYTES = 16 << 20


@dataclass(frozen=True, slots=True)
class StoredChunk:
    location: ChunkLocation
    frame: bytes


class ChunkReader:
    def __init__(self, blobs: BlobStore, *, parallel: int = PARALLEL_READS) -> None:
        self._blobs = blobs
        self._sem = asyncio.Semaphore(parallel)

    async def read(self, locations: Sequence[ChunkLocation]) -> list[StoredChunk]:
        """The stored frames of ``locations``, in the same order."""
        by_pack: dict[str, list[int]] = {}
        for i, loc in enumerate(locations):
            by_pack.setdefault(loc.blob_key, []).append(i)
        frames: list[bytes | None] = [None] * len(locations)

        async def read_span(key: str, idxs: list[int]) -> None:
            start = locations[idxs[0]].offset
            end = max(locations[i].offset + locations[i].length for i in idxs)
            async with self._sem:
                try:
                    data = await self._blobs.get_range(key, start, end - start)
                except NotFound:
                    raise DataLoss(f"pack {key.rsplit('/', 1)[-1]} is missing") from None
            for i in idxs:
                loc = locations[i]
                frames[i] = data[loc.offset - start : loc.offset - start + loc.length]

        spans: list[tuple[str, list[int]]] = []
        for key, idxs in by_pack.items():
            idxs.sort(key=lambda i: locations[i].offset)
            current = [idxs[0]]
            end = locations[idxs[0]].offset + locations[idxs[0]].length
            for i in idxs[1:]:
                loc = locations[i]
                if loc.offset - end <= COALESCE_GAP:
                    current.append(i)
                    end = max(end, loc.offset + loc.length)
                else:
                    spans.append((key, current))
                    current = [i]
                    end = loc.offset + loc.length
            spans.append((key, current))
        await asyncio.gather(*(read_span(k, idxs) for k, idxs in spans))
        log.debug("read %d chunks with %d ranged GETs", len(locations), len(spans))
        out: list[StoredChunk] = []
        for loc, frame in zip(locations, frames, strict=True):
            assert frame is not None
            out.append(StoredChunk(location=loc, frame=frame))
        return out

    async def read_windows(
        self, locations: Sequence[ChunkLocation], window_bytes: int = WINDOW_BYTES
    ) -> AsyncIterator[list[StoredChunk]]:
        """:meth:`read` in windows of about ``window_bytes`` stored bytes, in
        order, with the next window fetched while the caller consumes one."""
        windows: list[list[ChunkLocation]] = []
        current: list[ChunkLocation] = []
        size = 0
        for loc in locations:
            current.append(loc)
            size += loc.length
            if size >= window_bytes:
                windows.append(current)
                current, size = [], 0
        if current:
            windows.append(current)
        if not windows:
            return
        pending = asyncio.ensure_future(self.read(windows[0]))
        try:
            for nxt in windows[1:]:
                done = await pending
                pending = asyncio.ensure_future(self.read(nxt))
                yield done
            yield await pending
        finally:
            if not pending.done():
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)
