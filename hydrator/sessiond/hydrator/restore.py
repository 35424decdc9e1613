"""Restore a session's workspace (and its Claude config state) from a snapshot.

:func:`restore` is the whole hydrate step of a fresh sandbox::

    GetWorkspace(acquire_lease) ─► GetManifest ─► trees (validated, limits)
        ─► materialize into <parent>/.<name>.sessiond-staging-*      (materialize.py)
        ─► config tree into $CLAUDE_CONFIG_DIR, re-keyed for the cwd  (placement.py)
        ─► swap staging into place ─► <cwd>/.sessiond/{state.json, stat cache}

Contract: until the swap the target directory is untouched, and on any error
the staging directories are removed; the error is one of the sessiond tree
(``InvalidArgument``, ``DataLoss``, ``ResourceExhausted``, ``NotFound``, …).
If the target is a mount point (a container volume cannot be renamed) the
staging directory is made inside it and the swap moves entries (the old
ones aside first): the contents are still untouched until then, but the
swap itself is not atomic.
A snapshot's own ``.sessiond`` entry at the root is never restored: the
state directory is always the hydrator's.

The lease epoch acquired here is written to ``state.json`` so that later
snapshots from this sandbox carry it and fence off any older sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sessiond.api.v1 import format_pb2
from sessiond.client import workspace_format as wf
from sessiond.client.errors import Aborted, DataLoss, InvalidArgument, ResourceExhausted

from .materialize import (
    ChunkSource,
    Limits,
    ProgressFn,
    RawChunk,
    TreeSet,
    load_trees,
    materialize,
    remove_tree,
    swap_into_place,
)
from .placement import PlacementReport, default_config_dir, place_config
from .projectkey import Background
from .remote import WorkspaceRemote
from .statcache import StatCache, key_fingerprint
from .statefile import save_state

log = logging.getLogger(__name__)
T = TypeVar("T")

STATE_DIR_NAME = ".sessiond"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


@dataclass
class RestoreReport:
    session_id: str
    snapshot_id: str  # "" when the session had no snapshot yet
    manifest_id: str
    lease_epoch: int
    cwd: Path
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    skipped: int = 0
    trees: int = 0
    config: PlacementReport | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


# -- the chunk source ----------------------------------------------------------


# What one GetChunks answer may hold. The materializer plans data batches to
# hold at most BATCH_WORST_BYTES of legitimate chunks; this stops a snapshot
# whose trees lie about sizes (small files naming huge chunks) from making
# the hydrator hold more than this per request.
FETCH_MAX_BYTES = 256 << 20


def remote_source(remote: WorkspaceRemote, max_bytes: int | None = None) -> ChunkSource:
    """GetChunks as a :data:`ChunkSource`; frames come back unverified (the
    materializer verifies each against its id before use). One request's
    frames may hold at most ``max_bytes`` (default ``FETCH_MAX_BYTES``):
    ``ResourceExhausted`` beyond."""

    async def fetch(ids: Sequence[bytes]) -> list[RawChunk]:
        out: list[RawChunk] = []
        held = 0
        ceiling = FETCH_MAX_BYTES if max_bytes is None else max_bytes
        n = len(ids)
        async for chunk in remote.get_chunks(ids):
            i = len(out)
            if i >= n or chunk.chunk_id != ids[i]:
                raise DataLoss("GetChunks answered out of order")
            data = chunk.data  # (each access of a bytes field makes a copy)
            held += len(data)
            if held > ceiling:
                raise ResourceExhausted(
                    f"{n} chunks hold more than {ceiling} bytes: the snapshot's"
                    " trees understate its chunks"
                )
            out.append((data, chunk.raw_length))
        if len(out) != len(ids):
            raise DataLoss(f"GetChunks returned {len(out)} of {len(ids)} chunks")
        return out

    return fetch


# -- restore -------------------------------------------------------------------


async def restore(
    remote: WorkspaceRemote,
    cwd: Path,
    *,
    state_dir: Path | None = None,
    config_dir: Path | None = None,
    snapshot_id: str | None = None,
    limits: Limits | None = None,
    progress: ProgressFn | None = None,
    epoch: int | None = None,
    project_key: Background | None = None,
) -> RestoreReport:
    """Restore ``snapshot_id`` (default: the latest) into ``cwd`` and take the
    session's lease — or, when ``epoch`` is given, work under that epoch,
    which a managing server already holds (``Aborted`` if it is no longer
    current). With no snapshot yet, ``cwd`` is created empty.
    ``project_key``, the SDK's key of the realpath of ``cwd`` being computed
    (the CLI starts it first: see :mod:`.projectkey`), is used to place the
    config tree instead of importing the SDK here."""
    started = time.monotonic()
    target = await asyncio.to_thread(_resolve, cwd)
    ws = await remote.workspace(acquire_lease=epoch is None)
    if epoch is not None and ws.lease_epoch != epoch:
        raise Aborted(
            f"lease lost: session {remote.session_id} epoch is {ws.lease_epoch},"
            f" caller holds {epoch}"
        )
    key = ws.chunk_key
    lim = limits or Limits.from_proto(ws.limits)
    state_dir = state_dir or target / STATE_DIR_NAME
    if snapshot_id is None:
        snapshot_id = ws.latest_snapshot.snapshot_id if ws.HasField("latest_snapshot") else ""
    report = RestoreReport(remote.session_id, snapshot_id, "", ws.lease_epoch, target)

    if not snapshot_id:
        await asyncio.to_thread(target.mkdir, parents=True, exist_ok=True)
        _save(report, state_dir, ws.sdk_session_id)
        log.info("restore session=%s: no snapshot yet, epoch %d", report.session_id, ws.lease_epoch)
        return report

    resp = await remote.get_manifest(snapshot_id=snapshot_id)
    if wf.manifest_id(key, resp.manifest) != resp.manifest_id:
        raise DataLoss(f"manifest {resp.manifest_id} does not match its id")
    manifest = wf.parse_manifest(resp.manifest)
    report.manifest_id = resp.manifest_id
    source = remote_source(remote)

    # Every tree is fetched and checked before a single byte is written.
    skip = frozenset({STATE_DIR_NAME.encode()})
    ts = await load_trees(source, key, manifest.root_tree_id, lim, skip_root_names=skip)
    config_ts: TreeSet | None = None
    if manifest.config_tree_id:
        config_ts = await load_trees(source, key, manifest.config_tree_id, lim)

    await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
    parent_fd = os.open(target.parent, _DIR_FLAGS)
    # A mount point (a container volume) cannot be renamed: stage inside it
    # and move its entries instead (not atomic, see _swap_contents).
    in_place = _is_mount_point(parent_fd, target.name)
    work_fd = os.open(target.name, _DIR_FLAGS, dir_fd=parent_fd) if in_place else parent_fd
    stage_as = "workspace" if in_place else target.name
    try:
        await asyncio.to_thread(_remove_leftovers, work_fd, stage_as, in_place)
        root_mode = _existing_mode(parent_fd, target.name)
        result = await materialize(
            source, key, ts, work_fd, stage_as, lim, root_mode=root_mode, progress=progress
        )
        cfg = config_dir or default_config_dir()
        # Placed before the swap (all or nothing for the workspace), unless
        # the config dir lives inside the workspace the swap replaces.
        cfg_inside = _inside(cfg, target)
        try:
            if config_ts is not None and not cfg_inside:
                report.config = await _place_config(
                    source, key, config_ts, lim, cfg, manifest, target, project_key
                )
            if in_place:
                await _to_thread_to_the_end(_swap_contents, work_fd, result.staging_name)
            else:
                await _to_thread_to_the_end(
                    swap_into_place, parent_fd, result.staging_name, target.name
                )
        except BaseException:
            await asyncio.to_thread(remove_tree, work_fd, result.staging_name)
            raise
        if in_place:  # renaming changed the ctime of the top-level entries
            result.records = [
                (rel, st if b"/" in rel else os.stat(rel, dir_fd=work_fd), ids)
                for rel, st, ids in result.records
            ]
    finally:
        if in_place:
            os.close(work_fd)
        os.close(parent_fd)
    if config_ts is not None and cfg_inside:
        report.config = await _place_config(
            source, key, config_ts, lim, cfg, manifest, target, project_key
        )

    report.files, report.dirs, report.symlinks = result.files, result.dirs, result.symlinks
    report.bytes, report.skipped = result.total_bytes, result.skipped
    tree_ids = set(ts.trees) | (set(config_ts.trees) if config_ts else set())
    report.trees = len(tree_ids)
    cache = StatCache(os.fsdecode(target), key_fingerprint(key))
    for relpath, st, chunk_ids in result.records:
        cache.record(relpath, st, chunk_ids)
    cache.add_trees(tree_ids)
    await asyncio.to_thread(cache.save, state_dir, snapshot_id)
    _save(report, state_dir, manifest.sdk_session_id or ws.sdk_session_id)
    report.seconds = time.monotonic() - started
    log.info(
        "restore session=%s snapshot=%s files=%d bytes=%d trees=%d epoch=%d in %.2fs",
        report.session_id,
        snapshot_id,
        report.files,
        report.bytes,
        report.trees,
        report.lease_epoch,
        report.seconds,
    )
    return report


async def _place_config(
    source: ChunkSource,
    key: bytes,
    ts: TreeSet,
    lim: Limits,
    cfg: Path,
    manifest: format_pb2.Manifest,
    target: Path,
    project_key: Background | None,
) -> PlacementReport:
    """Materialize the config tree into a staging directory inside the config
    dir (same file system, so placement is renames), then place it."""
    new_key = None
    if project_key is not None and project_key.directory == os.fsdecode(target):
        new_key = await asyncio.to_thread(project_key.result)
    await asyncio.to_thread(cfg.mkdir, parents=True, exist_ok=True)
    cfg_fd = os.open(cfg, _DIR_FLAGS)
    try:
        staged = await materialize(source, key, ts, cfg_fd, "config", lim)
        try:
            return await _to_thread_to_the_end(
                place_config,
                cfg_fd,
                staged.staging_name,
                session_id=manifest.sdk_session_id,
                project_key=manifest.project_key,
                old_cwd=os.fsdecode(manifest.source_cwd),
                new_cwd=os.fsdecode(target),
                new_project_key=new_key,
            )
        finally:
            await asyncio.to_thread(remove_tree, cfg_fd, staged.staging_name)
    finally:
        os.close(cfg_fd)


async def _to_thread_to_the_end(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``asyncio.to_thread`` that, when cancelled, still waits for the thread:
    renames must be finished (or failed) before anyone cleans up after them."""
    task = asyncio.ensure_future(asyncio.to_thread(func, *args, **kwargs))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
        raise


