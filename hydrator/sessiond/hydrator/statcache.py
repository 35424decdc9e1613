"""The local stat cache: which files are unchanged since the last snapshot or
restore, and which trees the server is known to hold.

A file whose (size, mtime_ns, inode, ctime_ns) equal the cached ones is not
read again: its cached chunk ids are reused. The cache lives in the
workspace's state directory (``<cwd>/.sessiond/``, excluded from snapshots)
as a SQLite file written whole and renamed into place. It is only an
optimisation: a missing, corrupt, foreign (other tenant key, other root) or
stale cache just makes the next snapshot read everything; the server's
PutManifest check still refuses any manifest that references missing data.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import blake3

FILE_NAME = "statcache.sqlite"
_SCHEMA = 1

Signature = tuple[int, int, int, int]


def signature(st: os.stat_result) -> Signature:
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


def key_fingerprint(chunk_key: bytes) -> str:
    """A non-secret fingerprint of the chunk key (the key itself is never
    written to the workspace)."""
    return blake3.blake3(b"sessiond statcache v1", key=chunk_key).hexdigest()[:32]


class StatCache:
    def __init__(self, root: str, fingerprint: str) -> None:
        self.root = root
        self.fingerprint = fingerprint
        self.snapshot_id = ""
        # relpath -> (signature, concatenated 32-byte chunk ids)
        self._files: dict[bytes, tuple[Signature, bytes]] = {}
        self._trees: set[bytes] = set()

    # -- reading -------------------------------------------------------------

    @classmethod
    def load(cls, state_dir: Path, *, root: str, chunk_key: bytes) -> StatCache:
        """The cache for ``root`` under this chunk key, or an empty one."""
        cache = cls(root, key_fingerprint(chunk_key))
        path = state_dir / FILE_NAME
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
                cache._files = {
                    row[0]: ((row[1], row[2], row[3], row[4]), row[5])
                    for row in db.execute(
                        "SELECT path, size, mtime_ns, ino, ctime_ns, chunk_ids FROM files"
                    )
                }
                cache._trees = {row[0] for row in db.execute("SELECT id FROM trees")}
        except (sqlite3.Error, ValueError):
            return cls(root, cache.fingerprint)
        return cache

    def lookup(self, relpath: bytes, st: os.stat_result) -> tuple[bytes, ...] | None:
        """Cached chunk ids if the file is unchanged, else None."""
        hit = self._files.get(relpath)
        if hit is None or hit[0] != signature(st):
            return None
        ids = hit[1]
        return tuple(ids[i : i + 32] for i in range(0, len(ids), 32))

    def has_tree(self, tree_id: bytes) -> bool:
        return tree_id in self._trees

    def __len__(self) -> int:
        return len(self._files)

    # -- writing -------------------------------------------------------------

    def record(self, relpath: bytes, st: os.stat_result, chunk_ids: Iterable[bytes]) -> None:
        self._files[relpath] = (signature(st), b"".join(chunk_ids))

    def forget(self, relpath: bytes) -> None:
        self._files.pop(relpath, None)

    def add_trees(self, tree_ids: Iterable[bytes]) -> None:
        self._trees.update(tree_ids)

    def retain(self, relpaths: set[bytes]) -> None:
        """Drop entries for paths the latest snapshot/restore did not see."""
        self._files = {p: v for p, v in self._files.items() if p in relpaths}

    def save(self, state_dir: Path, snapshot_id: str) -> None:
        """Write the whole cache atomically (temp file + rename)."""
        state_dir.mkdir(parents=True, exist_ok=True)
        final = state_dir / FILE_NAME
        tmp = state_dir / f".{FILE_NAME}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        with contextlib.closing(sqlite3.connect(tmp)) as db:
            db.execute("PRAGMA journal_mode=OFF")
            db.execute("PRAGMA synchronous=OFF")
            db.execute("CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID")
            # No indexes: the cache is always read whole into memory.
            db.execute(
                "CREATE TABLE files (path BLOB, size INT, mtime_ns INT, ino INT,"
                " ctime_ns INT, chunk_ids BLOB)"
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
            db.executemany(
                "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?)",
                (
                    (p, sig[0], sig[1], sig[2], sig[3], ids)
                    for p, (sig, ids) in self._files.items()
                ),
            )
            db.executemany("INSERT INTO trees VALUES (?)", ((t,) for t in self._trees))
            db.commit()
        os.replace(tmp, final)
        self.snapshot_id = snapshot_id
