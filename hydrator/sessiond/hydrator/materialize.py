"""Materialize a snapshot tree into a fresh staging directory, safely.

Every tree and chunk is hostile input (the sandbox that uploaded it ran
arbitrary code). The contract:

* :func:`load_trees` fetches and validates every tree, level by level, and
  enforces the limits (entries, total bytes, depth, name length) *before*
  anything is written. Counting is by reference, so a tree that reuses one
  subtree a million times fails as fast as a flat one: ``ResourceExhausted``.
* :func:`materialize` creates ``<parent>/.<name>.sessiond-staging-<random>``
  and fills it with directory-fd-relative calls only: every component is
  opened with ``O_NOFOLLOW`` from its parent's fd and every file with
  ``O_CREAT|O_EXCL``, so nothing can be written through a symlink or outside
  the staging directory. Symlinks are created as data and never followed.
  Modes are masked to 0o777; mtimes are set (directories after their
  children). Each chunk is decompressed and verified against its id just
  before it is written (``DataLoss`` otherwise), with its size bounded by what
  is left of its file, so memory stays bounded whatever the tree claims.
  On any error the staging directory is removed and the error re-raised.

The chunk source is an async function ``ids -> [(zstd frame, raw length)]``
in request order; data chunks are fetched in batches of at most
``max_chunks_per_request`` distinct ids, a few batches in flight. A batch is
planned to hold about ``BATCH_BYTES`` of plaintext and at most
``BATCH_WORST_BYTES`` even if every chunk is as large as its file allows
(a one-chunk file's chunk is exactly its size): that, not the number of ids,
bounds memory, so small files travel thousands per request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import logging
import os
import secrets
import stat
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from sessiond.api.v1 import format_pb2, workspace_pb2
from sessiond.client import workspace_format as wf
from sessiond.client.errors import DataLoss, InvalidArgument, ResourceExhausted

log = logging.getLogger(__name__)

RawChunk = tuple[bytes, int]
ChunkSource = Callable[[Sequence[bytes]], Awaitable[Sequence[RawChunk]]]
ProgressFn = Callable[[int, int], None]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Estimated plaintext per data batch, and batches in flight while writing.
BATCH_BYTES = 16 << 20
BATCH_WORST_BYTES = 64 << 20
BATCHES_IN_FLIGHT = 3
# Distinct ids per GetChunks (the server's limit applies too).
MAX_IDS_PER_REQUEST = 4096
TREE_FETCHES_IN_FLIGHT = 4
_PROGRESS_STEP = 4 << 20
_HOLE_MIN = 4096


@dataclass(frozen=True, slots=True)
class Limits:
    """Restore limits; :meth:`from_proto` takes the server's, 0 = default."""

    max_files: int = 500_000  # entries of any type
    max_total_bytes: int = 64 << 30
    max_name_bytes: int = wf.MAX_NAME_BYTES
    max_depth: int = 256
    max_chunk_bytes: int = 16 << 20
    max_tree_bytes: int = 64 << 20
    max_chunks_per_request: int = 256

    @classmethod
    def from_proto(cls, p: workspace_pb2.WorkspaceLimits | None) -> Limits:
        d = cls()
        if p is None:
            return d

        def pick(value: int, default: int) -> int:
            return value if value > 0 else default

        return cls(
            max_files=pick(p.max_files, d.max_files),
            max_total_bytes=pick(p.max_total_bytes, d.max_total_bytes),
            max_name_bytes=min(pick(p.max_name_bytes, d.max_name_bytes), wf.MAX_NAME_BYTES),
            max_depth=pick(p.max_depth, d.max_depth),
            max_chunk_bytes=pick(p.max_chunk_bytes, d.max_chunk_bytes),
            max_chunks_per_request=min(pick(p.max_chunks_per_request, 256), MAX_IDS_PER_REQUEST),
        )


@dataclass
class TreeSet:
    """Validated trees reachable from ``root_id`` with reference-counted totals."""

    root_id: bytes
    trees: dict[bytes, list[format_pb2.Node]] = field(default_factory=dict)
    entries: int = 0
    files: int = 0
    total_bytes: int = 0
    skipped: int = 0


