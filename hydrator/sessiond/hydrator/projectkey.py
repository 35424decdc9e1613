"""The SDK's project key of a working directory, without importing the SDK
on every command.

``claude_agent_sdk.project_key_for_directory`` is the only source of the key
(it is never re-implemented here), but importing ``claude_agent_sdk`` costs
about a second of CPU (it pulls in ``mcp`` and its pydantic models) — more
than a whole incremental snapshot. So:

* :func:`project_key` remembers the key the SDK computed in
  ``<state dir>/project_key.json``, keyed by the directory string it was
  computed for and by the installed SDK (path, size and mtime of its
  ``__init__.py``, found without importing it); a later call for the same
  directory with the same SDK reads the file instead of importing the SDK.
  A missing or unreadable memo just means asking the SDK again.
* :func:`preload` starts importing the SDK on a daemon thread, so a command
  that will need it (``restore`` prints the key) overlaps the import with
  its network and disk work.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import threading
from pathlib import Path

MEMO_FILE = "project_key.json"

_lock = threading.Lock()
_preloading: threading.Thread | None = None


def _sdk_fingerprint() -> str:
    spec = importlib.util.find_spec("claude_agent_sdk")
    origin = spec.origin if spec is not None else None
    if not origin:
        return ""
    try:
        st = os.stat(origin)
    except OSError:
        return ""
    return f"{origin}:{st.st_size}:{st.st_mtime_ns}"


def _import_sdk() -> None:
    with contextlib.suppress(Exception):  # the caller's own import reports it
        import claude_agent_sdk  # noqa: F401


def preload() -> None:
    """Start importing the SDK in the background (idempotent)."""
    global _preloading
    with _lock:
        if _preloading is None:
            _preloading = threading.Thread(
                target=_import_sdk, name="sessiond-sdk-import", daemon=True
            )
            _preloading.start()


def compute(directory: str) -> str:
    """``project_key_for_directory(directory)`` from the SDK itself."""
    from claude_agent_sdk import project_key_for_directory

    return str(project_key_for_directory(directory))


def project_key(directory: str | os.PathLike[str], state_dir: Path | None = None) -> str:
    """The SDK's project key for ``directory`` (as given: pass a realpath),
    from the memo in ``state_dir`` when it was computed for the same string
    by the same SDK; else computed (and remembered, best effort)."""
    text = os.fspath(directory)
    sdk = _sdk_fingerprint()
    memo = state_dir / MEMO_FILE if state_dir is not None else None
    if memo is not None and sdk:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            data = json.loads(memo.read_text())
            if data.get("directory") == text and data.get("sdk") == sdk:
                key = data.get("key")
                if isinstance(key, str) and key:
                    return key
    key = compute(text)
    if memo is not None and sdk:
        with contextlib.suppress(OSError):
            memo.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo.with_name(f".{MEMO_FILE}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"directory": text, "sdk": sdk, "key": key}))
            os.replace(tmp, memo)
    return key


__all__ = ["compute", "preload", "project_key"]
