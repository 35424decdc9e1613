"""Seeded workspaces for the workspace benchmark, the changes applied to them,
and the check that a hydrated copy equals its source.

Everything is a pure function of ``(spec, seed)``: two runs generate the
same names, sizes and bytes.

Content, chosen so that neither side gets a dedup or compression gift:

* **text** (source-code-like): slices of an 8 MiB pool of Zipf-distributed
  words and punctuation, each slice with its own random permutation of the
  letters (``bytes.translate``), so no two slices share content-defined
  chunks (different bytes → different cut points and ids) and zstd's window
  finds no cross-file repeats either; it still compresses like text (~3×
  with ``zstd -1``).
* **binary**: BLAKE3 XOF output keyed by the path (incompressible).

Large files mix 1 MiB blocks of both kinds.
"""

from __future__ import annotations

import contextlib
import os
import random
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import blake3

MiB = 1 << 20
_BLOCK = MiB
_POOL_BYTES = 8 * MiB
_LETTERS = bytes(range(ord("a"), ord("z") + 1))


@dataclass(frozen=True)
class Spec:
    """A workspace: ``small_files`` files totalling ``small_bytes`` (log-normal
    sizes) in ``~small_files / files_per_dir`` directories, plus ``large``
    files of the given sizes; ``text_fraction`` of the bytes are text."""

    name: str
    small_files: int
    small_bytes: int
    large: tuple[int, ...] = ()
    text_fraction: float = 0.85
    files_per_dir: int = 20
    max_depth: int = 6

    @property
    def total_bytes(self) -> int:
        return self.small_bytes + sum(self.large)

    @property
    def files(self) -> int:
        return self.small_files + len(self.large)

    def scaled(self, factor: float) -> Spec:
        """A smaller workspace of the same shape (``--quick``)."""
        return Spec(
            name=self.name,
            small_files=max(50, int(self.small_files * factor)),
            small_bytes=max(MiB, int(self.small_bytes * factor)),
            large=tuple(max(4 * MiB, int(s * factor)) for s in self.large),
            text_fraction=self.text_fraction,
            files_per_dir=self.files_per_dir,
            max_depth=self.max_depth,
        )


SPECS: dict[str, Spec] = {
    # ~30 MB / 3k files: a small repository.
    "W1": Spec("W1", small_files=3_000, small_bytes=30 * MiB),
    # ~300 MB / 40k small files: a repository with its dependencies.
    "W2": Spec("W2", small_files=40_000, small_bytes=300 * MiB),
    # ~1 GB with large files, half compressible; the 200 MB file is the one
    # edited in the middle.
    "W3": Spec(
        "W3",
        small_files=2_000,
        small_bytes=100 * MiB,
        large=(200 * MiB, *([100 * MiB] * 3), *([50 * MiB] * 4), *([25 * MiB] * 8)),
        text_fraction=0.5,
    ),
}


@dataclass
class Generated:
    root: Path
    files: list[str] = field(default_factory=list)  # relative paths, sorted
    bytes: int = 0
    big_file: str = ""  # the largest file (the mid-file edit target)


