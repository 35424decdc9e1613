"""``sessiond-hydrator watch``: periodic incremental snapshots while a
session runs, and a final one on SIGTERM/SIGINT.

Where inotify works (Linux; called through ctypes, no dependency) every
scanned directory gets a watch, and an event marks its directory *dirty*: a
snapshot then rescans only dirty directories, rebuilds their ancestors from
remembered entries, and takes every other subtree whole from the cache
without a single ``stat``. Events that make the path bookkeeping unsafe (a
directory moved, the queue overflowed) or a failure to add a watch (the
``max_user_watches`` limit) fall back to a full walk — still cheap, since
fingerprints and the stat cache skip unchanged directories and files.

Snapshot steps never run concurrently. A periodic snapshot that would be
identical to the last committed one (same trees, same transcript position)
is not committed; the final one always is.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import signal
import struct
import threading
from collections.abc import Sequence
from pathlib import Path

from sessiond.api.v1 import common_pb2
from sessiond.client.errors import Aborted, SessiondError

from .progress import Progress
from .remote import WorkspaceRemote
from .snapshot import SnapshotState, snapshot

log = logging.getLogger(__name__)

IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

WATCH_MASK = (
    IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE
    | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW | IN_EXCL_UNLINK
)  # fmt: skip
_EVENT = struct.Struct("iIII")


def _libc() -> ctypes.CDLL:
    lib = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    lib.inotify_init1.argtypes = [ctypes.c_int]
    lib.inotify_init1.restype = ctypes.c_int
    lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    lib.inotify_add_watch.restype = ctypes.c_int
    return lib


class Inotify:
    """Which directories changed since :meth:`take`, by relative path.

    :meth:`add` may be called from any thread (the snapshot's walker calls it
    before scanning a directory, so nothing created after the scan is
    missed); :meth:`read_events` runs on the event loop. Raises ``OSError``
    if inotify is unavailable.
    """

    def __init__(self) -> None:
        self._lib = _libc()
        fd = self._lib.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd = fd
        self._lock = threading.Lock()
        self._wds: dict[int, bytes] = {}
        self._dirty: set[bytes] = set()
        self._full = True  # nothing is watched yet
        self.broken = False

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def add(self, rel: bytes, path: bytes) -> None:
        if self.broken:
            return
        wd = self._lib.inotify_add_watch(self.fd, path, WATCH_MASK)
        if wd < 0:
            err = ctypes.get_errno()
            if err in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
                return  # vanished or unreadable: the scan will see the same
            log.warning("inotify watch failed (%s): falling back to full walks", os.strerror(err))
            self.broken = True
            return
        with self._lock:
            self._wds[wd] = rel

    def read_events(self) -> None:
        """Drain the queue, marking directories dirty."""
        while True:
            try:
                buf = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return
            except OSError:
                self.broken = True
                return
            if not buf:
                return
            self._parse(buf)

    def _parse(self, buf: bytes) -> None:
        pos = 0
        with self._lock:
            while pos + _EVENT.size <= len(buf):
                wd, mask, _cookie, length = _EVENT.unpack_from(buf, pos)
                name = buf[pos + _EVENT.size : pos + _EVENT.size + length].rstrip(b"\0")
                pos += _EVENT.size + length
                if mask & IN_Q_OVERFLOW:
                    self._full = True
                    continue
                rel = self._wds.get(wd)
                if mask & IN_IGNORED:
                    self._wds.pop(wd, None)
                if rel is None:
                    continue
                if mask & IN_MOVE_SELF or (
                    mask & (IN_MOVED_FROM | IN_MOVED_TO) and mask & IN_ISDIR
                ):
                    # Watches are keyed by path: a moved directory leaves
                    # every path below it stale. Rescan everything once.
                    self._full = True
                self._dirty.add(rel)
                if not name and rel:  # the directory itself changed: its node is the parent's
                    self._dirty.add(rel.rpartition(b"/")[0])

    def take(self) -> set[bytes] | None:
        """The dirty directories since the last take (None: rescan all)."""
        self.read_events()
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            full, self._full = self._full, False
        return None if full or self.broken else dirty

    def give_back(self, dirty: set[bytes] | None) -> None:
        """Undo a :meth:`take` whose snapshot failed."""
        with self._lock:
            if dirty is None:
                self._full = True
            else:
                self._dirty |= dirty


async def watch(
    remote: WorkspaceRemote,
    cwd: Path,
    *,
    interval: float = 60.0,
    state_dir: Path | None = None,
    config_dir: Path | None = None,
    excludes: Sequence[str] = (),
    progress: Progress | None = None,
    include_transcript: bool = False,
    use_inotify: bool = True,
    stop: asyncio.Event | None = None,
) -> int:
    """Snapshot now, then every ``interval`` seconds, then once more (trigger
    SHUTDOWN) when SIGTERM/SIGINT arrives or ``stop`` is set. Returns 0, or 1
    if the lease was lost or the final snapshot failed."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    state = SnapshotState()
    tracker = _tracker() if use_inotify else None
    if tracker is not None:
        state.take_dirty, state.return_dirty, state.on_scan = (
            tracker.take, tracker.give_back, tracker.add,
        )  # fmt: skip
        loop.add_reader(tracker.fd, tracker.read_events)
    handled = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
        except (RuntimeError, ValueError):  # not the main thread
            pass
    options = dict(
        state_dir=state_dir, config_dir=config_dir, excludes=excludes, progress=progress,
        include_transcript=include_transcript, state=state,
    )  # fmt: skip
    try:
        while not stop.is_set():
            try:
                await snapshot(
                    remote,
                    cwd,
                    trigger=common_pb2.SNAPSHOT_TRIGGER_WATCH,
                    skip_unchanged=True,
                    **options,  # type: ignore[arg-type]
                )
            except Aborted as exc:
                log.error("lease lost, stopping: %s", exc)
                return 1
            except SessiondError as exc:
                log.warning("periodic snapshot failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
        try:
            await snapshot(
                remote,
                cwd,
                trigger=common_pb2.SNAPSHOT_TRIGGER_SHUTDOWN,
                **options,  # type: ignore[arg-type]
            )
        except SessiondError as exc:
            log.error("final snapshot failed: %s", exc)
            return 1
        return 0
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        if tracker is not None:
            loop.remove_reader(tracker.fd)
            tracker.close()


def _tracker() -> Inotify | None:
    try:
        return Inotify()
    except (OSError, AttributeError) as exc:  # AttributeError: no inotify in this libc
        log.warning("inotify unavailable (%s): every snapshot walks the whole tree", exc)
        return None
