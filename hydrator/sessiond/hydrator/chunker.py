"""Splitting file content into chunks and naming them.

Files under ``small_file`` bytes are one chunk. Larger files are cut with
FastCDC (min 256 KiB, avg 1 MiB, max 4 MiB by default) while streaming
through a fixed 8 MiB buffer per reader, so a 1 GB file never sits in memory
and a file truncated under us cannot SIGBUS the process the way an mmap would.

Why these sizes: an insert in the middle of a file changes only the chunk it
lands in (boundaries re-synchronise within one chunk), so a mid-file edit
costs ~1 MiB of upload on average and at most ``max`` (4 MiB, the issue's
budget) plus the chunk after it in the rare case the edit removes a cut
point. Averaging 1 MiB keeps the chunk index small (a 300 MB workspace of
large files is ~300 index rows, not 40k) and per-chunk costs (ids in
MissingChunks, pack headers, DB rows) negligible; the 256 KiB minimum keeps
re-synchronisation fast. restic uses 512 KiB/1 MiB/8 MiB for the same reasons;
we halve the maximum to bound the worst-case upload of an edit.

A chunk's id is ``workspace_format.chunk_id(key, data)`` (keyed BLAKE3 of
the plaintext). Hashing and zstd release the GIL for large buffers, so a
small thread pool chunks different files in parallel.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from fastcdc import fastcdc  # type: ignore[import-untyped]

from sessiond.client import workspace_format as wf

from .statcache import signature

SMALL_FILE_BYTES = 1 << 20
MIN_CHUNK_BYTES = 256 << 10
AVG_CHUNK_BYTES = 1 << 20
MAX_CHUNK_BYTES = 4 << 20
READ_BUFFER_BYTES = 8 << 20

# (chunk_id, plaintext) for every chunk cut; may block (back-pressure).
ChunkSink = Callable[[bytes, bytes], None]


@dataclass(frozen=True, slots=True)
class ChunkParams:
    min_size: int = MIN_CHUNK_BYTES
    avg_size: int = AVG_CHUNK_BYTES
    max_size: int = MAX_CHUNK_BYTES
    small_file: int = SMALL_FILE_BYTES

    @classmethod
    def for_limit(cls, max_chunk_bytes: int) -> ChunkParams:
        """Default sizes, scaled down if the server caps chunks lower."""
        if max_chunk_bytes >= MAX_CHUNK_BYTES:
            return cls()
        top = max(max_chunk_bytes, 4096)
        return cls(
            min_size=max(top // 16, 64),
            avg_size=max(top // 4, 256),
            max_size=top,
            small_file=min(SMALL_FILE_BYTES, top),
        )


@dataclass(frozen=True, slots=True)
class FileChunks:
    """What reading one file produced. ``size`` is the number of bytes
    actually read and hashed; ``st`` is the ``fstat`` after reading;
    ``stable`` is False if the file changed while it was read (its content
    may be torn: do not cache it)."""

    chunk_ids: tuple[bytes, ...]
    size: int
    st: os.stat_result
    stable: bool


def cut(data: memoryview, params: ChunkParams) -> Iterator[tuple[int, int]]:
    """(offset, length) of each content-defined chunk of ``data``."""
    if len(data) < params.small_file:
        if len(data):
            yield 0, len(data)
        return
    for c in fastcdc(
        data, min_size=params.min_size, avg_size=params.avg_size, max_size=params.max_size
    ):
        yield c.offset, c.length


def chunk_bytes(data: bytes, key: bytes, params: ChunkParams, sink: ChunkSink) -> list[bytes]:
    """Chunk an in-memory buffer; the ids in order."""
    ids = []
    view = memoryview(data)
    for off, length in cut(view, params):
        piece = bytes(view[off : off + length])
        cid = wf.chunk_id(key, piece)
        sink(cid, piece)
        ids.append(cid)
    return ids


def chunk_file(path: bytes, key: bytes, params: ChunkParams, sink: ChunkSink) -> FileChunks | None:
    """Read and chunk one regular file, never following a symlink. None if
    it vanished or is no longer a regular file."""
    try:
        # O_NONBLOCK: if the entry became a fifo, opening must not hang.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in _GONE:
            return None
        raise
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            return None
        first = _read_small(fd, params.small_file, before.st_size)
        if len(first) < params.small_file:
            ids: list[bytes] = []
            if first:
                cid = wf.chunk_id(key, first)
                sink(cid, first)
                ids.append(cid)
            size = len(first)
        else:
            with io.FileIO(fd, "rb", closefd=False) as f:
                ids, size = _chunk_stream(f, first, key, params, sink)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    stable = signature(before) == signature(after) and size == after.st_size
    return FileChunks(tuple(ids), size, after, stable)


def _read_small(fd: int, limit: int, expected: int) -> bytes:
    """Up to ``limit`` bytes: one ``read`` when the file holds what ``fstat``
    said (a small file costs no second read to see EOF: if it changed
    meanwhile, the stat after reading says so), else reads until EOF."""
    data = os.read(fd, limit)
    if len(data) >= limit or len(data) >= expected:
        return data
    parts, n = [data], len(data)
    while n < limit:
        part = os.read(fd, limit - n)
        if not part:
            break
        parts.append(part)
        n += len(part)
    return b"".join(parts)


# Vanished, or no longer a regular file (ELOOP: became a symlink; ENXIO: a
# socket; EISDIR: a directory).
_GONE = {errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENXIO, errno.EISDIR}


def _chunk_stream(
    f: io.FileIO, first: bytes, key: bytes, params: ChunkParams, sink: ChunkSink
) -> tuple[list[bytes], int]:
    # A cut point depends only on the max_size bytes after the chunk start,
    # so cutting a window that holds >= max_size bytes past each start (or
    # the end of the file) gives exactly the cuts of the whole file.
    buf = bytearray(max(READ_BUFFER_BYTES, 2 * params.max_size, len(first)))
    mv = memoryview(buf)
    mv[: len(first)] = first
    filled, eof, total = len(first), False, 0
    ids: list[bytes] = []
    while True:
        while filled < len(buf) and not eof:
            n = f.readinto(mv[filled:])
            if not n:
                eof = True
            else:
                filled += n
        start = 0
        window = mv[:filled]
        for c in fastcdc(
            window,
            min_size=params.min_size,
            avg_size=params.avg_size,
            max_size=params.max_size,
        ):
            off, length = c.offset, c.length
            if not eof and filled - off < params.max_size:
                break
            piece = bytes(window[off : off + length])
            cid = wf.chunk_id(key, piece)
            sink(cid, piece)
            ids.append(cid)
            start = off + length
        total += start
        if eof and start >= filled:
            return ids, total
        rest = filled - start
        mv[:rest] = mv[start:filled]  # (memoryview assignment is a memmove)
        filled = rest
