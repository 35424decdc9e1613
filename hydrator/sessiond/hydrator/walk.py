"""Reading a working directory one directory at a time.

Contract of :func:`scan_dir`:

* names are bytes (the directory is opened by a bytes path), so non-UTF-8
  names round-trip;
* nothing is ever followed: entries are classified by ``lstat``, symlinks are
  recorded as data (``os.readlink``), a directory that became a symlink is a
  symlink;
* devices, fifos and sockets are skipped and counted in the :class:`WalkReport`;
  so are entries that vanish between ``readdir`` and ``lstat``;
* excluded paths (glob patterns relative to the root, see :class:`Excludes`)
  and the hydrator's own ``.sessiond/`` are left out silently;
* a name over the limit or a directory deeper than the limit raises
  ``InvalidArgument``/``ResourceExhausted`` naming the path and the limit;
  :class:`Budget` does the same for the file count and total bytes.
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import os
import re
import stat
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from sessiond.api.v1 import workspace_pb2
from sessiond.client import workspace_format as wf
from sessiond.client.errors import InvalidArgument, ResourceExhausted

log = logging.getLogger(__name__)

STATE_DIR_NAME = b".sessiond"
_MAX_EXAMPLES = 20


def show(path: bytes) -> str:
    """A path for messages: undecodable bytes escaped, never raising."""
    return path.decode("utf-8", "backslashreplace") or "."


@dataclass(frozen=True, slots=True)
class Limits:
    """What one snapshot may hold. Defaults apply where the server sends 0."""

    max_files: int = 500_000
    max_total_bytes: int = 20 << 30
    max_depth: int = 256
    max_name_bytes: int = wf.MAX_NAME_BYTES
    max_chunk_bytes: int = 4 << 20
    max_pack_bytes: int = 32 << 20
    max_chunks_per_request: int = 10_000

    @classmethod
    def from_proto(cls, limits: workspace_pb2.WorkspaceLimits) -> Limits:
        d = cls()
        return cls(
            max_files=limits.max_files or d.max_files,
            max_total_bytes=limits.max_total_bytes or d.max_total_bytes,
            max_depth=limits.max_depth or d.max_depth,
            max_name_bytes=min(limits.max_name_bytes or d.max_name_bytes, wf.MAX_NAME_BYTES),
            max_chunk_bytes=limits.max_chunk_bytes or d.max_chunk_bytes,
            max_pack_bytes=limits.max_pack_bytes or d.max_pack_bytes,
            max_chunks_per_request=limits.max_chunks_per_request or d.max_chunks_per_request,
        )


class Excludes:
    """Glob patterns relative to the walked root, gitignore-like:

    * a pattern without ``/`` matches a name at any depth (``node_modules``,
      ``*.pyc``);
    * a pattern with ``/`` matches the whole relative path from the root
      (``build/cache``, ``logs/*.log``; a leading ``/`` is allowed, ``*``
      also crosses ``/``); a leading ``**/`` means "at any depth";
    * a trailing ``/`` restricts the pattern to directories.

    ``.sessiond`` at the root is always excluded.
    """

    def __init__(self, patterns: Sequence[str] = ()) -> None:
        self.patterns = tuple(patterns)
        names: list[str] = []
        paths: list[str] = []
        dir_names: list[str] = []
        dir_paths: list[str] = []
        for raw in patterns:
            pat = raw.strip()
            if not pat:
                continue
            dir_only = pat.endswith("/")
            pat = pat.rstrip("/")
            while pat.startswith("**/"):
                pat = pat[3:]
                if "/" in pat:
                    pat = "*/" + pat  # still anchored at some depth below the root
            pat = pat.lstrip("/")
            if not pat:
                continue
            target = (dir_names if dir_only else names) if "/" not in pat else None
            if target is None:
                target = dir_paths if dir_only else paths
            target.append(fnmatch.translate(pat))
        self._name = _compile(names)
        self._path = _compile(paths)
        self._dir_name = _compile(dir_names)
        self._dir_path = _compile(dir_paths)

    def __bool__(self) -> bool:
        return any((self._name, self._path, self._dir_name, self._dir_path))

    def excluded(self, relpath: bytes, name: bytes, is_dir: bool) -> bool:
        if self._name is not None and self._name.match(name):
            return True
        if self._path is not None and self._path.match(relpath):
            return True
        if is_dir:
            if self._dir_name is not None and self._dir_name.match(name):
                return True
            if self._dir_path is not None and self._dir_path.match(relpath):
                return True
        return False


def _compile(regexes: list[str]) -> re.Pattern[bytes] | None:
    if not regexes:
        return None
    # fnmatch.translate only emits ASCII syntax; literal non-ASCII characters
    # become their UTF-8 bytes, the same encoding os.fsencode gives names.
    return re.compile(os.fsencode("|".join(f"(?:{r})" for r in regexes)), re.DOTALL)


@dataclass
class WalkReport:
    """Entries left out of a snapshot because they cannot be represented."""

    skipped: Counter[str] = field(default_factory=Counter)
    examples: list[tuple[str, str]] = field(default_factory=list)

    def skip(self, kind: str, relpath: bytes) -> None:
        self.skipped[kind] += 1
        if len(self.examples) < _MAX_EXAMPLES:
            self.examples.append((kind, show(relpath)))

    @property
    def total(self) -> int:
        return sum(self.skipped.values())


@dataclass(slots=True)
class Entry:
    """One directory entry as scanned. ``st`` is its ``lstat``."""

    name: bytes
    type: int  # workspace_format.FILE / DIR / SYMLINK
    st: os.stat_result
    target: bytes = b""


class Budget:
    """Running totals of a snapshot, checked against the limits as they grow.
    ``max_files`` counts entries (files, directories and symlinks), as the
    server does."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.entries = 0
        self.bytes = 0

    def add(self, entries: int, nbytes: int, where: bytes) -> None:
        self.entries += entries
        self.bytes += nbytes
        if self.entries > self.limits.max_files:
            raise ResourceExhausted(
                f"{show(where)}: the workspace has more than {self.limits.max_files} entries"
                " (limit max_files)"
            )
        if self.bytes > self.limits.max_total_bytes:
            raise ResourceExhausted(
                f"{show(where)}: the workspace holds more than {self.limits.max_total_bytes}"
                " bytes (limit max_total_bytes)"
            )


def _skip_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "char-device"
    if stat.S_ISBLK(mode):
        return "block-device"
    return "other"


def join(rel: bytes, name: bytes) -> bytes:
    return rel + b"/" + name if rel else name


def scan_dir(
    path: bytes,
    rel: bytes,
    depth: int,
    *,
    excludes: Excludes,
    limits: Limits,
    report: WalkReport,
) -> list[Entry] | None:
    """The entries of directory ``path`` (``rel`` from the root, at ``depth``
    0 for the root), sorted by name; None if the directory vanished or is no
    longer a directory."""
    try:
        it = os.scandir(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except PermissionError:
        report.skip("unreadable", rel)
        log.warning("skipping unreadable directory %s", show(rel))
        return []
    entries: list[Entry] = []
    with it:
        for de in it:
            name = de.name
            assert isinstance(name, bytes)
            child = join(rel, name)
            if rel == b"" and name == STATE_DIR_NAME:
                continue
            if excludes and excludes.excluded(child, name, de.is_dir(follow_symlinks=False)):
                continue
            entry = _classify(path + b"/" + name, name, child, report)
            if entry is None:
                continue
            if len(name) > limits.max_name_bytes:
                raise InvalidArgument(
                    f"{show(child)}: name of {len(name)} bytes exceeds {limits.max_name_bytes}"
                    " (limit max_name_bytes)"
                )
            if depth + 1 > limits.max_depth:
                raise ResourceExhausted(
                    f"{show(child)}: deeper than {limits.max_depth} levels (limit max_depth)"
                )
            entries.append(entry)
    entries.sort(key=_entry_name)
    return entries


def _entry_name(e: Entry) -> bytes:
    return e.name


def _classify(full: bytes, name: bytes, rel: bytes, report: WalkReport) -> Entry | None:
    # lstat rather than d_type: the entry may have changed type since readdir.
    for _ in range(3):
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            report.skip("vanished", rel)
            return None
        mode = st.st_mode
        if stat.S_ISREG(mode):
            return Entry(name, wf.FILE, st)
        if stat.S_ISDIR(mode):
            return Entry(name, wf.DIR, st)
        if not stat.S_ISLNK(mode):
            report.skip(_skip_kind(mode), rel)
            return None
        try:
            return Entry(name, wf.SYMLINK, st, os.readlink(full))
        except FileNotFoundError:
            report.skip("vanished", rel)
            return None
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: no longer a symlink; look again
                raise
    report.skip("unstable", rel)
    return None
