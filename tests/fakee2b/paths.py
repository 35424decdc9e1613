"""Sandbox paths → host paths for the fake.

Each fake sandbox owns ``<root>/<sandbox_id>/fs`` on this host and that
directory is the sandbox's ``/``. Every path a client sends (files API,
filesystem RPCs, a command's cwd) is resolved *inside* that directory the way
a kernel would resolve it inside a chroot: ``..`` stops at the root and
symlinks are followed with absolute targets re-rooted, so no request can reach
a host path outside the sandbox.
"""

from __future__ import annotations

import errno
import os
import posixpath
from pathlib import Path

# The template's default user, as in E2B's base template.
SANDBOX_USER = "user"
SANDBOX_HOME = "/home/user"
MAX_SYMLINKS = 40


class PathResolutionError(OSError):
    """A sandbox path that cannot be resolved (symlink loop)."""


def absolute(path: str, home: str = SANDBOX_HOME) -> str:
    """The absolute sandbox path for ``path``, expanded like envd does: ``~``
    is the user's home and a relative path is relative to it."""
    if path == "~" or path.startswith("~/"):
        path = home + path[1:]
    if not path.startswith("/"):
        path = posixpath.join(home, path)
    return path


def resolve(root: Path, path: str, *, follow_final: bool = True) -> Path:
    """The host path of the absolute sandbox ``path`` under ``root`` (the
    sandbox's ``/``). Symlinks are followed inside the root (absolute targets
    restart at ``root``); with ``follow_final=False`` a final symlink is
    returned itself. The result is always ``root`` or below it."""
    pending = [part for part in reversed(path.split("/"))]
    current: list[str] = []
    hops = 0
    while pending:
        name = pending.pop()
        if name in ("", "."):
            continue
        if name == "..":
            if current:
                current.pop()
            continue
        candidate = root.joinpath(*current, name)
        last = not any(p not in ("", ".") for p in pending)
        if candidate.is_symlink() and (follow_final or not last):
            hops += 1
            if hops > MAX_SYMLINKS:
                raise PathResolutionError(errno.ELOOP, "too many levels of symbolic links", path)
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = []
            pending.extend(reversed(target.split("/")))
            continue
        current.append(name)
    return root.joinpath(*current)


def to_sandbox(root: Path, host: Path) -> str:
    """The sandbox path of a host path under ``root``."""
    rel = host.relative_to(root).as_posix()
    return "/" if rel == "." else "/" + rel
