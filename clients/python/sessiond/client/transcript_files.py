"""Move transcripts between a local ``CLAUDE_CONFIG_DIR`` and a SessionStore.

* :func:`import_local_session` replays a session's JSONL files (main +
  subagents + their ``.meta.json`` sidecars) into a store, with the SDK's own
  ``import_session_to_store``; re-importing is harmless (appends are
  idempotent on entry uuid).
* :func:`export_session` writes a stored session back as the CLI's on-disk
  layout under the project key of a *given* cwd — the key is computed with the
  SDK's ``project_key_for_directory`` — so ``resume=<session id>`` works when
  the CLI runs in that cwd.

Both need ``claude-agent-sdk`` (the ``hydrator`` extra).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InvalidArgument, NotFound

if TYPE_CHECKING:
    from claude_agent_sdk.types import SessionStore

# The SDK resolves CLAUDE_CONFIG_DIR from the process environment; imports are
# serialized so concurrent ones in one process don't see each other's dir.
_ENV_LOCK = threading.Lock()


@contextlib.contextmanager
def _config_dir(path: Path) -> Iterator[None]:
    with _ENV_LOCK:
        old = os.environ.get("CLAUDE_CONFIG_DIR")
        os.environ["CLAUDE_CONFIG_DIR"] = str(path)
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("CLAUDE_CONFIG_DIR", None)
            else:
                os.environ["CLAUDE_CONFIG_DIR"] = old


async def import_local_session(
    store: SessionStore,
    session_id: str,
    *,
    config_dir: Path,
    cwd: str | None = None,
    include_subagents: bool = True,
) -> None:
    """Replay ``$config_dir/projects/<key>/<session_id>.jsonl`` (and its
    subagents) into ``store``. ``cwd`` narrows the search to that project;
    otherwise every project directory is searched. ``NotFound`` if absent."""
    from claude_agent_sdk import import_session_to_store

    with _config_dir(config_dir):
        try:
            await import_session_to_store(
                session_id, store, directory=cwd, include_subagents=include_subagents
            )
        except FileNotFoundError as exc:
            raise NotFound(f"no local transcript for session {session_id}") from exc
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from exc


def _safe_subpath(subpath: str) -> list[str]:
    parts = subpath.split("/")
    if not subpath or any(p in ("", ".", "..") or "\\" in p or "\0" in p for p in parts):
        raise InvalidArgument(f"refusing unsafe transcript subpath {subpath!r}")
    return parts


def _write_jsonl(path: Path, entries: list[Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for entry in entries:
            f.write(json.dumps(entry, ensure_ascii=False, separators=(",", ":")))
            f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    path.chmod(0o600)


async def export_session(
    store: SessionStore,
    *,
    project_key: str,
    session_id: str,
    config_dir: Path,
    cwd: str,
) -> Path:
    """Write the session stored under ``project_key`` into
    ``$config_dir/projects/<project_key_for_directory(cwd)>/`` (main JSONL,
    ``<sid>/subagents/…jsonl`` and ``.meta.json`` sidecars). Returns the main
    file's path. ``NotFound`` if the store has no main transcript."""
    from claude_agent_sdk import project_key_for_directory

    entries = await store.load({"project_key": project_key, "session_id": session_id})
    if entries is None:
        raise NotFound(f"no transcript for session {session_id} in project {project_key}")
    if "/" in session_id or session_id in (".", ".."):
        raise InvalidArgument(f"refusing unsafe session id {session_id!r}")
    project_dir = config_dir / "projects" / project_key_for_directory(cwd)
    main = project_dir / f"{session_id}.jsonl"
    _write_jsonl(main, list(entries))

    list_subkeys = getattr(store, "list_subkeys", None)
    subpaths: list[str] = []
    if list_subkeys is not None:
        with contextlib.suppress(NotImplementedError):
            subpaths = await list_subkeys({"project_key": project_key, "session_id": session_id})
    for subpath in subpaths:
        parts = _safe_subpath(subpath)
        sub_entries = await store.load(
            {"project_key": project_key, "session_id": session_id, "subpath": subpath}
        )
        if not sub_entries:
            continue
        transcript = [e for e in sub_entries if e.get("type") != "agent_metadata"]
        metadata = [e for e in sub_entries if e.get("type") == "agent_metadata"]
        target = project_dir.joinpath(session_id, *parts)
        if transcript:
            _write_jsonl(target.with_name(target.name + ".jsonl"), transcript)
        if metadata:
            meta = {k: v for k, v in metadata[-1].items() if k != "type"}
            sidecar = target.with_name(target.name + ".meta.json")
            sidecar.parent.mkdir(parents=True, exist_ok=True)
            sidecar.write_text(json.dumps(meta), encoding="utf-8")
            sidecar.chmod(0o600)
    return main
