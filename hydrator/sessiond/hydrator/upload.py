"""The upload pipeline: chunks in, packs on the server out.

Producers (the threads that read files and build trees) hand every chunk
they cut to :meth:`Uploader.submit` together with its plaintext. The
uploader groups them into batches (``BATCH_BYTES`` or the server's
``max_chunks_per_request`` ids), asks MissingChunks once per batch, drops
what the server already has, compresses the rest in a thread pool and
appends the frames to a pack that is sent with PutPack once it reaches
``PACK_BYTES``. So a file is read once: its data waits in memory for the
MissingChunks answer instead of being read again. Trees go into packs of
their own (restic does the same), or at the end of the last pack: a
restore, and the server's check of a manifest, read them level by level,
and scattered among data chunks each level cost one ranged GET per tree.

Memory is bounded: plaintext waiting in batches plus frames waiting in packs
never exceed ``MAX_BUFFERED_BYTES`` (+ one submission); :meth:`submit` blocks
the producer until the pipeline drains. At most ``MAX_BATCHES_IN_FLIGHT``
MissingChunks calls and ``PACKS_IN_FLIGHT`` PutPacks run at a time: two packs
keep the server busy (one is stored in S3 and indexed while the next one
streams in and is verified) where one left it idle half of the time.

:meth:`finish` returns only after every pack is stored: the caller may then
write the manifest (packs → manifest → commit is the write order).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

from sessiond.api.v1 import workspace_pb2
from sessiond.client import workspace_format as wf
from sessiond.client.errors import Cancelled

from .progress import Progress
from .remote import PendingChunk, WorkspaceRemote

log = logging.getLogger(__name__)

BATCH_BYTES = 8 << 20
# Two 8 MiB packs in flight keep the server as busy as one of 16 MiB never
# did, for the same server memory (it holds a few copies of each pack).
PACK_BYTES = 8 << 20
MAX_BUFFERED_BYTES = 48 << 20
MAX_BATCHES_IN_FLIGHT = 2
PACKS_IN_FLIGHT = 2

DATA = workspace_pb2.CHUNK_KIND_DATA
TREE = workspace_pb2.CHUNK_KIND_TREE

_Item = tuple[bytes, int, bytes]  # (chunk_id, kind, plaintext)


@dataclass
class UploadStats:
    new_chunks: int = 0
    new_bytes: int = 0  # plaintext of the chunks sent
    uploaded_bytes: int = 0  # compressed bytes sent
    packs: int = 0


@dataclass
class _Open:
    """A pack being filled."""

    chunks: list[PendingChunk] = field(default_factory=list)
    size: int = 0

    def take(self) -> tuple[list[PendingChunk], int]:
        taken = self.chunks, self.size
        self.chunks, self.size = [], 0
        return taken


def _compress_all(items: Sequence[_Item]) -> list[PendingChunk]:
    return [PendingChunk(cid, kind, wf.compress(data), len(data)) for cid, kind, data in items]  # type: ignore[arg-type]


class Uploader:
    """See the module docstring. ``submit`` may be called from any thread
    except the event loop's; everything else runs on the loop."""

    def __init__(
        self,
        remote: WorkspaceRemote,
        compress_pool: Executor,
        *,
        max_ids_per_request: int = 10_000,
        pack_bytes: int = PACK_BYTES,
        progress: Progress | None = None,
    ) -> None:
        self._remote = remote
        self._pool = compress_pool
        self._loop = asyncio.get_running_loop()
        self._max_ids = max(1, max_ids_per_request)
        self._pack_target = pack_bytes
        self._progress = progress
        self.stats = UploadStats()
        # Guarded by _cond: producer-side state.
        self._cond = threading.Condition()
        self._buffered = 0
        self._batch: list[_Item] = []
        self._batch_bytes = 0
        self._seen: set[bytes] = set()
        self._error: BaseException | None = None
        self._closed = False
        # Loop-side state.
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_BATCHES_IN_FLIGHT)
        self._pack_lock = asyncio.Lock()
        self._open = {DATA: _Open(), TREE: _Open()}  # packs being filled, by kind
        self._uploads: set[asyncio.Task[None]] = set()
        self._upload_slots = asyncio.Semaphore(PACKS_IN_FLIGHT)

    # -- producer side (worker threads) --------------------------------------

    def submit(self, chunk_id: bytes, kind: int, data: bytes) -> None:
        """Queue one chunk (a duplicate of one already queued is dropped).
        Blocks while the pipeline holds too much; raises the pipeline's
        error if it failed."""
        self.submit_many(((chunk_id, kind, data),))

    def submit_many(self, items: Sequence[_Item]) -> None:
        """:meth:`submit` for several chunks at once (one lock round trip:
        the readers hand over a whole directory's small files together)."""
        with self._cond:
            while self._buffered >= MAX_BUFFERED_BYTES and not self._failed():
                self._cond.wait()
            if self._failed():
                raise self._error or Cancelled("upload cancelled")
            seen, batch = self._seen, self._batch
            for item in items:
                cid = item[0]
                if cid in seen:
                    continue
                seen.add(cid)
                size = len(item[2])
                self._buffered += size
                batch.append(item)
                self._batch_bytes += size
                if self._batch_bytes >= BATCH_BYTES or len(batch) >= self._max_ids:
                    self._loop.call_soon_threadsafe(self._spawn, self._take_batch())
                    batch = self._batch

    def _failed(self) -> bool:
        return self._error is not None or self._closed

    def _take_batch(self) -> list[_Item]:
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        return batch

    def _release(self, nbytes: int) -> None:
        with self._cond:
            self._buffered -= nbytes
            self._cond.notify_all()

    def _fail(self, exc: BaseException) -> None:
        with self._cond:
            if self._error is None:
                self._error = exc
            self._cond.notify_all()

    # -- loop side -----------------------------------------------------------

    def _spawn(self, batch: list[_Item]) -> None:
        task = asyncio.ensure_future(self._process(batch))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        # The error is kept in self._error (finish raises it): mark it seen.
        self._tasks.discard(task)
        self._uploads.discard(task)
        if not task.cancelled():
            task.exception()

    async def _process(self, batch: list[_Item]) -> None:
        try:
            async with self._slots:
                missing = await self._remote.missing([item[0] for item in batch])
                todo: list[_Item] = []
                raw = dropped = 0
                for item in batch:
                    if item[0] in missing:
                        todo.append(item)
                        raw += len(item[2])
                    else:
                        dropped += len(item[2])
                batch.clear()  # (the plaintext must not outlive its accounting)
                self._release(dropped)
                if not todo:
                    return
                frames = await self._loop.run_in_executor(self._pool, _compress_all, todo)
                todo.clear()
            framed = sum(len(f.frame) for f in frames)
            with self._cond:  # plaintext gone, frames held until their pack is sent
                self._buffered += framed - raw
                self._cond.notify_all()
            async with self._pack_lock:
                for f in frames:
                    pack = self._open[f.kind]
                    pack.chunks.append(f)
                    pack.size += len(f.frame)
                    if pack.size >= self._pack_target:
                        await self._ship(pack.take())
        except BaseException as exc:
            self._fail(exc)
            raise

    async def _ship(self, taken: tuple[list[PendingChunk], int]) -> None:
        """Send a pack once fewer than ``PACKS_IN_FLIGHT`` are being sent."""
        pack, size = taken
        if not pack:
            return
        await self._upload_slots.acquire()
        task = asyncio.ensure_future(self._put(pack, size))
        self._uploads.add(task)
        task.add_done_callback(self._done)

    async def _put(self, pack: list[PendingChunk], size: int) -> None:
        try:
            resp = await self._remote.put_pack(pack)
        except BaseException as exc:
            self._fail(exc)
            raise
        finally:
            self._upload_slots.release()
        self.stats.packs += 1
        self.stats.new_chunks += len(pack)
        self.stats.new_bytes += sum(c.raw_length for c in pack)
        self.stats.uploaded_bytes += size
        log.debug("pack %s: %d chunks, %d bytes", resp.pack_id, len(pack), size)
        if self._progress is not None:
            self._progress.uploaded(size)
        self._release(size)

    async def finish(self) -> UploadStats:
        """Flush everything queued; returns once every pack is stored.
        Producers must be done."""
        with self._cond:
            batch = self._take_batch()
        if batch:
            self._spawn(batch)
        while self._tasks:
            await asyncio.gather(*list(self._tasks))
        async with self._pack_lock:
            data, trees = self._open[DATA], self._open[TREE]
            if data.size + trees.size <= self._pack_target:
                chunks, size = data.take()
                more, extra = trees.take()
                await self._ship((chunks + more, size + extra))
            else:
                await self._ship(data.take())
                await self._ship(trees.take())
        while self._uploads:
            await asyncio.gather(*list(self._uploads))
        if self._error is not None:
            raise self._error
        return self.stats

    async def abort(self) -> None:
        """Stop: wake blocked producers (they raise) and cancel pending work."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        pending = [*self._tasks, *self._uploads]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
