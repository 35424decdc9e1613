"""Where the CLI puts a session's files, resolved with the SDK's own key function."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from claude_agent_sdk import project_key_for_directory


def config_dir(env: Mapping[str, str]) -> Path:
    """``CLAUDE_CONFIG_DIR`` of an environment made by :func:`cli_env`."""
    return Path(env["CLAUDE_CONFIG_DIR"])


def transcript_path(env: Mapping[str, str], cwd: Path, session_id: str) -> Path:
    """``$CLAUDE_CONFIG_DIR/projects/<project_key(cwd)>/<session_id>.jsonl``."""
    key = project_key_for_directory(str(cwd))
    return config_dir(env) / "projects" / key / f"{session_id}.jsonl"


def file_history_dir(env: Mapping[str, str], session_id: str) -> Path:
    """``$CLAUDE_CONFIG_DIR/file-history/<session_id>/`` (file checkpoints)."""
    return config_dir(env) / "file-history" / session_id
