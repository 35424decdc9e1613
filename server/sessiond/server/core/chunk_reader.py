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
# Per request in flight the server holds about two windows (the one being
# answered and the next being read) plus their unsealed copies.
WINDOW_BYTES = 8 << 20


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
        # Per-chunk work is kept to list lookups and one slice: a restore of
        # small files passes tens of thousands of chunks through here.
        offsets = [loc.offset for loc in locations]
        ends = [loc.offset + loc.length for loc in locations]
        by_pack: dict[str, list[int]] = {}
        for i, loc in enumerate(locations):
            by_pack.setdefault(loc.blob_key, []).append(i)
        frames: list[bytes] = [b""] * len(locations)

        async def read_span(key: str, idxs: list[int], start: int, end: int) -> None:
            async with self._sem:
                try:
                    data = await self._blobs.get_range(key, start, end - start)
                except NotFound:
                    raise DataLoss(f"pack {key.rsplit('/', 1)[-1]} is missing") from None
            for i in idxs:
                frames[i] = data[offsets[i] - start : ends[i] - start]

        spans: list[tuple[str, list[int], int, int]] = []
        for key, idxs in by_pack.items():
            idxs.sort(key=offsets.__getitem__)
            first = idxs[0]
            current, start, end = [first], offsets[first], ends[first]
            for i in idxs[1:]:
                if offsets[i] - end <= COALESCE_GAP:
                    current.append(i)
                    if ends[i] > end:
                        end = ends[i]
                else:
                    spans.append((key, current, start, end))
                    current, start, end = [i], offsets[i], ends[i]
            spans.append((key, current, start, end))
        await asyncio.gather(*(read_span(*span) for span in spans))
        log.debug("read %d chunks with %d ranged GETs", len(locations), len(spans))
        return [StoredChunk(loc, frame) for loc, frame in zip(locations, frames, strict=True)]

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
