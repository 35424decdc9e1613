"""materialize.py: trees built by hand (restore_helpers) written into a
staging directory, compared byte for byte, mode for mode, mtime for mtime."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sessiond.api.v1 import format_pb2, workspace_pb2
from sessiond.client import workspace_format as wf
from sessiond.hydrator.materialize import (
    BATCH_WORST_BYTES,
    MAX_IDS_PER_REQUEST,
    Limits,
    MaterializeResult,
    load_trees,
    materialize,
    plan_batches,
    remove_tree,
    swap_into_place,
)
from tests.hydrator.restore_helpers import MemoryStore, describe, link

MTIME = 1_600_000_000_123_456_789


async def run(
    store: MemoryStore, root_id: bytes, parent: Path, limits: Limits | None = None
) -> tuple[MaterializeResult, Path]:
    lim = limits or Limits()
    ts = await load_trees(store.source, store.key, root_id, lim)
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        res = await materialize(store.source, store.key, ts, fd, "ws", lim)
    finally:
        os.close(fd)
    return res, parent / res.staging_name


async def test_everything_kind_of_entry(tmp_path: Path) -> None:
    s = MemoryStore()
    big = os.urandom(3 << 20) + b"tail"
    shared = b"the same bytes in many files\n"
    root = s.tree(
        [
            s.file(b"empty", b""),
            s.file(b"big.bin", big, chunk_size=1 << 20),
            s.file(b"setuid", b"#!/bin/sh\n", mode=0o6755),
            s.file(b"private", b"secret", mode=0o600),
            s.file(b"\xff\xfe-latin1-\xe9", b"non-utf8 name"),
            s.dir(b"empty-dir", []),
            s.dir(b"ro", [s.file(b"inside", b"x", mode=0o444)], mode=0o555),
            s.dir(b"many", [s.file(f"f{i:03}".encode(), shared) for i in range(300)]),
            s.dir(b"a", [s.dir(b"b", [s.dir(b"c", [s.file(b"deep", b"deep\n")])])], mode=0o1777),
            link(b"link-out", b"/etc/passwd"),
            link(b"link-rel", b"../../x"),
        ]
    )
    res, out = await run(s, root, tmp_path)
    assert out.name.startswith(".ws.sessiond-staging-")
    got = describe(out)
    assert got[b"empty"] == ("file", 0o644, MTIME, b"")
    assert got[b"big.bin"][3] == big
    assert got[b"setuid"][1] == 0o755  # setuid/setgid stripped
    assert got[b"private"][1] == 0o600
    assert got[b"\xff\xfe-latin1-\xe9"][3] == b"non-utf8 name"
    assert got[b"empty-dir"][0] == "dir"
    assert got[b"ro"][1] == 0o555 and got[b"ro/inside"][1] == 0o444
    assert got[b"a"][1] == 0o777  # no sticky bit
    assert got[b"a/b/c/deep"][3] == b"deep\n"
    assert got[b"link-out"][:2] == ("link", b"/etc/passwd")
    assert got[b"link-rel"][:2] == ("link", b"../../x")
    assert all(got[f"many/f{i:03}".encode()][3] == shared for i in range(300))
    assert (res.files, res.dirs, res.symlinks) == (307, 6, 2)
    assert res.total_bytes == len(big) + 10 + 6 + 13 + 1 + 5 + 300 * len(shared)
    # Every directory's mtime survives its children being written.
    assert got[b"a/b"][2] == got[b"many"][2] == 1_500_000_000_000_000_000
    # Records carry the stat after the mtime was set (what a stat cache needs).
    records = {rel: st_ for rel, st_, _ in res.records}
    assert records[b"a/b/c/deep"].st_ino == os.lstat(out / "a/b/c/deep").st_ino
    assert records[b"a/b/c/deep"].st_mtime_ns == MTIME


async def test_a_shared_chunk_is_fetched_once_per_batch(tmp_path: Path) -> None:
    s = MemoryStore()
    shared = s.file(b"x", b"shared")
    nodes = [
        format_pb2.Node(
            name=f"f{i:04}".encode(), type=wf.FILE, size=6, chunk_ids=shared.chunk_ids, mode=0o644
        )
        for i in range(1000)
    ]
    nodes += [s.file(f"u{i:04}".encode(), f"unique {i}".encode()) for i in range(600)]
    await run(s, s.tree(nodes), tmp_path)
    data_requests = s.requests[1:]  # the first one fetched the root tree
    assert all(len(r) <= 256 and len(set(r)) == len(r) for r in data_requests)
    assert sum(r.count(shared.chunk_ids[0]) for r in data_requests) <= len(data_requests)
    assert sum(len(r) for r in data_requests) < 620


def test_batches_cover_every_use_in_walk_order() -> None:
    s = MemoryStore()
    root = s.tree([s.file(f"{i}".encode(), os.urandom(100), chunk_size=7) for i in range(40)])
    ts = asyncio.run(load_trees(s.source, s.key, root, Limits()))
    batches = list(plan_batches(ts, 16))
    assert sum(uses for _, uses in batches) == sum(len(n.chunk_ids) for n in ts.trees[root])
    assert all(0 < len(ids) <= 16 for ids, _ in batches)


def test_small_files_travel_by_thousands_large_chunks_by_worst_case_bytes() -> None:
    s = MemoryStore()
    small = [s.file(f"s{i:05}".encode(), f"small {i}".encode()) for i in range(3000)]
    big = s.file(b"zz-big", os.urandom(24 << 20), chunk_size=1 << 20)
    root = s.tree([*small, big])
    ts = asyncio.run(load_trees(s.source, s.key, root, Limits()))
    batches = list(plan_batches(ts, MAX_IDS_PER_REQUEST, max_chunk_bytes=8 << 20))
    # A one-chunk file's chunk is exactly its size: all 3000 in one request.
    assert set(batches[0][0]) >= {n.chunk_ids[0] for n in small}
    # A chunk of a multi-chunk file may be as large as max_chunk_bytes: no
    # request asks for more than BATCH_WORST_BYTES of those, whatever the
    # (1 MiB) estimate says.
    big_ids = set(big.chunk_ids)
    per_request = [len(big_ids.intersection(ids)) for ids, _ in batches]
    assert max(per_request) == BATCH_WORST_BYTES // (8 << 20)
    assert sum(uses for _, uses in batches) == 3000 + len(big.chunk_ids)


def test_remove_tree_empties_read_only_dirs_without_following_links(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    victim = tmp_path / "victim"
    (victim / "ro" / "deeper").mkdir(parents=True)
    (victim / "ro" / "f").write_text("x")
    (victim / "ro" / "to-outside").symlink_to(outside)
    os.chmod(victim / "ro", 0o500)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        remove_tree(fd, "victim")
        remove_tree(fd, "missing")  # not an error
    finally:
        os.close(fd)
    assert not victim.exists() and (outside / "keep").read_text() == "keep"


def test_swap_replaces_the_target_and_removes_the_old_one(tmp_path: Path) -> None:
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "old-file").write_text("old")
    (tmp_path / "staging").mkdir()
    (tmp_path / "staging" / "new-file").write_text("new")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        swap_into_place(fd, "staging", "target")
        swap_into_place(fd, "target", "fresh")  # no existing target
    finally:
        os.close(fd)
    assert os.listdir(tmp_path) == ["fresh"]
    assert os.listdir(tmp_path / "fresh") == ["new-file"]


# -- property: whatever the tree, the restore is exact --------------------------

_names = st.binary(min_size=1, max_size=12).filter(
    lambda n: b"/" not in n and b"\0" not in n and n not in (b".", b"..")
)
_mtimes = st.integers(min_value=-(10**18), max_value=4 * 10**18)
_files = st.tuples(
    st.just("file"),
    st.one_of(st.binary(max_size=64), st.binary(min_size=200, max_size=3000)),
    st.integers(0, 0o7777),
    _mtimes,
    st.sampled_from([64, 333, 1 << 20]),
)
_links = st.tuples(
    st.just("link"), st.binary(min_size=1, max_size=40).filter(lambda t: b"\0" not in t)
)
_entries = st.recursive(
    st.one_of(_files, _links),
    lambda children: st.tuples(
        st.just("dir"),
        st.dictionaries(_names, children, max_size=5),
        st.integers(0, 0o7777),
        _mtimes,
    ),
    max_leaves=25,
)
_roots = st.dictionaries(_names, _entries, max_size=6)


def _build(
    s: MemoryStore, spec: dict[bytes, tuple[object, ...]], prefix: bytes, want: dict[bytes, object]
) -> list[format_pb2.Node]:
    nodes = []
    for name, entry in spec.items():
        rel = prefix + name
        if entry[0] == "file":
            _, data, mode, mtime, chunk = entry
            nodes.append(s.file(name, data, mode=mode, mtime_ns=mtime, chunk_size=chunk))  # type: ignore[arg-type]
            want[rel] = ("file", mode & 0o777, mtime, data)  # type: ignore[operator]
        elif entry[0] == "link":
            nodes.append(link(name, entry[1], mtime_ns=7))  # type: ignore[arg-type]
            want[rel] = ("link", entry[1], 7)
        else:
            _, children, mode, mtime = entry
            sub = _build(s, children, rel + b"/", want)  # type: ignore[arg-type]
            nodes.append(s.dir(name, sub, mode=mode, mtime_ns=mtime))  # type: ignore[arg-type]
            want[rel] = ("dir", mode & 0o777, mtime)  # type: ignore[operator]
    return nodes


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(spec=_roots)
def test_any_tree_round_trips_exactly(
    tmp_path: Path, spec: dict[bytes, tuple[object, ...]]
) -> None:
    s = MemoryStore()
    want: dict[bytes, object] = {}
    root = s.tree(_build(s, spec, b"", want))
    parent = Path(os.fsdecode(os.urandom(6).hex()))
    parent = tmp_path / parent
    parent.mkdir()
    res, out = asyncio.run(run(s, root, parent))
    try:
        assert describe(out) == want
    finally:
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
        remove_tree(fd, res.staging_name)
        os.close(fd)


async def test_zero_chunks_become_holes(tmp_path: Path) -> None:
    s = MemoryStore()
    data = b"head" + bytes(4 << 20) + b"middle" + bytes(8 << 20)
    _res, out = await run(s, s.tree([s.file(b"sparse", data, chunk_size=1 << 20)]), tmp_path)
    st_ = os.stat(out / "sparse")
    assert st_.st_size == len(data) and (out / "sparse").read_bytes() == data
    assert st_.st_blocks * 512 < 4 << 20  # the zeros took no space


async def test_cancelling_removes_the_staging_directory(tmp_path: Path) -> None:
    s = MemoryStore()
    root = s.tree([s.file(f"{i}".encode(), os.urandom(100)) for i in range(50)])
    ts = await load_trees(s.source, s.key, root, Limits())
    stuck = asyncio.Event()

    async def hanging(ids: Sequence[bytes]) -> list[tuple[bytes, int]]:
        stuck.set()
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        task = asyncio.create_task(materialize(hanging, s.key, ts, fd, "ws", Limits()))
        await stuck.wait()
        assert len(os.listdir(tmp_path)) == 1  # the staging directory exists
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        os.close(fd)
    assert os.listdir(tmp_path) == []


def test_server_limits_are_taken_with_defaults_and_clamps() -> None:
    d = Limits()
    assert Limits.from_proto(None) == d
    lim = Limits.from_proto(
        workspace_pb2.WorkspaceLimits(
            max_files=10, max_name_bytes=1000, max_chunks_per_request=10_000, max_depth=0
        )
    )
    assert lim.max_files == 10 and lim.max_depth == d.max_depth
    # Ids per request are clamped (memory is bounded by the batch plan's bytes).
    assert lim.max_name_bytes == 255 and lim.max_chunks_per_request == MAX_IDS_PER_REQUEST
