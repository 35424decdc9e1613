"""Chunking: small files are one chunk, large ones are cut by content while
streaming, so an insertion changes only the chunk it lands in."""

from __future__ import annotations

import os
import random
from pathlib import Path

from sessiond.client import workspace_format as wf
from sessiond.hydrator.chunker import (
    MAX_CHUNK_BYTES,
    ChunkParams,
    chunk_bytes,
    chunk_file,
)

KEY = bytes(range(32))
P = ChunkParams()


def collect(path: Path) -> tuple[list[bytes], dict[bytes, bytes]]:
    seen: dict[bytes, bytes] = {}
    res = chunk_file(os.fsencode(path), KEY, P, lambda cid, data: seen.__setitem__(cid, data))
    assert res is not None
    return list(res.chunk_ids), seen


def random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def test_small_file_is_one_chunk(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 1000)
    ids, seen = collect(tmp_path / "f")
    assert ids == [wf.chunk_id(KEY, b"x" * 1000)]
    assert seen[ids[0]] == b"x" * 1000


def test_empty_file_has_no_chunks(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    res = chunk_file(os.fsencode(tmp_path / "f"), KEY, P, lambda c, d: None)
    assert res is not None and res.chunk_ids == () and res.size == 0 and res.stable


def test_streaming_cuts_equal_whole_buffer_cuts(tmp_path: Path) -> None:
    data = random_bytes(40 << 20, 1)  # several 16 MiB read windows
    (tmp_path / "f").write_bytes(data)
    ids, seen = collect(tmp_path / "f")
    assert ids == chunk_bytes(data, KEY, P, lambda c, d: None)
    assert b"".join(seen[i] for i in ids) == data
    assert all(len(seen[i]) <= MAX_CHUNK_BYTES for i in ids)
    assert all(wf.chunk_id(KEY, seen[i]) == i for i in ids)


def test_insert_in_the_middle_changes_few_chunks() -> None:
    data = random_bytes(32 << 20, 2)
    before = chunk_bytes(data, KEY, P, lambda c, d: None)
    edited = data[: 16 << 20] + b"inserted!" + data[16 << 20 :]
    new: dict[bytes, int] = {}
    after = chunk_bytes(edited, KEY, P, lambda c, d: new.__setitem__(c, len(d)))
    changed = set(after) - set(before)
    assert 1 <= len(changed) <= 2
    assert sum(new[c] for c in changed) <= 4 << 20
    assert len(set(after) & set(before)) >= len(before) - 2


def test_vanished_file_is_none(tmp_path: Path) -> None:
    assert chunk_file(os.fsencode(tmp_path / "gone"), KEY, P, lambda c, d: None) is None


def test_fifo_is_none_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    assert chunk_file(os.fsencode(tmp_path / "fifo"), KEY, P, lambda c, d: None) is None


def test_symlink_is_never_followed(tmp_path: Path) -> None:
    (tmp_path / "target").write_text("secret")
    os.symlink("target", tmp_path / "link")
    assert chunk_file(os.fsencode(tmp_path / "link"), KEY, P, lambda c, d: None) is None


def test_server_chunk_cap_scales_sizes() -> None:
    small = ChunkParams.for_limit(1 << 20)
    assert small.max_size == 1 << 20 and small.small_file <= 1 << 20
    assert small.min_size < small.avg_size < small.max_size
    assert ChunkParams.for_limit(8 << 20) == ChunkParams()


def test_file_growing_while_read_is_unstable(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(random_bytes(3 << 20, 3))
    calls = 0

    def sink(cid: bytes, data: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            with open(path, "ab") as f:
                f.write(b"more")

    res = chunk_file(os.fsencode(path), KEY, P, sink)
    assert res is not None and not res.stable
