"""The SDK's project key of a working directory, without importing the SDK
in the hydrator's own process on every command.

``claude_agent_sdk.project_key_for_directory`` is the only source of the key
(it is never re-implemented here), but importing ``claude_agent_sdk`` costs
about a second of CPU (it pulls in ``mcp`` and its pydantic models), all of
it holding the GIL — more than a whole incremental snapshot. So:

* :func:`project_key` remembers the key the SDK computed in
  ``<state dir>/project_key.json``, keyed by the directory string it was
  computed for and by the installed SDK (path, size and mtime of its
  ``__init__.py``, found without importing it); a later call for the same
  directory with the same SDK reads the file instead. A missing or stale
  memo just means asking the SDK again.
* :class:`Background` asks the SDK in a child interpreter started at once,
  so a command that needs the key only at its end (``restore`` prints it; a
  first ``snapshot`` puts it in the manifest) overlaps the import with its
  own work on another core instead of stalling its threads on the GIL. If
  the child fails for any reason the key is computed in-process.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

MEMO_FILE = "project_key.json"
# At background priority: the parent has real work for every core.
_CHILD = (
    "import os, sys\n"
    "os.nice(10)\n"
    "from claude_agent_sdk import project_key_for_directory\n"
    "sys.stdout.write(project_key_for_directory(sys.argv[1]))\n"
)
_CHILD_TIMEOUT = 120.0


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


def compute(directory: str) -> str:
    """``project_key_for_directory(directory)`` from the SDK, in-process."""
    from claude_agent_sdk import project_key_for_directory

    return str(project_key_for_directory(directory))


def remembered(directory: str | os.PathLike[str], state_dir: Path | None) -> str | None:
    """The memo's key for ``directory`` if it is valid for the installed SDK."""
    if state_dir is None:
        return None
    sdk = _sdk_fingerprint()
    if not sdk:
        return None
    with contextlib.suppress(OSError, ValueError, AttributeError):
        data = json.loads((state_dir / MEMO_FILE).read_text())
        if data.get("directory") == os.fspath(directory) and data.get("sdk") == sdk:
            key = data.get("key")
            if isinstance(key, str) and key:
                return key
    return None


def remember(directory: str | os.PathLike[str], key: str, state_dir: Path | None) -> None:
    """Write the memo (temp file + rename; best effort)."""
    sdk = _sdk_fingerprint()
    if state_dir is None or not sdk:
        return
    with contextlib.suppress(OSError):
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp = state_dir / f".{MEMO_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"directory": os.fspath(directory), "sdk": sdk, "key": key}))
        os.replace(tmp, state_dir / MEMO_FILE)


def project_key(directory: str | os.PathLike[str], state_dir: Path | None = None) -> str:
    """The SDK's project key for ``directory`` (as given: pass a realpath),
    from the memo in ``state_dir`` when it was computed for the same string
    by the same SDK; else computed in-process and remembered."""
    text = os.fspath(directory)
    key = remembered(text, state_dir)
    if key is None:
        key = compute(text)
        remember(text, key, state_dir)
    return key


class Background:
    """The key of ``directory``, being computed by a child interpreter.
    :meth:`result` waits for it (falling back to :func:`compute`);
    :meth:`close` stops a child whose answer is no longer wanted. A ``key``
    the caller already has (computed with the same SDK function for the same
    real path) starts no child."""

    def __init__(self, directory: str, key: str | None = None) -> None:
        self.directory = directory
        self._key = key or None
        self._proc: subprocess.Popen[bytes] | None = None
        if self._key is not None:
            return
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD, directory],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
        except OSError:
            self._proc = None

    def result(self) -> str:
        if self._key is not None:
            return self._key
        proc, self._proc = self._proc, None
        key = ""
        if proc is not None:
            try:
                out, _ = proc.communicate(timeout=_CHILD_TIMEOUT)
                if proc.returncode == 0:
                    key = out.decode("utf-8", "replace").strip()
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._key = key or compute(self.directory)
        return self._key

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()


__all__ = ["Background", "compute", "project_key", "remember", "remembered"]
