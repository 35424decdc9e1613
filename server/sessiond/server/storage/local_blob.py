"""LocalBlobStore: the BlobStore protocol over a local directory.

Key ``packs/ab/cdef`` lives at ``<root>/packs/ab/cdef``. Every write goes to a
temporary file beside its target (``.~<random>.tmp``: ``~`` never occurs in a
key, so listings skip such files, including ones a crash left behind), is
fsynced, then published with ``rename`` (overwrite) or ``link`` (``if_absent``:
``link`` fails with EEXIST, so exactly one of several racing writers wins),
and finally the directory is fsynced so the new name survives a power cut.

Paths are resolved one component at a time relative to directory file
descriptors opened with ``O_NOFOLLOW``: a symlink planted inside the store can
never redirect a read or a write outside ``root`` (it raises ``Unavailable``).

A directory cannot be both an object and a prefix, so keys ``a`` and ``a/b``
cannot coexist here, and components longer than the file system's NAME_MAX
(255 bytes) are rejected; both raise ``InvalidArgument``.

All blocking calls run on a small thread pool owned by the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import secrets
import stat
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from sessiond.client.errors import (
    AlreadyExists,
    DataLoss,
    InvalidArgument,
    NotFound,
    SessiondError,
    Unavailable,
)

from .blob import _COMPONENT, BlobInfo, validate_key, validate_prefix

log = logging.getLogger(__name__)

T = TypeVar("T")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# The store holds tenant data: private to the server's user.
_FILE_MODE = 0o600
_DIR_MODE = 0o700
# put_stream hands the thread pool writes of about this size, not one per chunk.
_SPOOL_BYTES = 1 << 20


def _tmp_name() -> str:
    return f".~{secrets.token_hex(8)}.tmp"


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class LocalBlobStore:
    """A BlobStore in the directory ``root`` (which must exist; see
    :func:`~sessiond.server.storage.blob_url.open_blob_store`)."""

    def __init__(self, root: Path, *, max_workers: int = 8) -> None:
        self._root = Path(root).absolute()
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="local-blob")
        self._closed = False

    @property
    def root(self) -> Path:
        return self._root

    def __repr__(self) -> str:
        return f"LocalBlobStore({str(self._root)!r})"

    # -- plumbing ---------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        if self._closed:
            raise Unavailable("blob store is closed")
        loop = asyncio.get_running_loop()
        try:
            fut = loop.run_in_executor(self._pool, functools.partial(fn, *args))
        except RuntimeError as exc:  # the pool was shut down under us
            raise Unavailable("blob store is closed") from exc
        return await fut

    async def _cleanup(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the pool; it completes even if the caller is cancelled."""
        try:
            fut = asyncio.get_running_loop().run_in_executor(self._pool, fn)
        except RuntimeError:  # pool already shut down: do it here
            fn()
            return
        await fut

    def _error(self, exc: OSError, key: str, *, writing: bool) -> SessiondError:
        """Translate an OSError met while handling ``key``."""
        if exc.errno in (errno.ENOENT, errno.ENOTDIR) and not writing:
            return NotFound(f"blob {key!r} not found")
        if exc.errno == errno.ENAMETOOLONG:
            return InvalidArgument(f"blob key {key!r} has a component too long for the local store")
        name = errno.errorcode.get(exc.errno or 0, "EIO")
        return Unavailable(f"local blob store {self._root}: {name} on {key!r}: {exc.strerror}")

    def _open_root(self) -> int:
        try:
            return os.open(self._root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise Unavailable(
                f"local blob store root {self._root} unusable: {exc.strerror}"
            ) from exc

    def _open_dir(self, parts: list[str], key: str, *, create: bool) -> int:
        """An fd for the directory ``root/parts...``, never through a symlink.

        Reads raise ``NotFound`` for a missing directory; writes create it
        (fsyncing its parent, so the name is durable before a file is
        published inside it).
        """
        fd = self._open_root()
        try:
            for i, name in enumerate(parts):
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    try:
                        os.mkdir(name, _DIR_MODE, dir_fd=fd)
                        os.fsync(fd)
                    except FileExistsError:
                        pass  # a concurrent writer made it
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except NotADirectoryError as exc:
                    # O_NOFOLLOW|O_DIRECTORY reports a symlink as ENOTDIR too.
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    where = "/".join(parts[: i + 1])
                    if stat.S_ISLNK(st.st_mode):
                        raise Unavailable(
                            f"local blob store {self._root}: {where!r} is a symlink; "
                            "refusing to follow it"
                        ) from exc
                    if create:
                        raise InvalidArgument(
                            f"blob key {key!r} conflicts with object {where!r} "
                            "(the local store cannot hold a key and its prefix)"
                        ) from exc
                    raise
                os.close(fd)
                fd = child
        except OSError as exc:
            os.close(fd)
            raise self._error(exc, key, writing=create) from exc
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open_file(self, key: str) -> int:
        """A read fd on the regular file holding ``key``; ``NotFound`` otherwise."""
        *parts, leaf = key.split("/")
        dfd = self._open_dir(parts, key, create=False)
        try:
            fd = os.open(leaf, _FILE_FLAGS, dir_fd=dfd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise Unavailable(
                    f"local blob store {self._root}: {key!r} is a symlink; refusing to follow it"
                ) from exc
            raise self._error(exc, key, writing=False) from exc
        finally:
            os.close(dfd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise NotFound(f"blob {key!r} not found")
        return fd

    # -- writing ----------------------------------------------------------

    def _begin(self, key: str) -> _Spool:
        *parts, leaf = key.split("/")
        dfd = self._open_dir(parts, key, create=True)
        tmp = _tmp_name()
        try:
            fd = os.open(tmp, _TMP_FLAGS, _FILE_MODE, dir_fd=dfd)
        except OSError as exc:
            os.close(dfd)
            raise self._error(exc, key, writing=True) from exc
        return _Spool(self, key, dfd, leaf, fd, tmp)

    def _put_sync(self, key: str, data: bytes, if_absent: bool) -> None:
        spool = self._begin(key)
        try:
            spool.write(data)
            spool.commit(if_absent)
        finally:
            spool.discard()

    async def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        validate_key(key)
        await self._run(self._put_sync, key, bytes(data), if_absent)

    async def put_stream(self, key: str, chunks: AsyncIterator[bytes]) -> int:
        validate_key(key)
        spool = await self._run(self._begin, key)
        total = 0
        try:
            buf = bytearray()
            async for chunk in chunks:
                buf += chunk
                if len(buf) >= _SPOOL_BYTES:
                    full, buf = buf, bytearray()
                    total += len(full)
                    await self._run(spool.write, full)
            total += len(buf)
            await self._run(spool.write, buf)
            await self._run(spool.commit, False)
        finally:
            # The spool's lock makes this wait for a write that a cancellation
            # left running on the pool before it closes the fd.
            await self._cleanup(spool.discard)
        return total

    # -- reading ----------------------------------------------------------

    def _get_sync(self, key: str) -> bytes:
        with os.fdopen(self._open_file(key), "rb", buffering=0) as f:
            return f.read()

    async def get(self, key: str) -> bytes:
        validate_key(key)
        return await self._run(self._get_sync, key)

    def _get_range_sync(self, key: str, offset: int, length: int) -> bytes:
        fd = self._open_file(key)
        try:
            size = os.fstat(fd).st_size
            if offset + length > size:
                raise DataLoss(
                    f"blob {key!r} is {size} bytes; range {offset}+{length} is past its end"
                )
            parts: list[bytes] = []
            got = 0
            while got < length:
                piece = os.pread(fd, length - got, offset + got)
                if not piece:
                    raise DataLoss(f"blob {key!r} shrank while being read")
                parts.append(piece)
                got += len(piece)
            return b"".join(parts)
        finally:
            os.close(fd)

    async def get_range(self, key: str, offset: int, length: int) -> bytes:
        validate_key(key)
        if offset < 0 or length < 0:
            raise InvalidArgument(f"negative range {offset}+{length}")
        return await self._run(self._get_range_sync, key, offset, length)

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        validate_key(key)
        if chunk_size <= 0:
            raise InvalidArgument(f"chunk_size must be positive, not {chunk_size}")
        return self._iter_chunks(key, chunk_size)

    async def _iter_chunks(self, key: str, chunk_size: int) -> AsyncIterator[bytes]:
        reader = _Reader(await self._run(self._open_file, key))
        try:
            while piece := await self._run(reader.read, chunk_size):
                yield piece
        finally:
            await self._cleanup(reader.close)

    def _stat_sync(self, key: str) -> BlobInfo:
        fd = self._open_file(key)
        try:
            return BlobInfo(key, os.fstat(fd).st_size)
        finally:
            os.close(fd)

    async def stat(self, key: str) -> BlobInfo:
        validate_key(key)
        return await self._run(self._stat_sync, key)

    async def exists(self, key: str) -> bool:
        try:
            await self.stat(key)
        except NotFound:
            return False
        return True

    # -- deleting, listing ------------------------------------------------

    def _delete_sync(self, key: str) -> None:
        *parts, leaf = key.split("/")
        try:
            dfd = self._open_dir(parts, key, create=False)
        except NotFound:
            return
        try:
            os.unlink(leaf, dir_fd=dfd)
        except (FileNotFoundError, IsADirectoryError):
            pass  # no such object: deleting is idempotent
        except OSError as exc:
            raise self._error(exc, key, writing=True) from exc
        finally:
            os.close(dfd)
        # No directory fsync: a delete that a crash undoes only leaves garbage
        # for the next GC, and fsyncing every delete would throttle GC sweeps.

    async def delete(self, key: str) -> None:
        validate_key(key)
        await self._run(self._delete_sync, key)

    def _scan(self, rel: str) -> list[tuple[str, bool, int]]:
        """Entries of directory ``rel`` as (key, is_dir, size), in key order.

        Names that cannot be key components (temporary files) and anything
        that is neither a regular file nor a directory (symlinks) are skipped.
        A directory sorts as ``name/`` so a depth-first walk yields keys in
        plain string order (``a-b`` < ``a/c`` < ``a0``).
        """
        parts = rel.split("/") if rel else []
        try:
            fd = self._open_dir(parts, rel or ".", create=False)
        except NotFound:
            return []
        entries: list[tuple[str, bool, int]] = []
        try:
            with os.scandir(fd) as it:
                for e in it:
                    if e.name in (".", "..") or not _COMPONENT.match(e.name):
                        continue
                    key = f"{rel}/{e.name}" if rel else e.name
                    try:
                        if e.is_dir(follow_symlinks=False):
                            entries.append((key, True, 0))
                        elif e.is_file(follow_symlinks=False):
                            entries.append((key, False, e.stat(follow_symlinks=False).st_size))
                    except FileNotFoundError:
                        continue  # deleted while we looked
        except OSError as exc:
            raise self._error(exc, rel, writing=False) from exc
        finally:
            os.close(fd)
        entries.sort(key=lambda t: t[0] + "/" if t[1] else t[0])
        return entries

    def list(self, prefix: str = "") -> AsyncIterator[BlobInfo]:
        """See :meth:`BlobStore.list`. Not a snapshot: objects written or
        deleted during the walk may or may not appear."""
        validate_prefix(prefix)
        return self._list(prefix)

    async def _list(self, prefix: str) -> AsyncIterator[BlobInfo]:
        base = prefix.rpartition("/")[0]
        if base and not all(p not in (".", "..") and _COMPONENT.match(p) for p in base.split("/")):
            return  # e.g. "a//": no key can start with it
        stack: list[Iterator[tuple[str, bool, int]]] = [iter(await self._run(self._scan, base))]
        while stack:
            entry = next(stack[-1], None)
            if entry is None:
                stack.pop()
                continue
            key, is_dir, size = entry
            if is_dir:
                as_dir = key + "/"
                if as_dir.startswith(prefix) or prefix.startswith(as_dir):
                    stack.append(iter(await self._run(self._scan, key)))
            elif key.startswith(prefix):
                yield BlobInfo(key, size)

    # -- lifecycle --------------------------------------------------------

    def _ping_sync(self) -> None:
        fd = self._open_root()
        tmp = _tmp_name()
        try:
            os.close(os.open(tmp, _TMP_FLAGS, _FILE_MODE, dir_fd=fd))
            os.unlink(tmp, dir_fd=fd)
        except OSError as exc:
            raise Unavailable(
                f"local blob store root {self._root} is not writable: {exc.strerror}"
            ) from exc
        finally:
            os.close(fd)

    async def ping(self) -> None:
        await self._run(self._ping_sync)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Let in-flight writes finish their fsync/rename before returning.
        await asyncio.to_thread(self._pool.shutdown, True)


class _Reader:
    """An fd read from the pool; ``close`` waits for a read in flight (see _Spool)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()

    def read(self, n: int) -> bytes:
        with self._lock:
            if self._fd < 0:
                raise Unavailable("read from a closed blob reader")
            return os.read(self._fd, n)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class _Spool:
    """A temporary file being written, then published under its key.

    Every method takes ``_lock``: a cancelled caller's write may still be
    running on the pool when :meth:`discard` is submitted, and closing the fd
    under it could redirect the write to a recycled descriptor.
    """

    def __init__(self, store: LocalBlobStore, key: str, dfd: int, leaf: str, fd: int, tmp: str):
        self._store = store
        self._key = key
        self._dfd = dfd
        self._leaf = leaf
        self._fd = fd
        self._tmp = tmp
        self._lock = threading.Lock()
        self._done = False

    def write(self, data: bytes | bytearray) -> None:
        with self._lock:
            if self._done:
                raise Unavailable("write to a finished spool")
            try:
                _write_all(self._fd, data)
            except OSError as exc:
                raise self._store._error(exc, self._key, writing=True) from exc

    def commit(self, if_absent: bool) -> None:
        """fsync the data, publish it under the key, fsync the directory."""
        with self._lock:
            if self._done:
                raise Unavailable("commit of a finished spool")
            try:
                os.fsync(self._fd)
                if if_absent:
                    # link() never replaces: of N racing writers exactly one
                    # succeeds. The temp name is removed by discard().
                    os.link(
                        self._tmp,
                        self._leaf,
                        src_dir_fd=self._dfd,
                        dst_dir_fd=self._dfd,
                        follow_symlinks=False,
                    )
                else:
                    os.rename(self._tmp, self._leaf, src_dir_fd=self._dfd, dst_dir_fd=self._dfd)
                    self._tmp = ""
                os.fsync(self._dfd)
            except FileExistsError as exc:
                if self._is_dir(self._leaf):
                    raise self._conflict() from exc
                raise AlreadyExists(f"blob {self._key!r} already exists") from exc
            except IsADirectoryError as exc:
                raise self._conflict() from exc
            except OSError as exc:
                raise self._store._error(exc, self._key, writing=True) from exc

    def discard(self) -> None:
        """Close everything and remove the temporary file. Idempotent."""
        with self._lock:
            if self._done:
                return
            self._done = True
            try:
                os.close(self._fd)
                if self._tmp:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self._tmp, dir_fd=self._dfd)
            except OSError as exc:
                log.warning("cannot remove temporary file for blob %r: %s", self._key, exc)
            finally:
                os.close(self._dfd)

    def _is_dir(self, name: str) -> bool:
        try:
            return stat.S_ISDIR(os.stat(name, dir_fd=self._dfd, follow_symlinks=False).st_mode)
        except OSError:
            return False

    def _conflict(self) -> InvalidArgument:
        return InvalidArgument(
            f"blob key {self._key!r} conflicts with existing keys under it "
            "(the local store cannot hold a key and its prefix)"
        )
