"""The hostile corpus: snapshots no honest sandbox produces, restored with
restore() over an existing workspace. Each must fail with its precise code
and leave everything — the target, its parent, the outside — exactly as it
was, or (the benign ones) succeed without anything escaping the target."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from sessiond.api.v1 import format_pb2, workspace_pb2
from sessiond.client import workspace_format as wf
from sessiond.client.errors import DataLoss, InvalidArgument, ResourceExhausted, SessiondError
from sessiond.hydrator import materialize as materialize_mod
from sessiond.hydrator import restore as restore_mod
from sessiond.hydrator.restore import restore
from tests.hydrator.restore_helpers import (
    FakeRemote,
    MemoryStore,
    describe,
    link,
    manifest_for,
    snapshot_of,
)


@pytest.fixture
def box(tmp_path: Path) -> Path:
    """tmp/box/{work (the target, with content), outside/secret}."""
    box = tmp_path / "box"
    (box / "work" / "src").mkdir(parents=True)
    (box / "work" / "src" / "main.py").write_text("print('mine')\n")
    (box / "outside").mkdir()
    (box / "outside" / "secret").write_text("do not touch\n")
    return box


async def expect_failure(
    box: Path,
    store: MemoryStore,
    root: bytes,
    error: type[SessiondError],
    *,
    staged: bool = False,
    **kw: object,
) -> SessiondError:
    """Restore must raise ``error`` and change nothing. Unless it ``staged``
    (failed while writing the staging directory, which it then removed), not
    even the parent directory's mtime may move: it failed before writing."""
    before = snapshot_of(box)
    remote = FakeRemote(store, manifest_for(root), **kw)  # type: ignore[arg-type]
    with pytest.raises(error) as info:
        await restore(remote, box / "work", config_dir=box / "config")  # type: ignore[arg-type]
    after = snapshot_of(box)
    if staged:
        del before[b"."], after[b"."]
    assert after == before, "a failed restore changed something"
    return info.value


def node(name: bytes, **kw: object) -> format_pb2.Node:
    return format_pb2.Node(name=name, type=kw.pop("type", wf.FILE), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name",
    [b"..", b".", b"", b"/etc/passwd", b"a/b", b"../../escape", b"nul\0byte", b"x" * 256],
    ids=["dotdot", "dot", "empty", "absolute", "slash", "dotdot-path", "nul", "256-bytes"],
)
async def test_illegal_names_are_invalid_argument(box: Path, name: bytes) -> None:
    s = MemoryStore()
    root = s.raw_tree([s.file(name, b"pwned")])
    err = await expect_failure(box, s, root, InvalidArgument)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_an_illegal_name_deep_down_is_found_before_anything_is_written(box: Path) -> None:
    s = MemoryStore()
    bad = s.raw_tree([s.file(b"..", b"pwned")])
    deep = s.dir(b"c", [s.dir(b"d", [])])
    deep.subtree_id = s.tree([format_pb2.Node(name=b"e", type=wf.DIR, subtree_id=bad)])
    root = s.tree([s.file(b"a", b"fine"), s.dir(b"b", [deep])])
    await expect_failure(box, s, root, InvalidArgument)
    assert len(s.requests) == 4  # only trees were fetched: no data chunk


@pytest.mark.parametrize("order", ["sorted", "reversed"])
async def test_duplicates_and_unsorted_trees_are_invalid(box: Path, order: str) -> None:
    s = MemoryStore()
    nodes = (
        [s.file(b"a", b"1"), s.file(b"a", b"2")]
        if order == "sorted"
        else [
            s.file(b"b", b"1"),
            s.file(b"a", b"2"),
        ]
    )
    await expect_failure(box, s, s.raw_tree(nodes), InvalidArgument)


async def test_a_symlink_pointing_outside_is_restored_as_data(box: Path) -> None:
    s = MemoryStore()
    outside = os.fsencode(box / "outside")
    root = s.tree(
        [
            link(b"escape", outside),
            link(b"secret-link", outside + b"/secret"),
            link(b"up", b"../../.."),
            s.dir(b"d", [link(b"loop", b"loop")]),
        ]
    )
    before_outside = describe(box / "outside")
    await restore(FakeRemote(s, manifest_for(root)), box / "work")  # type: ignore[arg-type]
    got = describe(box / "work")
    assert got[b"escape"][:2] == ("link", outside)
    assert got[b"secret-link"][:2] == ("link", outside + b"/secret")
    assert got[b"d/loop"][:2] == ("link", b"loop")
    assert describe(box / "outside") == before_outside
    assert sorted(os.listdir(box)) == ["outside", "work"]


