"""The local stat cache: which files are unchanged since the last snapshot or
restore, which directories are unchanged as a whole, and which trees the
server is known to hold.

* A file whose (size, mtime_ns, inode, ctime_ns) equal the cached ones is not
  read again: its cached chunk ids are reused.
* A directory whose *fingerprint* (every entry's name and stat signature,
  plus every subdirectory's tree id) equals the cached one keeps its cached
  tree id and subtree totals without building a single node: an unchanged
  directory costs one ``scandir`` and one ``lstat`` per entry.
* A tree id in the cache was part of a committed snapshot, so it needs
  neither an upload nor a MissingChunks question.

The cache lives in the workspace's state directory (``<cwd>/.sessiond/``,
excluded from snapshots) as a SQLite file written whole and renamed into
place, one row per directory (its files packed into one blob that is decoded
only when the directory is looked at). It is only an optimisation: a
missing, corrupt, foreign (other tenant key, other root) or stale cache just
makes the next snapshot read everything; the server's PutManifest check
still refuses any manifest that references missing data. Every fact in it
was true at a committed snapshot, so an *old* cache is still a safe one.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import blake3

FILE_NAME = "statcache.sqlite"
_SCHEMA = 2

Signature = tuple[int, int, int, int]
# (files, dirs, symlinks, bytes) of a whole subtree, the directory excluded.
Totals = tuple[int, int, int, int]
FileRecord = tuple[Signature, bytes]

_HEAD = struct.Struct("<H")
_REC = struct.Struct("<qqQqI")


def signature(st: os.stat_result) -> Signature:
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


def key_fingerprint(chunk_key: bytes) -> str:
    """A non-secret fingerprint of the chunk key (the key itself is never
    written to the workspace)."""
    return blake3.blake3(b"sessiond statcache v1", key=chunk_key).hexdigest()[:32]


def _split(relpath: bytes) -> tuple[bytes, bytes]:
    parent, _, name = relpath.rpartition(b"/")
    return parent, name


def _pack_files(files: dict[bytes, FileRecord]) -> bytes:
    out = bytearray()
    for name, (sig, ids) in files.items():
        out += _HEAD.pack(len(name))
        out += name
        out += _REC.pack(sig[0], sig[1], sig[2], sig[3], len(ids))
        out += ids
    return bytes(out)


def _unpack_files(blob: bytes) -> dict[bytes, FileRecord]:
    files: dict[bytes, FileRecord] = {}
    pos, end = 0, len(blob)
    while pos < end:
        (n,) = _HEAD.unpack_from(blob, pos)
        pos += _HEAD.size
        name = blob[pos : pos + n]
        pos += n
        size, mtime, ino, ctime, nids = _REC.unpack_from(blob, pos)
        pos += _REC.size
        if nids % 32 or pos + nids > end:
            raise ValueError("truncated file record")
        files[name] = ((size, mtime, ino, ctime), blob[pos : pos + nids])
        pos += nids
    return files


@dataclass(slots=True)
class DirRecord:
    """What the cache knows of one directory. ``fingerprint`` is empty when
    the directory may not be reused whole (it held a racily-clean file, or
    only its files were recorded, e.g. by a restore)."""

    fingerprint: bytes = b""
    tree_id: bytes = b""
    totals: Totals = (0, 0, 0, 0)
    _blob: bytes | None = None
    _files: dict[bytes, FileRecord] | None = field(default=None)

    @property
    def files(self) -> dict[bytes, FileRecord]:
        """name → (signature, concatenated chunk ids); decoded on first use.
        Read-only: change them through :meth:`edit`."""
        if self._files is None:
            try:
                self._files = _unpack_files(self._blob or b"")
            except (struct.error, ValueError):
                self._files, self._blob = {}, None
        return self._files

    def edit(self) -> dict[bytes, FileRecord]:
        """The files, for changing (the packed form is dropped)."""
        files = self.files
        self._blob = None
        return files

    def packed(self) -> bytes:
        """The files as stored; packed once and kept until they change."""
        if self._blob is None:
            self._blob = _pack_files(self._files or {})
        return self._blob


class StatCache:
    def __init__(self, root: str, fingerprint: str) -> None:
        self.root = root
        self.fingerprint = fingerprint
        self.snapshot_id = ""
        self._dirs: dict[bytes, DirRecord] = {}
        self._trees: set[bytes] = set()

    # -- reading -------------------------------------------------------------

    @classmethod
    def load(
        cls, state_dir: Path, *, root: str, chunk_key: bytes, name: str = FILE_NAME
    ) -> StatCache:
        """The cache for ``root`` under this chunk key, or an empty one."""
        cache = cls(root, key_fingerprint(chunk_key))
        path = state_dir / name
        if not path.is_file():
            return cache
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
                meta = dict(db.execute("SELECT k, v FROM meta").fetchall())
                if (
                    meta.get("schema") != str(_SCHEMA)
                    or meta.get("root") != root
                    or meta.get("key") != cache.fingerprint
                ):
                    return cache
                cache.snapshot_id = meta.get("snapshot", "")
                cache._dirs = {
                    row[0]: DirRecord(row[1], row[2], (row[3], row[4], row[5], row[6]), row[7])
                    for row in db.execute(
                        "SELECT path, fp, tree_id, files, dirs, symlinks, bytes, entries FROM dirs"
                    )
                }
                cache._trees = {row[0] for row in db.execute("SELECT id FROM trees")}
        except (sqlite3.Error, ValueError, TypeError, IndexError):
            return cls(root, cache.fingerprint)
        return cache

    def lookup(self, relpath: bytes, st: os.stat_result) -> tuple[bytes, ...] | None:
        """Cached chunk ids if the file is unchanged, else None."""
        parent, name = _split(relpath)
        rec = self._dirs.get(parent)
        if rec is None:
            return None
        hit = rec.files.get(name)
        if hit is None or hit[0] != signature(st):
            return None
        ids = hit[1]
        return tuple(ids[i : i + 32] for i in range(0, len(ids), 32))

    def dir_record(self, relpath: bytes) -> DirRecord | None:
        """The record of a directory (``b""`` is the root), if any."""
        return self._dirs.get(relpath)

    def is_empty(self) -> bool:
        return not self._dirs and not self._trees

    def dir_paths(self) -> list[bytes]:
        return list(self._dirs)

    def current_trees(self) -> set[bytes]:
        """Tree ids of every directory recorded with one."""
        return {r.tree_id for r in self._dirs.values() if r.tree_id}

    def has_tree(self, tree_id: bytes) -> bool:
        return tree_id in self._trees

    def __len__(self) -> int:
        return sum(len(rec.files) for rec in self._dirs.values())

    # -- writing -------------------------------------------------------------

    def record(self, relpath: bytes, st: os.stat_result, chunk_ids: Iterable[bytes]) -> None:
        parent, name = _split(relpath)
        rec = self._dirs.get(parent)
        if rec is None:
            rec = self._dirs[parent] = DirRecord()
        rec.fingerprint = b""  # the directory's contents are no longer vouched for
        rec.edit()[name] = (signature(st), b"".join(chunk_ids))

    def forget(self, relpath: bytes) -> None:
        parent, name = _split(relpath)
        rec = self._dirs.get(parent)
        if rec is not None:
            rec.edit().pop(name, None)
            rec.fingerprint = b""

    def put_dir(self, relpath: bytes, record: DirRecord) -> None:
        """Replace what is known of one directory (its files included)."""
        self._dirs[relpath] = record

    def drop_subtree(self, relpath: bytes) -> None:
        """Forget a directory and everything below it."""
        prefix = relpath + b"/"
        for key in [k for k in self._dirs if k == relpath or k.startswith(prefix)]:
            del self._dirs[key]

    def add_trees(self, tree_ids: Iterable[bytes]) -> None:
        self._trees.update(tree_ids)

    def replace_trees(self, tree_ids: Iterable[bytes]) -> None:
        """Keep only these trees (those of the latest committed snapshot), so
        the set does not grow with every snapshot."""
        self._trees = set(tree_ids)

    def retain(self, relpaths: set[bytes]) -> None:
        """Drop entries for paths the latest snapshot/restore did not see."""
        keep: dict[bytes, set[bytes]] = {}
        for p in relpaths:
            parent, name = _split(p)
            keep.setdefault(parent, set()).add(name)
        for parent in list(self._dirs):
            names = keep.get(parent)
            if names is None:
                del self._dirs[parent]
                continue
            rec = self._dirs[parent]
            files = rec.files
            if any(n not in names for n in files):
                rec._files, rec._blob = {n: v for n, v in files.items() if n in names}, None
                rec.fingerprint = b""

    def save(self, state_dir: Path, snapshot_id: str, *, name: str = FILE_NAME) -> None:
        """Write the whole cache atomically (temp file + rename)."""
        state_dir.mkdir(parents=True, exist_ok=True)
        final = state_dir / name
        tmp = state_dir / f".{name}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        rows = [(p, r.fingerprint, r.tree_id, *r.totals, r.packed()) for p, r in self._dirs.items()]
        with contextlib.closing(sqlite3.connect(tmp)) as db:
            db.execute("PRAGMA journal_mode=OFF")
            db.execute("PRAGMA synchronous=OFF")
            db.execute("CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID")
            # No indexes: the cache is always read whole into memory.
            db.execute(
                "CREATE TABLE dirs (path BLOB, fp BLOB, tree_id BLOB, files INT, dirs INT,"
                " symlinks INT, bytes INT, entries BLOB)"
            )
            db.execute("CREATE TABLE trees (id BLOB)")
            db.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [
                    ("schema", str(_SCHEMA)),
                    ("root", self.root),
                    ("key", self.fingerprint),
                    ("snapshot", snapshot_id),
                ],
            )
            db.executemany("INSERT INTO dirs VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            db.executemany("INSERT INTO trees VALUES (?)", ((t,) for t in self._trees))
            db.commit()
        os.replace(tmp, final)
        self.snapshot_id = snapshot_id