async def load_trees(
    source: ChunkSource,
    key: bytes,
    root_id: bytes,
    limits: Limits,
    *,
    skip_root_names: frozenset[bytes] = frozenset(),
) -> TreeSet:
    """Fetch, verify and validate every tree under ``root_id``.

    Raises ``InvalidArgument`` (a malformed tree), ``DataLoss`` (a tree that
    does not match its id) or ``ResourceExhausted`` (a limit) before anything
    is written. Root entries named in ``skip_root_names`` are left out.
    """
    ts = TreeSet(root_id)
    level: Counter[bytes] = Counter({root_id: 1})
    depth = 0
    while level:
        depth += 1
        if depth > limits.max_depth:
            raise ResourceExhausted(f"workspace is deeper than {limits.max_depth} levels")
        await _fetch_trees(source, key, [t for t in level if t not in ts.trees], ts, limits)
        below: Counter[bytes] = Counter()
        for tree_id, refs in level.items():
            nodes = ts.trees[tree_id]
            if depth == 1 and skip_root_names:
                kept = [n for n in nodes if n.name not in skip_root_names]
                ts.skipped += len(nodes) - len(kept)
                ts.trees[tree_id] = nodes = kept
            ts.entries += len(nodes) * refs
            if ts.entries > limits.max_files:
                raise ResourceExhausted(f"workspace has more than {limits.max_files} entries")
            for node in nodes:
                if len(node.name) > limits.max_name_bytes:
                    raise ResourceExhausted(
                        f"entry name of {len(node.name)} bytes exceeds {limits.max_name_bytes}"
                    )
                if node.type == wf.FILE:
                    ts.files += refs
                    ts.total_bytes += node.size * refs
                    if ts.total_bytes > limits.max_total_bytes:
                        raise ResourceExhausted(f"workspace exceeds {limits.max_total_bytes} bytes")
                elif node.type == wf.DIR:
                    below[node.subtree_id] += refs
        level = below
    return ts


async def _fetch_trees(
    source: ChunkSource, key: bytes, ids: list[bytes], ts: TreeSet, limits: Limits
) -> None:
    step = limits.max_chunks_per_request
    gate = asyncio.Semaphore(TREE_FETCHES_IN_FLIGHT)

    async def one(part: list[bytes]) -> None:
        async with gate:
            raw = await _fetch_checked(source, part)
        for tree_id, (frame, raw_length) in zip(part, raw, strict=True):
            if raw_length > limits.max_tree_bytes:
                raise ResourceExhausted(f"a tree of {raw_length} bytes exceeds the limit")
            budget = limits.max_files - ts.entries
            nodes = await asyncio.to_thread(_open_tree, key, tree_id, frame, raw_length, budget)
            ts.trees[tree_id] = nodes

    await asyncio.gather(*(one(ids[i : i + step]) for i in range(0, len(ids), step)))


def _open_tree(
    key: bytes, tree_id: bytes, frame: bytes, raw_length: int, budget: int
) -> list[format_pb2.Node]:
    data = wf.open_chunk(key, tree_id, frame, raw_length)
    # Counting first (a C parse) spares validating a million nodes in Python
    # only to refuse them.
    try:
        count = len(format_pb2.Tree.FromString(data).nodes)
    except Exception:
        count = 0  # parse_tree says what is wrong with it
    if count > budget:
        raise ResourceExhausted("workspace has more entries than the limit allows")
    return list(wf.parse_tree(data).nodes)


async def _fetch_checked(source: ChunkSource, ids: Sequence[bytes]) -> Sequence[RawChunk]:
    got = await source(ids)
    if len(got) != len(ids):
        raise DataLoss(f"asked for {len(ids)} chunks, got {len(got)}")
    return got


# -- the walk ------------------------------------------------------------------

ENTER, LEAVE, FILE, SYMLINK = range(4)


def walk(ts: TreeSet) -> Iterator[tuple[int, format_pb2.Node]]:
    """Depth-first events in name order: ENTER/LEAVE for directories, FILE,
    SYMLINK. The writer and the fetch planner both follow this order."""
    stack: list[tuple[Iterator[format_pb2.Node], format_pb2.Node | None]] = [
        (iter(ts.trees[ts.root_id]), None)
    ]
    while stack:
        nodes, parent = stack[-1]
        node = next(nodes, None)
        if node is None:
            stack.pop()
            if parent is not None:
                yield LEAVE, parent
        elif node.type == wf.DIR:
            yield ENTER, node
            stack.append((iter(ts.trees[node.subtree_id]), node))
        elif node.type == wf.FILE:
            yield FILE, node
        else:
            yield SYMLINK, node


