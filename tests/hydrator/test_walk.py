"""scan_dir, Excludes, Budget: names as bytes, nothing followed, odd entries
skipped and counted, limits enforced while walking."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sessiond.client import workspace_format as wf
from sessiond.client.errors import InvalidArgument, ResourceExhausted
from sessiond.hydrator.walk import Budget, Excludes, Limits, WalkReport, scan_dir


def scan(path: Path, *, excludes: Excludes | None = None, limits: Limits | None = None,
         depth: int = 0, rel: bytes = b"") -> tuple[dict[bytes, object], WalkReport]:  # fmt: skip
    report = WalkReport()
    entries = scan_dir(
        os.fsencode(path), rel, depth, excludes=excludes or Excludes(),
        limits=limits or Limits(), report=report,
    )  # fmt: skip
    assert entries is not None
    assert [e.name for e in entries] == sorted(e.name for e in entries)
    return {e.name: e for e in entries}, report


def test_non_utf8_names_round_trip(tmp_path: Path) -> None:
    name = b"\xff\xfe-caf\xe9"
    with open(os.fsencode(tmp_path) + b"/" + name, "wb") as f:
        f.write(b"x")
    entries, _ = scan(tmp_path)
    assert list(entries) == [name]


def test_symlinks_are_recorded_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "abs")
    os.symlink("../outside/secret", root / "rel")
    os.symlink("nowhere", root / "dangling")
    entries, report = scan(root)
    assert {n: (e.type, e.target) for n, e in entries.items()} == {  # type: ignore[attr-defined]
        b"abs": (wf.SYMLINK, os.fsencode(outside)),
        b"rel": (wf.SYMLINK, b"../outside/secret"),
        b"dangling": (wf.SYMLINK, b"nowhere"),
    }
    assert report.total == 0


def test_fifos_sockets_devices_are_skipped_and_counted(tmp_path: Path) -> None:
    import socket

    os.mkfifo(tmp_path / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    (tmp_path / "file").write_text("f")
    if os.geteuid() == 0:
        os.mknod(tmp_path / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        os.mknod(tmp_path / "blk", stat.S_IFBLK | 0o600, os.makedev(7, 0))
    try:
        entries, report = scan(tmp_path)
    finally:
        sock.close()
    assert list(entries) == [b"file"]
    assert report.skipped["fifo"] == 1 and report.skipped["socket"] == 1
    if os.geteuid() == 0:
        assert report.skipped["char-device"] == 1 and report.skipped["block-device"] == 1
    assert {kind for kind, _ in report.examples} >= {"fifo", "socket"}


def test_setuid_bits_are_stripped() -> None:
    assert wf.node_mode(stat.S_IFREG | 0o6755) == 0o755
    assert wf.node_mode(stat.S_IFDIR | 0o1777) == 0o777


def test_state_dir_is_always_excluded_at_the_root(tmp_path: Path) -> None:
    (tmp_path / ".sessiond").mkdir()
    (tmp_path / "sub" / ".sessiond").mkdir(parents=True)
    entries, _ = scan(tmp_path)
    assert list(entries) == [b"sub"]
    sub, _ = scan(tmp_path / "sub", rel=b"sub", depth=1)
    assert list(sub) == [b".sessiond"]  # only the root's is the hydrator's


@pytest.mark.parametrize(
    ("pattern", "rel", "name", "is_dir", "excluded"),
    [
        ("node_modules", b"a/node_modules", b"node_modules", True, True),
        ("*.pyc", b"x/y/z.pyc", b"z.pyc", False, True),
        ("*.pyc", b"x/y/z.py", b"z.py", False, False),
        ("build/", b"build", b"build", True, True),
        ("build/", b"build", b"build", False, False),
        ("logs/*.log", b"logs/a.log", b"a.log", False, True),
        ("logs/*.log", b"sub/logs/a.log", b"a.log", False, False),
        ("/dist", b"dist", b"dist", True, True),
        ("**/cache", b"a/b/cache", b"cache", True, True),
        ("caf\xe9", "caf\xe9".encode(), "caf\xe9".encode(), False, True),
    ],
)
def test_excludes(pattern: str, rel: bytes, name: bytes, is_dir: bool, excluded: bool) -> None:
    assert Excludes([pattern]).excluded(rel, name, is_dir) is excluded


def test_excluded_entries_are_left_out(tmp_path: Path) -> None:
    (tmp_path / "node_modules").mkdir()
    (tmp_path / "keep.py").write_text("")
    (tmp_path / "drop.pyc").write_text("")
    entries, report = scan(tmp_path, excludes=Excludes(["node_modules/", "*.pyc"]))
    assert list(entries) == [b"keep.py"]
    assert report.total == 0


def test_name_length_limit(tmp_path: Path) -> None:
    (tmp_path / ("n" * 20)).write_text("")
    with pytest.raises(InvalidArgument, match="max_name_bytes") as info:
        scan(tmp_path, limits=Limits(max_name_bytes=10))
    assert "n" * 20 in str(info.value)


def test_depth_limit(tmp_path: Path) -> None:
    (tmp_path / "deep").write_text("")
    scan(tmp_path, limits=Limits(max_depth=3), depth=2)
    with pytest.raises(ResourceExhausted, match="max_depth"):
        scan(tmp_path, limits=Limits(max_depth=3), depth=3, rel=b"a/b/c")


def test_budget_counts_entries_and_bytes() -> None:
    budget = Budget(Limits(max_files=3, max_total_bytes=100))
    budget.add(2, 50, b"a")
    with pytest.raises(ResourceExhausted, match="max_files") as info:
        budget.add(2, 0, b"a/b")
    assert "a/b" in str(info.value)
    budget = Budget(Limits(max_files=10, max_total_bytes=100))
    with pytest.raises(ResourceExhausted, match="max_total_bytes"):
        budget.add(1, 101, b"big")


def test_vanished_directory_is_none(tmp_path: Path) -> None:
    report = WalkReport()
    got = scan_dir(os.fsencode(tmp_path / "gone"), b"gone", 1, excludes=Excludes(),
                   limits=Limits(), report=report)  # fmt: skip
    assert got is None


def test_type_is_taken_from_lstat(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    os.symlink("d", tmp_path / "to-dir")
    entries, _ = scan(tmp_path)
    assert entries[b"d"].type == wf.DIR  # type: ignore[attr-defined]
    assert entries[b"to-dir"].type == wf.SYMLINK  # type: ignore[attr-defined]
