"""Taking a snapshot of a working directory (and the session's Claude config
state) and committing it.

Write order is the invariant: every pack is stored (``Uploader.finish``)
before the manifest is written, and the manifest before the commit, which
alone makes the snapshot visible. The stat cache is saved only after a
successful commit, so everything it claims was part of a committed snapshot.
If PutManifest answers FAILED_PRECONDITION (something the cache claimed is
stored is gone, e.g. collected), the snapshot is retried once from an empty
cache, reading and offering everything.

Threads: the walk and tree building run on one worker thread, files are read
and hashed on a pool of ``READERS``, zstd runs on a pool of ``COMPRESSORS``;
the event loop only does RPCs. Memory: see :mod:`.upload`.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sessiond.api.v1 import common_pb2, format_pb2, workspace_pb2
from sessiond.client import workspace_format as wf
from sessiond.client.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)

from . import projectkey
from .chunker import ChunkParams
from .configstate import CACHE_FILE_NAME, ConfigCollector, ConfigState, project_key
from .progress import Progress
from .remote import WorkspaceRemote
from .statcache import StatCache, key_fingerprint
from .statefile import load_state, save_state
from .trees import BuildResult, TreeBuilder
from .upload import PACK_BYTES, Uploader, UploadStats
from .walk import Entry, Excludes, Limits, WalkReport

log = logging.getLogger(__name__)

STATE_DIR_NAME = ".sessiond"
READERS = 2
COMPRESSORS = 2
_COMMIT_RETRIES = 3


@dataclass
class SnapshotState:
    """What a long-running process (``watch``) keeps between snapshots:
    the caches in memory (no reload) and the remembered directory entries.
    ``take_dirty`` returns the directories to rescan (None: all of them);
    ``return_dirty`` gives them back if the snapshot failed. ``on_scan`` is
    called with (relpath, path) before a directory is scanned (inotify adds
    its watch there)."""

    cache: StatCache | None = None
    config_cache: StatCache | None = None
    memo: dict[bytes, list[Entry]] = field(default_factory=dict)
    take_dirty: Callable[[], set[bytes] | None] = lambda: None
    return_dirty: Callable[[set[bytes] | None], None] = lambda _: None
    on_scan: Callable[[bytes, bytes], None] | None = None
    epoch: int | None = None
    # The last committed snapshot and what it covered (trees, transcript).
    last: common_pb2.Snapshot | None = None
    last_key: tuple[bytes, bytes, str, int] | None = None


def default_state_dir(cwd: Path) -> Path:
    return Path(os.path.realpath(cwd)) / STATE_DIR_NAME


async def lease_epoch(remote: WorkspaceRemote, state_dir: Path) -> int:
    """The fencing epoch this workspace holds: the one a restore (or an
    earlier snapshot) of this session recorded in ``<state_dir>/state.json``,
    else a newly acquired one, recorded there for the next snapshot."""
    state = await asyncio.to_thread(lambda: load_state(state_dir) or {})
    epoch = state.get("lease_epoch")
    if state.get("session_id") == remote.session_id and isinstance(epoch, int):
        return epoch
    ws = await remote.workspace(acquire_lease=True)
    state.update(session_id=remote.session_id, lease_epoch=int(ws.lease_epoch))
    await asyncio.to_thread(lambda: save_state(state_dir, **state))
    return int(ws.lease_epoch)


@dataclass(frozen=True)
class PendingCommit:
    """A commit sent but not acknowledged, kept in ``state.json``.

    A commit whose reply was lost (the server died after committing and our
    retries ran out) is sent again, with the same idempotency key and
    manifest, when the snapshot is re-run from the same state: the server
    hands back the snapshot it already made instead of committing a
    duplicate, and no second manifest is stored. "The same state" is
    ``of``: the session, both trees (workspace and session state), the
    transcript position, the lease epoch and the trigger."""

    of: list[Any]
    key: str
    manifest_id: str

    @staticmethod
    def identity(
        session_id: str, cover: tuple[bytes, bytes, str, int], epoch: int, trigger: int
    ) -> list[Any]:
        root, config, t_uuid, t_seq = cover
        return [session_id, root.hex(), config.hex(), t_uuid, t_seq, epoch, trigger]

    @staticmethod
    def load(state_dir: Path, of: list[Any]) -> PendingCommit | None:
        pending = (load_state(state_dir) or {}).get("pending_commit")
        if not isinstance(pending, dict) or pending.get("of") != of:
            return None
        key, manifest_id = pending.get("key"), pending.get("manifest_id")
        if not (isinstance(key, str) and key and isinstance(manifest_id, str) and manifest_id):
            return None
        return PendingCommit(of, key, manifest_id)

    def save(self, state_dir: Path) -> None:
        state = load_state(state_dir) or {}
        state["pending_commit"] = {"of": self.of, "key": self.key, "manifest_id": self.manifest_id}
        save_state(state_dir, **state)

    @staticmethod
    def clear(state_dir: Path) -> None:
        state = load_state(state_dir) or {}
        if state.pop("pending_commit", None) is not None:
            save_state(state_dir, **state)


def _working_dir(cwd: Path) -> Path:
    real = Path(os.path.realpath(cwd))
    if not real.is_dir():
        raise InvalidArgument(f"working directory {cwd} is not a directory")
    return real


@dataclass
class _Built:
    root_tree_id: bytes
    totals: tuple[int, int, int, int]
    config: ConfigState | None
    result: BuildResult
    config_result: BuildResult | None
    config_trees: list[bytes]
    upload: UploadStats
    report: WalkReport


async def snapshot(
    remote: WorkspaceRemote,
    cwd: Path,
    *,
    state_dir: Path | None = None,
    config_dir: Path | None = None,
    trigger: int = common_pb2.SNAPSHOT_TRIGGER_MANUAL,
    excludes: Sequence[str] = (),
    epoch: int | None = None,
    progress: Progress | None = None,
    include_transcript: bool = False,
    sdk_session_id: str | None = None,
    state: SnapshotState | None = None,
    skip_unchanged: bool = False,
    transcript_position: tuple[str, int] | None = None,
) -> common_pb2.Snapshot:
    """Snapshot ``cwd`` (plus, when the session has an SDK session id and
    ``config_dir`` is given, its file history and optionally its
    transcript) and commit it under ``epoch`` (default: :func:`lease_epoch`).
    With ``skip_unchanged`` and a ``state`` whose last snapshot covers
    exactly the same trees and transcript position, nothing is committed and
    that snapshot is returned. ``transcript_position`` (uuid, seq) overrides
    the position read from the local transcript — the managed server passes
    the position in its TranscriptService, which the SDK mirrors to.

    Raises ``Aborted`` if the lease was lost, ``ResourceExhausted`` /
    ``InvalidArgument`` if the workspace breaks a limit (naming the path),
    and the sessiond error of any failed RPC. Returns the committed snapshot.
    """
    started = time.monotonic()
    progress = progress or Progress()
    real = _working_dir(cwd)
    state_dir = state_dir or real / STATE_DIR_NAME
    state = state or SnapshotState()
    ws = await remote.workspace()
    key = bytes(ws.chunk_key)
    if len(key) != 32:
        raise FailedPrecondition("the server sent no valid chunk key")
    if epoch is None:
        epoch = state.epoch if state.epoch is not None else await lease_epoch(remote, state_dir)
    sid = sdk_session_id if sdk_session_id is not None else ws.sdk_session_id
    limits = Limits.from_proto(ws.limits)
    # The manifest names the project key: ask the SDK now, in a child, if it
    # is not remembered (the config collector, when it runs, asks itself).
    key_job = None
    if not (config_dir is not None and sid) and projectkey.remembered(real, state_dir) is None:
        key_job = projectkey.Background(str(real))
    caches = _caches(state, state_dir, real, config_dir, sid, key)
    dirty = state.take_dirty()
    try:
        for fresh in (False, True):
            if fresh:
                log.warning("server lacks data the stat cache vouched for: full snapshot")
                caches = (
                    StatCache(caches[0].root, caches[0].fingerprint),
                    StatCache(caches[1].root, caches[1].fingerprint),
                )
                state.memo.clear()
                dirty = None
            progress.start("snapshot")
            marks = [time.monotonic()]
            built = await _build(
                remote,
                real,
                key,
                limits,
                caches,
                excludes,
                progress,
                dirty,
                state,
                config_dir if sid else None,
                sid,
                include_transcript,
                state_dir,
            )
            if transcript_position is not None:
                t_uuid, t_seq = transcript_position
            elif built.config:
                t_uuid, t_seq = built.config.position.uuid, built.config.position.seq
            else:
                t_uuid, t_seq = "", 0
            cover = (
                built.root_tree_id,
                built.config.tree_id if built.config else b"",
                t_uuid,
                t_seq,
            )
            if skip_unchanged and state.last is not None and state.last_key == cover:
                _remember(state, state_dir, caches, built, state.last.snapshot_id, save=False)
                return state.last
            identity = PendingCommit.identity(remote.session_id, cover, epoch, trigger)
            pending = await asyncio.to_thread(PendingCommit.load, state_dir, identity)
            if pending is not None:
                manifest_id = pending.manifest_id
                break
            manifest = format_pb2.Manifest(
                version=wf.FORMAT_VERSION,
                root_tree_id=built.root_tree_id,
                config_tree_id=built.config.tree_id if built.config else b"",
                source_cwd=os.fsencode(real),
                sdk_session_id=sid,
                project_key=(
                    built.config.project_key
                    if built.config
                    else _manifest_project_key(real, state_dir, key_job)
                ),
                transcript_uuid=t_uuid,
                transcript_seq=t_seq,
                create_time_unix_ms=int(time.time() * 1000),
            ).SerializeToString(deterministic=True)
            try:
                marks.append(time.monotonic())
                manifest_id = await remote.put_manifest(manifest)
            except FailedPrecondition:
                if fresh or not _used(caches):
                    raise
                continue
            break
    except BaseException:
        state.return_dirty(dirty)
        raise
    finally:
        if key_job is not None:
            key_job.close()
    files, dirs, links, nbytes = built.totals
    stats = common_pb2.SnapshotStats(
        files=files,
        dirs=dirs,
        symlinks=links,
        bytes=nbytes,
        new_bytes=built.upload.new_bytes,
        new_chunks=built.upload.new_chunks,
        uploaded_bytes=built.upload.uploaded_bytes,
        skipped=built.report.total,
        duration_seconds=time.monotonic() - started,
    )
    request = workspace_pb2.CommitSnapshotRequest(
        manifest_id=manifest_id,
        parent_snapshot_id=ws.latest_snapshot.snapshot_id if ws.HasField("latest_snapshot") else "",
        lease_epoch=epoch,
        trigger=trigger,  # type: ignore[arg-type]
        transcript_uuid=t_uuid,
        transcript_seq=t_seq,
        file_history_included=bool(built.config and built.config.file_history_included),
        stats=stats,
    )
    reused = pending is not None
    if pending is None:
        pending = PendingCommit(identity, uuid.uuid4().hex, manifest_id)
        await asyncio.to_thread(pending.save, state_dir)
    request.idempotency_key = pending.key
    try:
        marks.append(time.monotonic())
        snap = await _commit(remote, request)
        marks.append(time.monotonic())
    except BaseException as exc:
        state.return_dirty(dirty)
        if reused and isinstance(exc, NotFound):
            # The pending manifest was collected meanwhile: start afresh next time.
            await asyncio.to_thread(PendingCommit.clear, state_dir)
        raise
    await asyncio.to_thread(PendingCommit.clear, state_dir)
    _remember(state, state_dir, caches, built, snap.snapshot_id)
    marks.append(time.monotonic())
    log.debug(
        "snapshot phases: build+upload %.3f s, manifest %.3f s, commit %.3f s, cache %.3f s",
        *(b - a for a, b in itertools.pairwise(marks)),
    )
    state.last, state.last_key, state.epoch = snap, cover, epoch
    stats.duration_seconds = time.monotonic() - started
    log.info(
        "snapshot %s of session %s: %d files, %d bytes, %d new bytes, %d sent, %.3f s",
        snap.snapshot_id,
        remote.session_id,
        files,
        nbytes,
        stats.new_bytes,
        stats.uploaded_bytes,
        stats.duration_seconds,
    )
    progress.done(
        snapshot_id=snap.snapshot_id,
        files=files,
        bytes=nbytes,
        new_bytes=stats.new_bytes,
        uploaded_bytes=stats.uploaded_bytes,
        skipped=stats.skipped,
    )
    return snap


def _caches(
    state: SnapshotState,
    state_dir: Path,
    real: Path,
    config_dir: Path | None,
    sid: str,
    key: bytes,
) -> tuple[StatCache, StatCache]:
    """The workspace's and the config state's caches: the ones kept in
    memory if they are for this root and key, else loaded from disk."""
    root = os.fsdecode(os.fsencode(real))
    config_root = f"{os.path.realpath(config_dir) if config_dir else ''}\0{sid}"
    cache = state.cache
    if cache is None or cache.root != root or cache.fingerprint != key_fingerprint(key):
        cache = StatCache.load(state_dir, root=root, chunk_key=key)
        state.memo.clear()
    config_cache = state.config_cache
    if (
        config_cache is None
        or config_cache.root != config_root
        or config_cache.fingerprint != cache.fingerprint
    ):
        config_cache = StatCache.load(
            state_dir, root=config_root, chunk_key=key, name=CACHE_FILE_NAME
        )
    return cache, config_cache


def _manifest_project_key(real: Path, state_dir: Path, job: projectkey.Background | None) -> str:
    if job is None:
        return project_key(real, state_dir)
    key = job.result()
    projectkey.remember(str(real), key, state_dir)
    return key


def _used(caches: tuple[StatCache, StatCache]) -> bool:
    return not all(c.is_empty() for c in caches)


async def _build(
    remote: WorkspaceRemote,
    real: Path,
    key: bytes,
    limits: Limits,
    caches: tuple[StatCache, StatCache],
    excludes: Sequence[str],
    progress: Progress,
    dirty: set[bytes] | None,
    state: SnapshotState,
    config_dir: Path | None,
    sid: str,
    include_transcript: bool,
    state_dir: Path,
) -> _Built:
    """Walk, read, build and upload; returns once every pack is stored."""
    read_pool = ThreadPoolExecutor(READERS, thread_name_prefix="sessiond-read")
    compress_pool = ThreadPoolExecutor(COMPRESSORS, thread_name_prefix="sessiond-zstd")
    uploader = Uploader(
        remote,
        compress_pool,
        max_ids_per_request=min(limits.max_chunks_per_request, 10_000),
        pack_bytes=min(PACK_BYTES, limits.max_pack_bytes),
        progress=progress,
    )
    params = ChunkParams.for_limit(limits.max_chunk_bytes)
    report = WalkReport()
    make = functools.partial(
        TreeBuilder,
        key=key,
        uploader=uploader,
        read_pool=read_pool,
        limits=limits,
        params=params,
        now_ns=time.time_ns(),
        report=report,
        progress=progress,
    )
    builder = make(
        cache=caches[0],
        excludes=Excludes(excludes),
        dirty=dirty,
        memo=state.memo,
        on_scan=state.on_scan,
    )
    cfg_builder = make(cache=caches[1])

    def work() -> tuple[bytes, tuple[int, int, int, int], ConfigState | None, list[bytes]]:
        root = builder.visit(os.fsencode(real))
        collector = None
        if config_dir is not None and sid:
            collector = ConfigCollector(
                cfg_builder,
                config_dir,
                real,
                sid,
                include_transcript=include_transcript,
                state_dir=state_dir,
            )
            collector.visit()
        builder.build()
        cfg_builder.build()
        config = collector.finish() if collector is not None else None
        return root.tree_id, root.totals, config, collector.trees if collector else []

    try:
        root_id, totals, config, config_trees = await asyncio.to_thread(work)
        upload = await uploader.finish()
    except BaseException:
        await uploader.abort()
        raise
    finally:
        read_pool.shutdown(wait=False, cancel_futures=True)
        compress_pool.shutdown(wait=False, cancel_futures=True)
    return _Built(
        root_id, totals, config, builder.result, cfg_builder.result, config_trees, upload, report
    )


async def _commit(
    remote: WorkspaceRemote, request: workspace_pb2.CommitSnapshotRequest
) -> common_pb2.Snapshot:
    """Commit, retrying transient failures with the same idempotency key
    (a retry of a commit that did land returns the same snapshot)."""
    delay = 0.25
    for attempt in range(_COMMIT_RETRIES + 1):
        try:
            return await remote.commit(request)
        except (Unavailable, DeadlineExceeded) as exc:
            if attempt == _COMMIT_RETRIES:
                raise
            log.warning("commit failed (%s), retrying", exc.code.name)
            await asyncio.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover


def _remember(
    state: SnapshotState,
    state_dir: Path,
    caches: tuple[StatCache, StatCache],
    built: _Built,
    snapshot_id: str,
    *,
    save: bool = True,
) -> None:
    """After the commit: fold what the build learned into the caches, keep
    them in ``state`` and write them to disk (best effort)."""
    cache, config_cache = caches
    built.result.apply(cache, state.memo)
    cache.replace_trees(cache.current_trees())
    if built.config_result is not None:
        built.config_result.apply(config_cache)
        config_cache.replace_trees(config_cache.current_trees() | set(built.config_trees))
    state.cache, state.config_cache = cache, config_cache
    if not save:
        return
    try:
        cache.save(state_dir, snapshot_id)
        config_cache.save(state_dir, snapshot_id, name=CACHE_FILE_NAME)
    except OSError as exc:
        log.warning("could not save the stat cache in %s: %s", state_dir, exc)
