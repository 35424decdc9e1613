"""Building the trees of a snapshot, bottom-up, doing as little as possible.

Two phases, both on one worker thread (never the event loop):

1. **visit** (depth-first): scan each directory that may have changed;
   submit every file the stat cache does not vouch for to the reader pool
   (which hashes it and feeds its chunks to the :class:`Uploader` as it
   goes); decide per directory whether it is *ready* — its fingerprint
   (entries' names + stat signatures + subtree ids, see
   :func:`fingerprint`) equals the cached one, so its cached tree id holds
   without building a node — or *pending* (to be built).
2. **build** (post-order over the pending directories): wait for the files'
   chunk ids, build the nodes, serialize the tree, name it, and submit it as
   a TREE chunk unless the cache knows the server holds it.

With ``dirty`` (from inotify) only the dirty directories are scanned; their
ancestors are rebuilt from the entries remembered in ``memo`` and every
other subtree is taken whole from the cache without a single ``stat``.
Without it every directory is scanned (one ``lstat`` per entry) and the
fingerprints skip the rest.

Nothing is written to the cache here: the :class:`BuildResult` is applied
with :meth:`BuildResult.apply` only after the snapshot is committed.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field

import blake3

from sessiond.api.v1 import format_pb2
from sessiond.client import workspace_format as wf
from sessiond.client.errors import FailedPrecondition

from .chunker import ChunkParams, FileChunks, chunk_file
from .progress import Progress
from .statcache import DirRecord, FileRecord, StatCache, Totals, signature
from .upload import DATA, TREE, Uploader
from .walk import Budget, Entry, Excludes, Limits, WalkReport, join, scan_dir

log = logging.getLogger(__name__)

# A file modified within this window before the scan may be modified again
# within the same timestamp tick without its stat changing ("racily clean",
# as in git): it is not cached, so the next snapshot reads it again.
RACY_WINDOW_NS = 2_000_000_000

_FP = struct.Struct("<HBIqqQq")
_EMPTY_TOTALS: Totals = (0, 0, 0, 0)
# Small files are read in groups, one reader-pool task (and one hand-over of
# their chunks to the uploader) per group: a task per file cost more in
# futures and thread wake-ups than reading the file.
GROUP_FILES = 128
GROUP_BYTES = 2 << 20


def fingerprint(entries: list[Entry], subtree_ids: dict[bytes, bytes]) -> bytes:
    """What a directory's tree depends on, hashed: every entry's name, type
    and stat signature (mode, size, mtime, inode, ctime), each subdirectory's
    tree id and each symlink's target."""
    parts: list[bytes] = []
    for e in entries:
        st = e.st
        parts.append(
            _FP.pack(
                len(e.name),
                e.type,
                st.st_mode,
                st.st_size,
                st.st_mtime_ns,
                st.st_ino,
                st.st_ctime_ns,
            )
        )
        parts.append(e.name)
        if e.type == wf.DIR:
            parts.append(subtree_ids[e.name])
        elif e.type == wf.SYMLINK:
            parts.append(struct.pack("<I", len(e.target)) + e.target)
    return blake3.blake3(b"".join(parts)).digest()


@dataclass(slots=True)
class Ready:
    tree_id: bytes
    totals: Totals


@dataclass(slots=True)
class _Slot:
    """A file read as part of a group: ``future`` gives the group's results."""

    future: Future[list[FileChunks | None]]
    index: int


@dataclass(slots=True)
class _Task:
    rel: bytes
    path: bytes
    entries: list[Entry]
    children: dict[bytes, Ready | _Task | None]
    files: dict[bytes, tuple[bytes, ...] | Future[FileChunks | None] | _Slot]
    totals: Totals
    racy: bool
    tree_id: bytes = b""


