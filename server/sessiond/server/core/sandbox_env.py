"""What environment a sandbox gets from the server.

Model credentials pass from the server's own environment through an
allowlist of glob patterns (default ``ANTHROPIC_*`` and ``CLAUDE_CODE_*``);
nothing else of the server's environment — which holds storage credentials —
ever reaches a sandbox.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence

DEFAULT_ALLOWLIST = ("ANTHROPIC_*", "CLAUDE_CODE_*")


def allowlisted(environ: Mapping[str, str], patterns: Sequence[str]) -> dict[str, str]:
    """The variables of ``environ`` whose names match one of ``patterns``."""
    return {
        name: value
        for name, value in environ.items()
        if any(fnmatch.fnmatchcase(name, p) for p in patterns)
    }


def parse_allowlist(text: str) -> tuple[str, ...]:
    """``"ANTHROPIC_*,CLAUDE_CODE_*"`` → patterns (empty entries dropped)."""
    return tuple(p.strip() for p in text.split(",") if p.strip())