def plan_batches(
    ts: TreeSet, max_ids: int, max_chunk_bytes: int = 16 << 20
) -> Iterator[tuple[list[bytes], int]]:
    """(distinct ids, chunk uses) per batch, covering every chunk use in walk
    order; a chunk used twice within a batch is fetched once. A batch closes
    at ``max_ids`` ids, at ``BATCH_BYTES`` of estimated plaintext (the
    file's size spread over its chunks) or at ``BATCH_WORST_BYTES`` of the
    most its chunks may hold (the file's size for a one-chunk file, else the
    smaller of it and ``max_chunk_bytes``)."""
    ids: dict[bytes, None] = {}
    uses = est = worst = 0
    for kind, node in walk(ts):
        if kind != FILE or not node.chunk_ids:
            continue
        chunk_ids = node.chunk_ids
        size = node.size
        per_chunk = -(-size // len(chunk_ids))
        most = size if len(chunk_ids) == 1 else min(size, max_chunk_bytes)
        for cid in chunk_ids:
            if cid not in ids:
                if ids and (
                    len(ids) >= max_ids or est >= BATCH_BYTES or worst + most > BATCH_WORST_BYTES
                ):
                    yield list(ids), uses
                    ids, uses, est, worst = {}, 0, 0, 0
                ids[cid] = None
                est += per_chunk
                worst += most
            uses += 1
    if uses:
        yield list(ids), uses


# -- writing -------------------------------------------------------------------


@dataclass
class MaterializeResult:
    """What :func:`materialize` created. ``records`` are (relative path, stat
    after the mtime was set, chunk ids) of every regular file."""

    staging_name: str
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    total_bytes: int = 0
    skipped: int = 0
    records: list[tuple[bytes, os.stat_result, tuple[bytes, ...]]] = field(default_factory=list)


async def materialize(
    source: ChunkSource,
    key: bytes,
    ts: TreeSet,
    parent_fd: int,
    name: str,
    limits: Limits,
    *,
    root_mode: int = 0o755,
    progress: ProgressFn | None = None,
) -> MaterializeResult:
    """Write ``ts`` into a new staging directory in ``parent_fd`` (named after
    ``name``); return what was written. On failure nothing is left behind."""
    staging = f".{name}.sessiond-staging-{secrets.token_hex(6)}"
    os.mkdir(staging, 0o700, dir_fd=parent_fd)
    loop = asyncio.get_running_loop()
    batches = plan_batches(ts, limits.max_chunks_per_request, limits.max_chunk_bytes)
    feed = _Feed(loop, source, key, batches)
    writer = _Writer(ts, feed, limits, staging, loop, progress)
    thread = asyncio.ensure_future(asyncio.to_thread(writer.run, parent_fd, root_mode))
    try:
        return await asyncio.shield(thread)
    except BaseException:
        writer.stop.set()
        feed.cancel()
        with contextlib.suppress(BaseException):
            await thread  # the thread must let go of its fds before cleanup
        await asyncio.to_thread(remove_tree, parent_fd, staging)
        raise


class _Feed:
    """Verified chunk plaintext in walk order for the writer thread; batches
    are fetched on the event loop, ``BATCHES_IN_FLIGHT`` ahead."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        source: ChunkSource,
        key: bytes,
        batches: Iterator[tuple[list[bytes], int]],
    ) -> None:
        self._loop, self._source, self._key, self._batches = loop, source, key, batches
        self._ahead: list[tuple[list[bytes], int, concurrent.futures.Future[Sequence[RawChunk]]]]
        self._ahead = []
        self._frames: dict[bytes, RawChunk] = {}
        self._verified: set[bytes] = set()
        self._uses_left = 0
        self._lock = threading.Lock()
        self._cancelled = False
        self._waiting: concurrent.futures.Future[Sequence[RawChunk]] | None = None

    def take(self, cid: bytes, max_raw: int) -> bytes:
        while self._uses_left == 0:
            self._advance()
        self._uses_left -= 1
        frame, raw_length = self._frames[cid]
        if raw_length > max_raw:
            raise DataLoss(f"chunk {cid.hex()[:16]}… is larger than its file allows")
        if cid in self._verified:
            return wf.decompress(frame, raw_length)  # same frame, already verified
        data = wf.open_chunk(self._key, cid, frame, raw_length)
        self._verified.add(cid)
        return data

    def _advance(self) -> None:
        with self._lock:
            if self._cancelled:
                raise asyncio.CancelledError
            while len(self._ahead) < BATCHES_IN_FLIGHT:
                batch = next(self._batches, None)
                if batch is None:
                    break
                coro = _fetch_checked(self._source, batch[0])
                fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
                self._ahead.append((batch[0], batch[1], fut))
            if not self._ahead:
                raise DataLoss("ran out of chunks")  # the plan and the walk disagree
            ids, uses, fut = self._ahead.pop(0)
            self._waiting = fut
        self._frames = dict(zip(ids, fut.result(), strict=True))
        self._verified = set()
        self._uses_left = uses

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            for _, _, fut in self._ahead:
                fut.cancel()
            if self._waiting is not None:
                self._waiting.cancel()  # unblocks the writer thread


class _Writer:
    def __init__(
        self,
        ts: TreeSet,
        feed: _Feed,
        limits: Limits,
        staging: str,
        loop: asyncio.AbstractEventLoop,
        progress: ProgressFn | None,
    ) -> None:
        self.ts, self.feed, self.limits, self.loop = ts, feed, limits, loop
        self.progress = progress
        self.result = MaterializeResult(staging, skipped=ts.skipped)
        self.stop = threading.Event()
        self._reported = 0
        self._umask = _umask()

    def run(self, parent_fd: int, root_mode: int) -> MaterializeResult:
        res = self.result
        root = os.open(res.staging_name, _DIR_FLAGS, dir_fd=parent_fd)
        stack: list[tuple[int, bytes]] = [(root, b"")]
        try:
            for kind, node in walk(self.ts):
                if self.stop.is_set():
                    raise asyncio.CancelledError
                dfd, rel = stack[-1]
                if kind == ENTER:
                    os.mkdir(node.name, 0o700, dir_fd=dfd)
                    fd = os.open(node.name, _DIR_FLAGS, dir_fd=dfd)
                    stack.append((fd, rel + node.name + b"/"))
                    res.dirs += 1
                elif kind == LEAVE:
                    stack.pop()
                    try:
                        # Mode last (a read-only dir would refuse its
                        # children), mtime after the children changed it.
                        os.fchmod(dfd, node.mode & wf.MODE_MASK)
                        os.utime(dfd, ns=(node.mtime_ns, node.mtime_ns))
                    finally:
                        os.close(dfd)
                elif kind == FILE:
                    self._file(dfd, rel, node)
                else:
                    self._symlink(dfd, node)
            os.fchmod(root, root_mode & wf.MODE_MASK)
            if self.progress is not None:
                self.loop.call_soon_threadsafe(self.progress, res.total_bytes, self.ts.total_bytes)
        except OSError as exc:
            raise _translate(exc) from None
        finally:
            for fd, _ in stack:
                os.close(fd)
        return res

    def _file(self, dfd: int, rel: bytes, node: format_pb2.Node) -> None:
        # (Finishing small files on a thread pool was measured: slower, the
        # GIL hand-offs cost more than the overlapped syscalls save.)
        # Fields are read once: every access of a bytes field is a copy.
        res = self.result
        name, size, chunk_ids = node.name, node.size, node.chunk_ids
        mode = node.mode & wf.MODE_MASK
        # Created with its final mode when the umask keeps it (the fd is
        # writable whatever the mode), saving an fchmod per file.
        direct = mode & self._umask == 0
        fd = os.open(name, _FILE_FLAGS, mode if direct else 0o600, dir_fd=dfd)
        if len(chunk_ids) == 1:
            try:
                data = self.feed.take(chunk_ids[0], min(size, self.limits.max_chunk_bytes))
            except BaseException:
                os.close(fd)
                raise
            if len(data) != size:
                os.close(fd)
                raise _size_mismatch(node, len(data))
            chunks: Iterable[bytes] = (data,)
        else:
            chunks = self._chunks(node)
        st = self._finish(fd, size, node.mtime_ns, None if direct else mode, chunks)
        res.records.append((rel + name, st, tuple(chunk_ids)))
        res.files += 1
        res.total_bytes += size
        if self.progress is not None and res.total_bytes - self._reported >= _PROGRESS_STEP:
            self._reported = res.total_bytes
            self.loop.call_soon_threadsafe(self.progress, res.total_bytes, self.ts.total_bytes)

    def _chunks(self, node: format_pb2.Node) -> Iterator[bytes]:
        """A large file's chunks, one at a time (bounded memory), each no
        larger than what is left of the file."""
        written = 0
        for cid in node.chunk_ids:
            data = self.feed.take(cid, min(node.size - written, self.limits.max_chunk_bytes))
            written += len(data)
            yield data
        if written != node.size:
            raise _size_mismatch(node, written)

    @staticmethod
    def _finish(
        fd: int, size: int, mtime_ns: int, chmod: int | None, chunks: Iterable[bytes]
    ) -> os.stat_result:
        """Write ``chunks`` into ``fd``, set the mode (``chmod``, if not set
        at creation) and mtime, close; the stat after the mtime was set."""
        try:
            hole = False
            for data in chunks:
                # A zero chunk becomes a hole: a sparse file stays sparse.
                hole = len(data) >= _HOLE_MIN and data[-1] == 0 and data.count(0) == len(data)
                if hole:
                    os.lseek(fd, len(data), os.SEEK_CUR)
                    continue
                n = os.write(fd, data)
                if n < len(data):
                    view = memoryview(data)[n:]
                    while view:
                        view = view[os.write(fd, view) :]
            if hole:
                os.ftruncate(fd, size)  # a trailing hole has no size until then
            if chmod is not None and chmod != 0o600:
                os.fchmod(fd, chmod)
            os.utime(fd, ns=(mtime_ns, mtime_ns))
            return os.fstat(fd)
        finally:
            os.close(fd)

    def _symlink(self, dfd: int, node: format_pb2.Node) -> None:
        os.symlink(node.link_target, node.name, dir_fd=dfd)
        os.utime(node.name, ns=(node.mtime_ns, node.mtime_ns), dir_fd=dfd, follow_symlinks=False)
        self.result.symlinks += 1


def _umask() -> int:
    """The process umask, read without changing it (``os.umask`` can only be
    read by setting it, which would race with other threads); 0o777 (every
    file gets an fchmod) if it cannot be read."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o777


def _size_mismatch(node: format_pb2.Node, got: int) -> DataLoss:
    return DataLoss(f"file {node.name[:60]!r} has {got} bytes of chunks, size says {node.size}")


def _translate(exc: OSError) -> Exception:
    """Errors of the local file system, in the project's terms."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE):
        return ResourceExhausted(f"cannot restore: {exc.strerror}")
    if exc.errno in (errno.ENAMETOOLONG, errno.EEXIST, errno.EINVAL, errno.ELOOP):
        return InvalidArgument(f"cannot restore an entry: {exc.strerror}")
    return exc


# -- removal and swapping ------------------------------------------------------


def remove_tree(parent_fd: int, name: str | bytes) -> None:
    """Delete ``name`` (in directory ``parent_fd``) and everything under it,
    never following a symlink; directories we own are made writable first so
    read-only ones can be emptied. A missing ``name`` is not an error."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=parent_fd)
        return
    # Iterative: a workspace can be nested deeper than Python's recursion limit.
    stack: list[tuple[int, str | bytes, int, list[str]]] = []
    fd = _open_for_removal(parent_fd, name)
    stack.append((parent_fd, name, fd, _empty_files(fd)))
    while stack:
        pfd, dname, fd, subdirs = stack[-1]
        if subdirs:
            sub = subdirs.pop()
            child = _open_for_removal(fd, sub)
            stack.append((fd, sub, child, _empty_files(child)))
            continue
        stack.pop()
        os.close(fd)
        os.rmdir(dname, dir_fd=pfd)


def _open_for_removal(parent_fd: int, name: str | bytes) -> int:
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    with contextlib.suppress(OSError):  # not ours: unlinking will say so
        os.fchmod(fd, 0o700)
    return fd


def _empty_files(fd: int) -> list[str]:
    """Unlink every non-directory in ``fd``; return the subdirectories."""
    subdirs = []
    with os.scandir(fd) as it:
        entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
    for entry_name, is_dir in entries:
        if is_dir:
            subdirs.append(entry_name)
        else:
            os.unlink(entry_name, dir_fd=fd)
    return subdirs


def swap_into_place(parent_fd: int, staging: str, name: str) -> None:
    """Replace ``name`` in ``parent_fd`` by the directory ``staging``: the
    current one is renamed aside, staging renamed in, then the old one is
    deleted. If the second rename fails the original is put back."""
    old: str | None = None
    try:
        os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        old = f".{name}.sessiond-old-{secrets.token_hex(6)}"
        os.rename(name, old, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
    except FileNotFoundError:
        old = None
    try:
        os.rename(staging, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
    except BaseException:
        if old is not None:
            os.rename(old, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        raise
    if old is not None:
        remove_tree(parent_fd, old)
