"""Place a snapshot's Claude config state for a *new* cwd.

The config tree carries ``projects/<old key>/<sid>.jsonl`` (the transcript),
``projects/<old key>/<sid>/…`` (subagents) and ``file-history/<sid>/…``
(file checkpoints). After :func:`restore` materialized it into a staging
directory inside the config dir, :func:`place_config`:

* moves the transcript to ``projects/<project_key_for_directory(new cwd)>/``
  (the SDK's function, never a copy of it), and the subagent directory next to
  it, rewriting paths inside every JSON line;
* moves ``file-history/<sid>/`` into place (backup names are kept: the CLI
  reads them from ``backupFileName``, it does not recompute them);
* takes nothing else: other names, symlinks, devices are dropped and
  counted, so a snapshot cannot plant ``settings.json`` (hooks) or a link.

**Path rewriting** (:func:`rewrite_paths`) works on parsed JSON values: a
string equal to the old cwd, or starting with old cwd + ``/``, gets the new
cwd as its prefix. Such a whole-string path names a place in the workspace,
and the workspace moved as a whole, so the rewritten string names the same
thing; the CLI writes them as the ``cwd`` of every entry, in the
``environment`` attachment, tool inputs (``file_path``), tool results'
``filePath`` and file-history ``realParentDir`` (which ``rewind_files``
compares with the live parent directory's realpath — stale, it silently
restores nothing). Text that merely *contains* a path (tool output, the
environment note, Bash commands) is history and is left alone, as are
thinking blocks (their signature covers them). The new cwd is its realpath,
as the CLI records it. Untouched lines keep their exact bytes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sessiond.client.errors import InvalidArgument

from . import projectkey
from .materialize import remove_tree, swap_into_place

log = logging.getLogger(__name__)

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_MAX_JSON_BYTES = 16 << 20
_UNSIGNED_BLOCKS = frozenset({"thinking", "redacted_thinking"})


@dataclass
class PlacementReport:
    project_key: str = ""  # the new one
    transcript: bool = False
    subagent_files: int = 0
    file_history_files: int = 0
    rewritten_lines: int = 0
    dropped: int = 0  # entries not taken (unknown names, symlinks, …)


def default_config_dir() -> Path:
    """``$CLAUDE_CONFIG_DIR``, else ``~/.claude`` (the CLI's own default)."""
    env = os.environ.get("CLAUDE_CONFIG_DIR")
    return Path(env) if env else Path.home() / ".claude"


# -- rewriting -----------------------------------------------------------------


def rewrite_paths(value: Any, old: str, new: str) -> tuple[Any, bool]:
    """``value`` with every path string into ``old`` moved under ``new``;
    returns (value, changed). Keys of ``trackedFileBackups`` are paths too."""
    if not old.startswith("/") or old == "/" or old == new:
        return value, False
    return _rewrite(value, old.rstrip("/"), new.rstrip("/") or "/", False)


def _rewrite(value: Any, old: str, new: str, keys_are_paths: bool) -> tuple[Any, bool]:
    if isinstance(value, str):
        if value == old or value.startswith(old + "/"):
            return new + value[len(old) :], True
        return value, False
    if isinstance(value, list):
        changed = False
        for i, item in enumerate(value):
            value[i], c = _rewrite(item, old, new, False)
            changed |= c
        return value, changed
    if isinstance(value, dict):
        if value.get("type") in _UNSIGNED_BLOCKS:
            return value, False
        changed = False
        out: dict[str, Any] = {}
        for k, item in value.items():
            if keys_are_paths:
                k, c = _rewrite(k, old, new, False)
                changed |= c
            out[k], c = _rewrite(item, old, new, k == "trackedFileBackups")
            changed |= c
        return out, changed
    return value, False


def rewrite_line(line: bytes, old: str, new: str) -> bytes | None:
    """One JSONL line rewritten, or None when nothing changed (or it is not
    JSON: a torn last line is kept as it was)."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    entry, changed = rewrite_paths(entry, old, new)
    if not changed:
        return None
    # The CLI writes compact JSON with raw (unescaped) non-ASCII.
    return json.dumps(entry, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


# -- placing -------------------------------------------------------------------


def place_config(
    config_fd: int,
    staging: str,
    *,
    session_id: str,
    project_key: str,
    old_cwd: str,
    new_cwd: str,
    new_project_key: str | None = None,
) -> PlacementReport:
    """Move what belongs to ``session_id`` from ``staging`` (a materialized
    config tree inside the config dir ``config_fd``) into place for
    ``new_cwd``. ``project_key`` (the old key) picks the transcript when
    several keys hold one. Replaces an existing transcript, subagent dir and
    file-history dir of that session; leaves everything else alone.
    ``new_project_key`` is the SDK's key of ``new_cwd`` when the caller has
    it already (else the SDK is asked here)."""
    if not _SESSION_ID.fullmatch(session_id):
        raise InvalidArgument(f"config tree for an invalid session id {session_id[:60]!r}")
    new_cwd = os.path.realpath(new_cwd)
    report = PlacementReport(project_key=new_project_key or projectkey.compute(new_cwd))
    src = os.open(staging, _DIR, dir_fd=config_fd)
    try:
        report.dropped += _count_others(src, {"projects", "file-history"})
        with _opened(src, "projects") as projects:
            if projects is not None:
                _place_transcript(
                    config_fd, projects, session_id, project_key, old_cwd, new_cwd, report
                )
        with _opened(src, "file-history") as history:
            if history is not None:
                report.dropped += _count_others(history, {session_id})
                if _is_dir(history, session_id):
                    report.file_history_files = _sanitize(history, session_id, report)
                    dest = _ensure_dirs(config_fd, "file-history")
                    try:
                        _move_dir(history, session_id, dest, session_id)
                    finally:
                        os.close(dest)
    finally:
        os.close(src)
    log.info(
        "placed config for session %s under %s: transcript=%s subagent files=%d"
        " checkpoints=%d rewritten lines=%d dropped=%d",
        session_id,
        report.project_key,
        report.transcript,
        report.subagent_files,
        report.file_history_files,
        report.rewritten_lines,
        report.dropped,
    )
    return report


def _place_transcript(
    config_fd: int,
    projects: int,
    sid: str,
    old_key: str,
    old_cwd: str,
    new_cwd: str,
    report: PlacementReport,
) -> None:
    keys = sorted(
        k
        for k in os.listdir(projects)
        if _is_dir(projects, k)
        and (_is_file(projects, k, f"{sid}.jsonl") or _is_dir(projects, k, sid))
    )
    if not keys:
        report.dropped += len(os.listdir(projects))
        return
    key = old_key if old_key in keys else keys[0]
    if len(keys) > 1:
        log.warning("config tree holds session %s under %d project keys; using one", sid, len(keys))
    report.dropped += len(os.listdir(projects)) - 1
    dest = _ensure_dirs(config_fd, "projects", report.project_key)
    src = os.open(key, _DIR, dir_fd=projects)
    try:
        report.dropped += _count_others(src, {f"{sid}.jsonl", sid})
        if _is_file(src, f"{sid}.jsonl"):
            os.chmod(f"{sid}.jsonl", 0o600, dir_fd=src)  # the CLI's mode; a regular file
            report.rewritten_lines += _rewrite_file(src, f"{sid}.jsonl", old_cwd, new_cwd)
            os.rename(f"{sid}.jsonl", f"{sid}.jsonl", src_dir_fd=src, dst_dir_fd=dest)
            report.transcript = True
        if _is_dir(src, sid):
            report.subagent_files = _sanitize(src, sid, report, rewrite=(old_cwd, new_cwd))
            _move_dir(src, sid, dest, sid)
    finally:
        os.close(src)
        os.close(dest)


def _sanitize(
    parent: int, name: str, report: PlacementReport, rewrite: tuple[str, str] | None = None
) -> int:
    """Keep only directories and regular files under ``parent/name`` (owner
    read/write added), rewriting JSON ones; return the number of files."""
    files = 0
    for dfd, fname in _walk_files(parent, name, report):
        os.chmod(fname, stat.S_IMODE(os.stat(fname, dir_fd=dfd).st_mode) | 0o600, dir_fd=dfd)
        if rewrite is not None and fname.endswith(".jsonl"):
            report.rewritten_lines += _rewrite_file(dfd, fname, *rewrite)
        elif rewrite is not None and fname.endswith(".json"):
            report.rewritten_lines += _rewrite_json(dfd, fname, *rewrite)
        files += 1
    return files


def _walk_files(parent: int, name: str, report: PlacementReport) -> Iterator[tuple[int, str]]:
    """(dir fd, name) of every regular file below; anything else is removed."""
    fd = os.open(name, _DIR, dir_fd=parent)
    os.fchmod(fd, 0o700)
    try:
        for entry in os.listdir(fd):
            st = os.stat(entry, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                yield from _walk_files(fd, entry, report)
            elif stat.S_ISREG(st.st_mode):
                yield fd, entry
            else:
                os.unlink(entry, dir_fd=fd)
                report.dropped += 1
    finally:
        os.close(fd)


def _rewrite_file(dfd: int, name: str, old: str, new: str) -> int:
    """Rewrite a JSON/JSONL file in place (new file + rename); the number of
    lines that changed. A file with no change is not rewritten."""
    changed = 0
    tmp = f".{name}.sessiond-{secrets.token_hex(4)}"
    with os.fdopen(os.open(name, _READ, dir_fd=dfd), "rb") as src:
        mode = stat.S_IMODE(os.fstat(src.fileno()).st_mode)
        with os.fdopen(os.open(tmp, _CREATE, mode, dir_fd=dfd), "wb") as out:
            try:
                for line in src:
                    new_line = rewrite_line(line, old, new)
                    if new_line is not None and not line.endswith(b"\n"):
                        new_line = new_line[:-1]
                    changed += new_line is not None
                    out.write(line if new_line is None else new_line)
                out.flush()
                os.fsync(out.fileno())
            except BaseException:
                os.unlink(tmp, dir_fd=dfd)
                raise
    if changed:
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    else:
        os.unlink(tmp, dir_fd=dfd)
    return changed


def _rewrite_json(dfd: int, name: str, old: str, new: str) -> int:
    """A whole (possibly pretty-printed) JSON file, such as a subagent's
    ``.meta.json``; 1 if it changed. Large or broken files are left alone."""
    with os.fdopen(os.open(name, _READ, dir_fd=dfd), "rb") as src:
        mode = stat.S_IMODE(os.fstat(src.fileno()).st_mode)
        data = src.read(_MAX_JSON_BYTES + 1)
    try:
        value, changed = rewrite_paths(json.loads(data), old, new)
    except ValueError:
        return 0
    if not changed or len(data) > _MAX_JSON_BYTES:
        return 0
    tmp = f".{name}.sessiond-{secrets.token_hex(4)}"
    with os.fdopen(os.open(tmp, _CREATE, mode, dir_fd=dfd), "wb") as out:
        out.write(json.dumps(value, ensure_ascii=False).encode())
        out.flush()
        os.fsync(out.fileno())
    os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    return 1


def _move_dir(src_parent: int, name: str, dest_parent: int, dest_name: str) -> None:
    """Move a directory across parents (same file system) replacing any
    existing one: staged next to the destination, then swapped in."""
    staged = f".{dest_name}.sessiond-staging-{secrets.token_hex(6)}"
    os.rename(name, staged, src_dir_fd=src_parent, dst_dir_fd=dest_parent)
    try:
        swap_into_place(dest_parent, staged, dest_name)
    except BaseException:
        remove_tree(dest_parent, staged)
        raise


def _ensure_dirs(root: int, *names: str) -> int:
    """An fd of ``root/names…``, creating missing directories (0o700)."""
    fd = os.dup(root)
    for name in names:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=fd)
        try:
            child = os.open(name, _DIR, dir_fd=fd)
        finally:
            os.close(fd)
        fd = child
    return fd


@contextlib.contextmanager
def _opened(parent: int, name: str) -> Iterator[int | None]:
    fd = os.open(name, _DIR, dir_fd=parent) if _is_dir(parent, name) else None
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


def _lstat_mode(parent: int, *parts: str) -> int:
    try:
        return os.stat("/".join(parts), dir_fd=parent, follow_symlinks=False).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return 0


def _is_dir(parent: int, *parts: str) -> bool:
    # Only the last component is lstat'ed: callers check the earlier ones
    # first (``_is_dir(p, k) and _is_file(p, k, name)``), so no link is followed.
    return stat.S_ISDIR(_lstat_mode(parent, *parts))


def _is_file(parent: int, *parts: str) -> bool:
    return stat.S_ISREG(_lstat_mode(parent, *parts))


def _count_others(fd: int, keep: set[str]) -> int:
    return sum(1 for entry in os.listdir(fd) if entry not in keep)