async def test_nothing_can_be_written_through_a_symlink(box: Path) -> None:
    """``a -> outside`` then a directory ``a`` with a file under it: the tree
    is refused as a duplicate; and even with validation bypassed, every
    entry is created O_EXCL/O_NOFOLLOW from its parent's fd, so the second
    ``a`` collides with the link instead of going through it."""
    s = MemoryStore()
    outside = os.fsencode(box / "outside")
    through = s.dir(b"a", [s.file(b"pwned", b"gotcha")])
    as_file = s.file(b"a", b"gotcha")
    for nodes in ([link(b"a", outside), through], [link(b"a", outside), as_file]):
        await expect_failure(box, s, s.raw_tree(nodes), InvalidArgument)
    assert not (box / "outside" / "pwned").exists()


async def test_validation_bypassed_the_file_system_calls_still_refuse(
    box: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def lenient(data: bytes) -> format_pb2.Tree:
        tree = format_pb2.Tree()
        tree.ParseFromString(data)
        return tree

    monkeypatch.setattr(materialize_mod.wf, "parse_tree", lenient)
    s = MemoryStore()
    outside = os.fsencode(box / "outside")
    cases = [
        [link(b"a", outside), s.dir(b"a", [s.file(b"pwned", b"gotcha")])],
        [link(b"a", outside + b"/secret"), s.file(b"a", b"gotcha")],
        [s.dir(b"a", [s.file(b"pwned", b"gotcha")]), link(b"a", outside)],
    ]
    for nodes in cases:
        await expect_failure(box, s, s.raw_tree(nodes), InvalidArgument, staged=True)
    assert (box / "outside" / "secret").read_text() == "do not touch\n"
    assert not (box / "outside" / "pwned").exists()


async def test_setuid_setgid_sticky_bits_are_stripped(box: Path) -> None:
    s = MemoryStore()
    root = s.tree(
        [
            s.file(b"suid", b"x", mode=0o4755),
            s.file(b"sgid", b"x", mode=0o2755),
            s.dir(b"sticky", [], mode=0o1777),
            s.file(b"all", b"x", mode=0o7777),
        ]
    )
    await restore(FakeRemote(s, manifest_for(root)), box / "work")  # type: ignore[arg-type]
    got = describe(box / "work")
    assert {k: v[1] for k, v in got.items() if not k.startswith(b".sessiond")} == {
        b"suid": 0o755,
        b"sgid": 0o755,
        b"sticky": 0o777,
        b"all": 0o777,
    }


async def test_a_million_entries_by_reuse_fail_fast(box: Path) -> None:
    s = MemoryStore()
    thousand = s.tree([node(f"f{i:04}".encode()) for i in range(1000)])
    root = s.tree(
        [node(f"d{i:04}".encode(), type=wf.DIR, subtree_id=thousand) for i in range(1000)]
    )
    err = await expect_failure(box, s, root, ResourceExhausted)
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(s.requests) == 2  # the root, then the one shared subtree


async def test_a_million_entries_in_one_tree_fail_fast(box: Path) -> None:
    s = MemoryStore()
    # Hand-encoded (building 10^6 Node objects would dominate the test).
    body = b"".join(b"\x0a\x0b\x0a\x07" + b"%07d" % i + b"\x10\x01" for i in range(1_000_000))
    root = s.put(body)
    await expect_failure(box, s, root, ResourceExhausted)


async def test_server_limits_apply(box: Path) -> None:
    s = MemoryStore()
    root = s.tree([s.file(f"{i}".encode(), b"x") for i in range(11)])
    limits = workspace_pb2.WorkspaceLimits(max_files=10)
    await expect_failure(box, s, root, ResourceExhausted, limits=limits)
    chain = s.tree([])
    for _ in range(20):
        chain = s.tree([node(b"d", type=wf.DIR, subtree_id=chain)])
    await expect_failure(
        box, s, chain, ResourceExhausted, limits=workspace_pb2.WorkspaceLimits(max_depth=10)
    )
    long_name = s.tree([s.file(b"n" * 101, b"x")])
    await expect_failure(
        box,
        s,
        long_name,
        ResourceExhausted,
        limits=workspace_pb2.WorkspaceLimits(max_name_bytes=100),
    )


async def test_a_one_terabyte_sparse_file_exceeds_the_total(box: Path) -> None:
    s = MemoryStore()
    zeros = s.put(b"\0" * 4096)
    tb = format_pb2.Node(name=b"huge", type=wf.FILE, size=1 << 40, chunk_ids=[zeros], mode=0o644)
    await expect_failure(box, s, s.tree([tb]), ResourceExhausted)
    assert len(s.requests) == 1  # never asked for the data


async def test_a_corrupted_chunk_is_data_loss(box: Path) -> None:
    s = MemoryStore()
    good = s.file(b"good", b"A" * 10_000)
    bad = s.file(b"bad", b"original content")
    s.chunks[bad.chunk_ids[0]] = (wf.compress(b"tampered content"), 16)
    err = await expect_failure(box, s, s.tree([good, bad]), DataLoss, staged=True)
    assert err.code == grpc.StatusCode.DATA_LOSS


async def test_garbage_frames_and_lying_lengths_are_data_loss(box: Path) -> None:
    s = MemoryStore()
    f = s.file(b"f", b"x" * 1000)
    frame, raw = s.chunks[f.chunk_ids[0]]
    for broken in [(b"not zstd at all", raw), (frame, raw - 1), (frame[:-3], raw)]:
        s.chunks[f.chunk_ids[0]] = broken
        await expect_failure(box, s, s.tree([f]), DataLoss, staged=True)


async def test_chunks_far_larger_than_their_files_are_refused_while_fetching(
    box: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tiny files naming one large chunk each: the plan puts thousands in one
    # request; the source stops holding frames at its ceiling.
    s = MemoryStore()
    files = [
        node(f"f{i:03}".encode(), size=1, chunk_ids=[s.put(os.urandom(200_000))], mode=0o644)
        for i in range(50)
    ]
    monkeypatch.setattr(restore_mod, "FETCH_MAX_BYTES", 1 << 20)
    await expect_failure(box, s, s.tree(files), ResourceExhausted, staged=True)


async def test_a_frame_announcing_another_size_is_data_loss_before_inflating() -> None:
    frame = wf.compress(b"x" * 1000)
    with pytest.raises(DataLoss, match="announces 1000 bytes"):
        wf.decompress(frame, 10)


async def test_a_corrupted_tree_is_data_loss(box: Path) -> None:
    s = MemoryStore()
    sub = s.dir(b"d", [s.file(b"f", b"x")])
    s.chunks[sub.subtree_id] = (wf.compress(wf.serialize_tree([s.file(b"g", b"y")])), 0)
    frame = wf.compress(wf.serialize_tree([s.file(b"g", b"y")]))
    s.chunks[sub.subtree_id] = (frame, len(wf.serialize_tree([s.file(b"g", b"y")])))
    await expect_failure(box, s, s.tree([sub]), DataLoss)


@pytest.mark.parametrize("size", [99, 101, 0], ids=["short", "long", "zero"])
async def test_a_size_that_disagrees_with_the_chunks_is_data_loss(box: Path, size: int) -> None:
    s = MemoryStore()
    f = s.file(b"f", b"z" * 100, chunk_size=30)
    f.size = size
    await expect_failure(box, s, s.tree([s.file(b"a-first", b"fine"), f]), DataLoss, staged=True)


async def test_unknown_types_and_bad_symlinks_are_invalid(box: Path) -> None:
    s = MemoryStore()
    for bad in [
        node(b"dev", type=7),
        node(b"unspecified", type=0),
        link(b"empty-target", b""),
        link(b"nul-target", b"a\0b"),
        node(b"dir-without-tree", type=wf.DIR),
    ]:
        await expect_failure(box, s, s.raw_tree([bad]), InvalidArgument)


async def test_a_manifest_that_does_not_match_its_id_is_data_loss(box: Path) -> None:
    s = MemoryStore()
    root = s.tree([s.file(b"f", b"x")])
    await expect_failure(box, s, root, DataLoss, manifest_id="0" * 64)


async def test_the_snapshots_own_state_dir_is_never_restored(box: Path) -> None:
    """A root ``.sessiond`` (here a link pointing outside) would redirect the
    state and stat-cache writes: it is dropped, the hydrator makes its own."""
    s = MemoryStore()
    root = s.tree([link(b".sessiond", os.fsencode(box / "outside")), s.file(b"f", b"x")])
    report = await restore(FakeRemote(s, manifest_for(root)), box / "work")  # type: ignore[arg-type]
    assert report.skipped == 1
    assert (box / "work" / ".sessiond").is_dir() and not (box / "work" / ".sessiond").is_symlink()
    assert sorted(os.listdir(box / "outside")) == ["secret"]


async def test_an_overlong_symlink_target_is_invalid(box: Path) -> None:
    s = MemoryStore()
    root = s.tree([link(b"long", b"x" * 5000)])
    await expect_failure(box, s, root, InvalidArgument, staged=True)