class _Text:
    """Text of any length, never repeating across calls (see the module doc)."""

    def __init__(self, rng: random.Random) -> None:
        vocab = [
            bytes(rng.choice(_LETTERS) for _ in range(rng.randint(2, 10))) for _ in range(3000)
        ]
        weights = [1.0 / (i + 1) for i in range(len(vocab))]
        seps = [b" ", b" ", b" ", b"\n", b"(", b")", b".", b"_", b" = ", b", ", b":\n    "]
        words = rng.choices(vocab, weights, k=_POOL_BYTES // 5)
        out = bytearray()
        for w in words:
            out += w
            out += rng.choice(seps)
            if len(out) >= _POOL_BYTES:
                break
        pool = bytes(out[:_POOL_BYTES])
        self._pool = pool + pool  # slices may wrap
        self._rng = rng

    def make(self, n: int) -> bytes:
        parts = []
        while n > 0:
            take = min(n, _POOL_BYTES)
            off = self._rng.randrange(_POOL_BYTES)
            perm = list(_LETTERS)
            self._rng.shuffle(perm)
            table = bytes.maketrans(_LETTERS, bytes(perm))
            parts.append(self._pool[off : off + take].translate(table))
            n -= take
        return b"".join(parts)


def _binary(seed: int, rel: str, n: int, salt: int = 0) -> bytes:
    return blake3.blake3(f"{seed}/{salt}/{rel}".encode()).digest(length=n)


def _dirs(spec: Spec, rng: random.Random) -> list[str]:
    ndirs = max(1, spec.small_files // spec.files_per_dir)
    dirs = [""]
    depth = {"": 0}
    for i in range(ndirs):
        candidates = [d for d in dirs[-200:] if depth[d] < spec.max_depth] or [""]
        parent = rng.choice(candidates) if rng.random() < 0.8 else ""
        name = f"{rng.choice(['src', 'lib', 'pkg', 'mod', 'test', 'docs', 'util'])}{i}"
        d = f"{parent}/{name}" if parent else name
        dirs.append(d)
        depth[d] = depth[parent] + 1
    return dirs


def _small_sizes(spec: Spec, rng: random.Random) -> list[int]:
    raw = [rng.lognormvariate(0.0, 1.2) for _ in range(spec.small_files)]
    scale = spec.small_bytes / sum(raw)
    return [max(1, int(r * scale)) for r in raw]


def generate(spec: Spec, root: Path, seed: int) -> Generated:
    """Write ``spec`` into the new directory ``root``."""
    rng = random.Random(f"{spec.name}/{seed}")
    text = _Text(rng)
    root.mkdir(parents=True)
    gen = Generated(root)
    dirs = _dirs(spec, rng)
    for d in dirs[1:]:
        (root / d).mkdir(parents=True, exist_ok=True)
    exts_text = [".py", ".md", ".json", ".txt", ".ts", ".yaml"]
    exts_bin = [".bin", ".png", ".pyc", ".so"]
    for i, size in enumerate(_small_sizes(spec, rng)):
        d = rng.choice(dirs)
        is_text = rng.random() < spec.text_fraction
        name = f"f{i}{rng.choice(exts_text if is_text else exts_bin)}"
        rel = f"{d}/{name}" if d else name
        data = text.make(size) if is_text else _binary(seed, rel, size)
        (root / rel).write_bytes(data)
        gen.files.append(rel)
        gen.bytes += size
    for i, size in enumerate(spec.large):
        rel = f"data/large{i}.dat"
        (root / "data").mkdir(exist_ok=True)
        with open(root / rel, "wb") as f:
            left, block = size, 0
            while left > 0:
                n = min(left, _BLOCK)
                is_text = rng.random() < spec.text_fraction
                f.write(text.make(n) if is_text else _binary(seed, rel, n, block))
                left -= n
                block += 1
        gen.files.append(rel)
        gen.bytes += size
        if size == max(spec.large):
            gen.big_file = gen.big_file or rel
    gen.files.sort()
    return gen


def change_files(gen: Generated, fraction: float, seed: int, salt: str) -> list[str]:
    """Change ``fraction`` of the files (seeded choice): overwrite up to 256
    bytes at a random offset in place, then append a line. Returns them."""
    rng = random.Random(f"change/{seed}/{salt}")
    count = max(1, round(len(gen.files) * fraction))
    chosen = rng.sample(gen.files, count)
    for rel in chosen:
        path = gen.root / rel
        size = path.stat().st_size
        with open(path, "r+b") as f:
            off = rng.randrange(max(1, size))
            f.seek(off)
            f.write(_binary(seed, rel, min(256, max(1, size - off)), rng.randrange(1 << 30)))
            f.seek(0, os.SEEK_END)
            f.write(f"\n# changed {salt} {rng.random()}\n".encode())
    return chosen


def edit_middle(gen: Generated, seed: int, insert: int = 1024) -> str:
    """Insert ``insert`` bytes in the middle of the largest file (the tail
    moves: an editor's save). Returns its relative path."""
    rel = gen.big_file
    path = gen.root / rel
    size = path.stat().st_size
    mid = size // 2
    with open(path, "r+b") as f:
        f.seek(mid)
        tail = f.read()
        f.seek(mid)
        f.write(_binary(seed, rel, insert, 999_999))
        f.write(tail)
    return rel


def tree_digest(root: Path, skip: frozenset[str] = frozenset({".sessiond"})) -> dict[str, str]:
    """relative path → type, mode, size and content hash (mtimes excluded: tar
    and restore both keep them, but the check is about content)."""
    out: dict[str, str] = {}
    for rel, full in _walk(root, skip):
        st = os.lstat(full)
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            out[rel] = f"d {mode:o}"
        elif stat.S_ISLNK(st.st_mode):
            out[rel] = f"l {os.readlink(full)}"
        else:
            h = blake3.blake3()
            with open(full, "rb") as f:
                while block := f.read(8 * MiB):
                    h.update(block)
            out[rel] = f"f {mode:o} {st.st_size} {h.hexdigest()[:32]}"
    return out


def _walk(root: Path, skip: frozenset[str]) -> Iterator[tuple[str, str]]:
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(root / rel if rel else root) as it:
            for e in it:
                child = f"{rel}/{e.name}" if rel else e.name
                if not rel and e.name in skip:
                    continue
                yield child, e.path
                if e.is_dir(follow_symlinks=False):
                    stack.append(child)


def diff_digests(a: dict[str, str], b: dict[str, str]) -> list[str]:
    """Up to 5 differences, for the error message."""
    out = []
    for k in sorted(a.keys() | b.keys()):
        if a.get(k) != b.get(k):
            out.append(f"{k}: {a.get(k)} != {b.get(k)}")
            if len(out) >= 5:
                break
    return out


def remove(path: Path) -> None:
    """rm -rf (the bench deletes only at the very end: creating files soon
    after deleting tens of thousands is 10–15× slower on this disk)."""
    import shutil

    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)
