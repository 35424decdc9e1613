"""Test-only crash points inside ``snapshot`` (DESIGN.md "Testing strategy").

Inactive unless the process starts with ``SESSIOND_FAULT_POINT`` naming one
of :data:`POINTS`; :func:`wrap` then returns a :class:`FaultyRemote` that
stops the process there, else the remote itself (no cost at all). The
crash is ``os._exit(137)`` — no cleanup, no flushed buffers, no stat cache
or state saved — which is what a sandbox killed with SIGKILL leaves.

Points, in write order (see :mod:`.snapshot`):

* ``after-packs``: every pack is stored and indexed (``Uploader.finish``
  returned), PutManifest is about to be sent;
* ``after-manifest``: PutManifest has answered;
* ``before-commit``: CommitSnapshot is about to be sent;
* ``pause-before-commit``: as ``before-commit``, but the process stops
  itself with SIGSTOP instead, once (a sandbox frozen before its commit,
  for fencing tests); after SIGCONT it commits as usual.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import NoReturn

from sessiond.api.v1 import common_pb2, workspace_pb2

from .remote import WorkspaceRemote

log = logging.getLogger(__name__)

ENV = "SESSIOND_FAULT_POINT"
POINTS = frozenset({"after-packs", "after-manifest", "before-commit", "pause-before-commit"})
EXIT_CODE = 137


def wrap(remote: WorkspaceRemote) -> WorkspaceRemote:
    """``remote``, or a :class:`FaultyRemote` around it when the environment
    names a point (an unknown name is ignored, with a warning)."""
    point = os.environ.get(ENV, "")
    if not point:
        return remote
    if point not in POINTS:
        log.warning("%s=%s is not a hydrator fault point; ignored", ENV, point)
        return remote
    return FaultyRemote(remote, point)


def _crash(point: str) -> NoReturn:
    log.critical("fault injection: crashing at %s", point)
    os._exit(EXIT_CODE)


class FaultyRemote(WorkspaceRemote):
    """``remote``'s calls, with the process stopped at ``point``."""

    def __init__(self, remote: WorkspaceRemote, point: str) -> None:
        super().__init__(remote._client, remote.session_id)
        self.point = point
        self._paused = False

    async def put_manifest(self, manifest: bytes) -> str:
        if self.point == "after-packs":
            _crash(self.point)
        manifest_id = await super().put_manifest(manifest)
        if self.point == "after-manifest":
            _crash(self.point)
        return manifest_id

    async def commit(self, request: workspace_pb2.CommitSnapshotRequest) -> common_pb2.Snapshot:
        if self.point == "before-commit":
            _crash(self.point)
        if self.point == "pause-before-commit" and not self._paused:
            self._paused = True  # once: commit retries go straight through
            log.critical("fault injection: stopping before the commit (pid %d)", os.getpid())
            os.kill(os.getpid(), signal.SIGSTOP)
        return await super().commit(request)