@dataclass
class BuildResult:
    """What a build learned, for the cache after the commit."""

    records: dict[bytes, DirRecord] = field(default_factory=dict)
    memo: dict[bytes, list[Entry]] = field(default_factory=dict)
    dropped: set[bytes] = field(default_factory=set)
    visited: set[bytes] | None = None  # full walks: every directory seen
    trees_built: int = 0
    files_read: int = 0

    def apply(self, cache: StatCache, memo: dict[bytes, list[Entry]] | None = None) -> None:
        for rel in self.dropped:
            cache.drop_subtree(rel)
            if memo is not None:
                prefix = rel + b"/"
                for key in [k for k in memo if k == rel or k.startswith(prefix)]:
                    del memo[key]
        if self.visited is not None:
            for rel in [r for r in cache.dir_paths() if r not in self.visited]:
                cache.drop_subtree(rel)
            if memo is not None:
                for rel in [r for r in memo if r not in self.visited]:
                    del memo[rel]
        for rel, record in self.records.items():
            cache.put_dir(rel, record)
        if memo is not None:
            memo.update(self.memo)


class TreeBuilder:
    """Builds the trees of one root (the working directory, or a part of the
    Claude config dir). Not thread-safe: one thread visits and builds."""

    def __init__(
        self,
        *,
        key: bytes,
        cache: StatCache,
        uploader: Uploader,
        read_pool: Executor,
        limits: Limits,
        params: ChunkParams,
        now_ns: int,
        excludes: Excludes | None = None,
        report: WalkReport | None = None,
        progress: Progress | None = None,
        dirty: set[bytes] | None = None,
        memo: dict[bytes, list[Entry]] | None = None,
        on_scan: Callable[[bytes, bytes], None] | None = None,
    ) -> None:
        self.key = key
        self.cache = cache
        self.uploader = uploader
        self.pool = read_pool
        self.limits = limits
        self.params = params
        self.excludes = excludes or Excludes()
        self.report = report or WalkReport()
        self.progress = progress or Progress()
        self.budget = Budget(limits)
        self.racy_cutoff = now_ns - RACY_WINDOW_NS
        self.memo = memo or {}
        self.on_scan = on_scan
        self._need: set[bytes] | None = None
        self._dirty = dirty or set()
        if dirty is not None:
            self._need = {b""}
            for rel in dirty:
                parts = rel.split(b"/") if rel else []
                for i in range(len(parts) + 1):
                    self._need.add(b"/".join(parts[:i]))
        self._tasks: list[_Task] = []
        self._futures: list[Future[FileChunks | None]] = []
        self._groups: list[Future[list[FileChunks | None]]] = []
        self._group: list[tuple[bytes, bytes]] = []  # (path, relpath) not yet submitted
        self._group_slots: list[tuple[_Task, bytes]] = []
        self._group_bytes = 0
        self._files_read = 0
        self.result = BuildResult(visited=None if dirty is not None else set())

    # -- phase 1 -------------------------------------------------------------

    def visit(self, path: bytes, rel: bytes = b"", depth: int = 0) -> Ready | _Task:
        """Visit a root (or the part of it at ``rel``)."""
        node = self._visit(path, rel, depth)
        self._flush_group()
        if node is None:
            raise FailedPrecondition(f"directory {path.decode(errors='replace')} vanished")
        return node

    def _visit(self, path: bytes, rel: bytes, depth: int) -> Ready | _Task | None:
        rec = self.cache.dir_record(rel)
        entries = self.memo.get(rel)
        if self._need is not None and rel not in self._need and rec and rec.tree_id and entries:
            # Clean subtree (inotify saw nothing below): taken whole, no stat.
            t = rec.totals
            self.budget.add(t[0] + t[1] + t[2], t[3], rel)
            return Ready(rec.tree_id, rec.totals)
        if self.result.visited is not None:
            self.result.visited.add(rel)
        if entries is None or self._need is None or rel in self._dirty:
            if self.on_scan is not None:
                self.on_scan(rel, path)
            scanned = scan_dir(
                path, rel, depth, excludes=self.excludes, limits=self.limits, report=self.report
            )
            if scanned is None:
                return None
            entries = scanned
            self.result.memo[rel] = entries
            self.progress.scanned(len(entries))
            old = self.memo.get(rel)
            if old is not None:
                now = {e.name for e in entries if e.type == wf.DIR}
                self.result.dropped.update(
                    join(rel, e.name) for e in old if e.type == wf.DIR and e.name not in now
                )
        children: dict[bytes, Ready | _Task | None] = {}
        task = _Task(rel, path, entries, children, {}, _EMPTY_TOTALS, False)
        known = rec.files if rec is not None else {}
        # A directory without a fingerprint is built whatever its entries
        # say: its files are queued as the walk meets them (depth-first, by
        # name), so that packs hold chunks in the order a restore writes
        # them and it reads them back with few ranged GETs. Otherwise they
        # are looked at only if the fingerprint differs.
        eager = rec is None or not rec.fingerprint
        files = dirs = links = nbytes = 0
        racy = False
        cutoff = self.racy_cutoff
        for e in entries:
            st = e.st
            if st.st_mtime_ns >= cutoff or st.st_ctime_ns >= cutoff:
                racy = True
            if e.type == wf.FILE:
                files += 1
                nbytes += st.st_size
                if eager:
                    self._want(task, known, e)
            elif e.type == wf.DIR:
                child = self._visit(path + b"/" + e.name, join(rel, e.name), depth + 1)
                children[e.name] = child
                if child is not None:
                    t = child.totals
                    files, dirs, links, nbytes = (
                        files + t[0],
                        dirs + t[1] + 1,
                        links + t[2],
                        nbytes + t[3],
                    )
            else:
                links += 1
        direct = [e for e in entries if e.type == wf.FILE]
        self.budget.add(len(entries), sum(e.st.st_size for e in direct), rel)
        totals = (files, dirs, links, nbytes)
        if not eager and not racy and all(isinstance(c, Ready) for c in children.values()):
            ids = {name: c.tree_id for name, c in children.items() if isinstance(c, Ready)}
            if rec is not None and rec.fingerprint == fingerprint(entries, ids):
                return Ready(rec.tree_id, totals)
        task.totals, task.racy = totals, racy
        if not eager:
            for e in direct:
                self._want(task, known, e)
        self._tasks.append(task)
        return task

    def _want(self, task: _Task, known: dict[bytes, FileRecord], e: Entry) -> None:
        """The chunk ids of file ``e`` of ``task``: cached, or to be read."""
        # A hit is never racy: its signature was recorded when the file was
        # already older than the racy window, and still matches.
        st = e.st
        hit = known.get(e.name)
        if hit is not None and hit[0] == signature(st):
            packed = hit[1]
            task.files[e.name] = tuple(packed[i : i + 32] for i in range(0, len(packed), 32))
            return
        self._files_read += 1
        full, frel = task.path + b"/" + e.name, join(task.rel, e.name)
        if st.st_size >= self.params.small_file:
            fut = self.pool.submit(self._read, full, frel)
            self._futures.append(fut)
            task.files[e.name] = fut
            return
        self._group.append((full, frel))
        self._group_slots.append((task, e.name))
        self._group_bytes += st.st_size
        if len(self._group) >= GROUP_FILES or self._group_bytes >= GROUP_BYTES:
            self._flush_group()

    def _flush_group(self) -> None:
        if not self._group:
            return
        fut = self.pool.submit(self._read_group, self._group)
        self._groups.append(fut)
        for i, (task, name) in enumerate(self._group_slots):
            task.files[name] = _Slot(fut, i)
        self._group, self._group_slots, self._group_bytes = [], [], 0

    def _read_group(self, files: list[tuple[bytes, bytes]]) -> list[FileChunks | None]:
        """Read small files; their chunks go to the uploader together."""
        items: list[tuple[bytes, int, bytes]] = []

        def sink(cid: bytes, data: bytes) -> None:
            items.append((cid, DATA, data))
            if len(items) >= GROUP_FILES:  # a file that grew large meanwhile
                self.uploader.submit_many(items)
                items.clear()

        out = [self._read_one(path, rel, sink) for path, rel in files]
        if items:
            self.uploader.submit_many(items)
        return out

    def _read(self, path: bytes, rel: bytes) -> FileChunks | None:
        submit = self.uploader.submit

        def sink(cid: bytes, data: bytes) -> None:
            submit(cid, DATA, data)

        return self._read_one(path, rel, sink)

    def _read_one(
        self, path: bytes, rel: bytes, sink: Callable[[bytes, bytes], None]
    ) -> FileChunks | None:
        try:
            res = chunk_file(path, self.key, self.params, sink)
        except PermissionError:
            self.report.skip("unreadable", rel)
            return None
        if res is None:
            self.report.skip("vanished", rel)
            return None
        self.progress.file_read(rel, res.size)
        return res

    # -- phase 2 -------------------------------------------------------------

    def build(self) -> None:
        """Build every pending tree (children before parents)."""
        self._flush_group()
        try:
            for task in self._tasks:
                self._build(task)
        except BaseException:
            for fut in self._futures:
                fut.cancel()
            for group in self._groups:
                group.cancel()
            raise
        self.result.files_read = self._files_read

    def tree_id(self, node: Ready | _Task) -> bytes:
        return node.tree_id

    def _build(self, task: _Task) -> None:
        nodes: list[format_pb2.Node] = []
        files: dict[bytes, FileRecord] = {}
        subtree_ids: dict[bytes, bytes] = {}
        complete = not task.racy
        cutoff = self.racy_cutoff
        for e in task.entries:
            st = e.st
            if e.type == wf.FILE:
                got = task.files[e.name]
                if isinstance(got, tuple):
                    ids = got
                else:
                    res = got.future.result()[got.index] if isinstance(got, _Slot) else got.result()
                    if res is None:
                        complete = False
                        continue
                    ids, st = res.chunk_ids, res.st
                    if not res.stable or st.st_mtime_ns >= cutoff or st.st_ctime_ns >= cutoff:
                        complete = False
                    else:
                        files[e.name] = (signature(st), b"".join(ids))
                    nodes.append(_file_node(e.name, st.st_mode, st.st_mtime_ns, res.size, ids))
                    continue
                files[e.name] = (signature(st), b"".join(ids))
                nodes.append(_file_node(e.name, st.st_mode, st.st_mtime_ns, st.st_size, ids))
            elif e.type == wf.DIR:
                child = task.children.get(e.name)
                if child is None:
                    complete = False
                    continue
                subtree_ids[e.name] = child.tree_id
                nodes.append(
                    format_pb2.Node(
                        name=e.name,
                        type=wf.DIR,
                        mode=wf.node_mode(st.st_mode),
                        mtime_ns=st.st_mtime_ns,
                        subtree_id=child.tree_id,
                    )
                )
            else:
                nodes.append(
                    format_pb2.Node(
                        name=e.name,
                        type=wf.SYMLINK,
                        mode=wf.node_mode(st.st_mode),
                        mtime_ns=st.st_mtime_ns,
                        link_target=e.target,
                    )
                )
        data = wf.serialize_tree(nodes)
        task.tree_id = tid = wf.chunk_id(self.key, data)
        if not self.cache.has_tree(tid):
            self.uploader.submit(tid, TREE, data)
        self.result.trees_built += 1
        fp = fingerprint(task.entries, subtree_ids) if complete else b""
        record = DirRecord(fp, tid, task.totals)
        record._files = files
        self.result.records[task.rel] = record


def _file_node(
    name: bytes, mode: int, mtime_ns: int, size: int, ids: tuple[bytes, ...]
) -> format_pb2.Node:
    return format_pb2.Node(
        name=name,
        type=wf.FILE,
        mode=wf.node_mode(mode),
        mtime_ns=mtime_ns,
        size=size,
        chunk_ids=ids,
    )


__all__ = ["BuildResult", "Ready", "TreeBuilder", "fingerprint"]