def _save(report: RestoreReport, state_dir: Path, sdk_session_id: str) -> None:
    save_state(
        state_dir,
        session_id=report.session_id,
        snapshot_id=report.snapshot_id,
        manifest_id=report.manifest_id,
        lease_epoch=report.lease_epoch,
        sdk_session_id=sdk_session_id,
        cwd=os.fsdecode(report.cwd),
    )


def _resolve(cwd: Path) -> Path:
    # The realpath: it is what the CLI records as its cwd and keys projects by.
    target = Path(os.path.realpath(cwd))
    if target == target.parent:
        raise InvalidArgument("cannot restore into the file system root")
    return target


def _existing_mode(parent_fd: int, name: str) -> int:
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return 0o755
    return stat.S_IMODE(st.st_mode) if stat.S_ISDIR(st.st_mode) else 0o755


def _inside(path: Path, root: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(root)


def _is_mount_point(parent_fd: int, name: str) -> bool:
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_dev != os.fstat(parent_fd).st_dev


def _remove_leftovers(fd: int, name: str, in_place: bool) -> None:
    """Staging and old directories an interrupted restore left in ``fd``."""
    prefixes = (
        f".{name}.sessiond-staging-",
        ".sessiond-old-" if in_place else f".{name}.sessiond-old-",
    )
    for entry in os.listdir(fd):
        if entry.startswith(prefixes):
            log.info("removing a leftover of an interrupted restore")
            with contextlib.suppress(OSError):
                remove_tree(fd, entry)


def _swap_contents(fd: int, staging: str) -> None:
    """Replace the entries of directory ``fd`` by those of its subdirectory
    ``staging``. The current entries (the state directory too: it may be
    the old workspace's, even a link) are moved
    into an ``.sessiond-old-*`` directory first and moved back if that fails;
    a crash while moving the new ones in leaves a mix, which the next restore
    (or snapshot retry) of the session repairs."""
    old = f".sessiond-old-{secrets.token_hex(6)}"
    os.mkdir(old, 0o700, dir_fd=fd)
    old_fd = os.open(old, _DIR_FLAGS, dir_fd=fd)
    src_fd = os.open(staging, _DIR_FLAGS, dir_fd=fd)
    moved: list[str] = []
    try:
        try:
            for entry in os.listdir(fd):
                if entry not in (staging, old):
                    os.rename(entry, entry, src_dir_fd=fd, dst_dir_fd=old_fd)
                    moved.append(entry)
        except BaseException:
            for entry in moved:
                os.rename(entry, entry, src_dir_fd=old_fd, dst_dir_fd=fd)
            raise
        for entry in os.listdir(src_fd):
            os.rename(entry, entry, src_dir_fd=src_fd, dst_dir_fd=fd)
    finally:
        os.close(old_fd)
        os.close(src_fd)
    os.rmdir(staging, dir_fd=fd)
    remove_tree(fd, old)
