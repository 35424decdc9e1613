"""Test-only crash points (DESIGN.md "Testing strategy": fault tests).

Inactive unless the process starts with ``SESSIOND_FAULT_POINT`` set to the
name of a point; the variable is read once, at import, so a point costs one
string comparison. At the named point the process ends with
``os._exit(137)`` — no cleanup, no reply, no flushed buffers — which is what
its clients see of a replica killed with SIGKILL there.

Points (each called at exactly one place):

* ``after-commit-before-reply``: CommitSnapshot has committed the snapshot
  and has not answered (``servicers/workspace.py``).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

ENV = "SESSIOND_FAULT_POINT"
POINTS = frozenset({"after-commit-before-reply"})
EXIT_CODE = 137

_ACTIVE = os.environ.get(ENV, "")


def crash_point(name: str) -> None:
    """End the process now if ``name`` is the configured fault point."""
    if _ACTIVE and name == _ACTIVE:
        log.critical("fault injection: crashing at %s", name)
        os._exit(EXIT_CODE)
