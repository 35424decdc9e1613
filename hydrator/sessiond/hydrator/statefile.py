"""``<cwd>/.sessiond/state.json``: what a workspace remembers between
hydrator runs (session id, lease epoch, last snapshot, a pending commit).

One writer at a time per workspace is assumed (the hydrator of that
sandbox); every write is a whole-file replace (temp file, fsync, rename), so
a crash leaves the old state or the new one, never a torn file.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

STATE_FILE = "state.json"


def save_state(state_dir: Path, **state: Any) -> None:
    """Replace ``state.json`` with ``state`` (plus ``version``)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / f".{STATE_FILE}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"version": 1, **state}, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, state_dir / STATE_FILE)


def load_state(state_dir: Path) -> dict[str, Any] | None:
    """The persisted state (session_id, snapshot_id, lease_epoch, …) or None
    when there is none or it is unreadable."""
    try:
        data = json.loads((state_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
