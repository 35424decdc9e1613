"""``sessiond-hydrator run``: one agent turn inside the sandbox.

Runs ``claude_agent_sdk.query`` in the sandbox's working directory with the
transcript mirrored to sessiond (``session_store=SessiondSessionStore``,
``session_store_flush="eager"``) and ``resume=<sdk session id>`` after the
first turn, and writes every SDK message to stdout as one JSON line, as it
arrives. The server streams those lines to its caller. Exit status 0 when the
turn produced a result; non-zero otherwise (details on stderr, never content).
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import time
from pathlib import Path
from typing import IO, Any

from sessiond.client import SessiondSessionStore

_OPTION_KEYS = (
    "model",
    "system_prompt",
    "allowed_tools",
    "disallowed_tools",
    "permission_mode",
    "max_turns",
)
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def _kind(obj: object) -> str:
    """SDK class name → the wire ``type``: AssistantMessage → assistant,
    ToolUseBlock → tool_use, StreamEvent → stream_event."""
    name = type(obj).__name__
    for suffix in ("Message", "Block"):
        if name.endswith(suffix) and name != suffix:
            name = name[: -len(suffix)]
    return _CAMEL.sub("_", name).lower()


def to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        out.setdefault("type", _kind(obj))
        return out
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, str | int | float | bool) or obj is None:
        return obj
    return repr(obj)


async def run_turn(
    *,
    server: str,
    token: str | None,
    cwd: Path,
    prompt: str,
    sdk_session_id: str,
    resume: bool,
    options: dict[str, Any],
    out: IO[str] = sys.stdout,
) -> bool:
    """Run one turn; True if a ResultMessage without error arrived."""
    from claude_agent_sdk import ClaudeAgentOptions, ResultMessage, query

    store = SessiondSessionStore(server, token=token)
    kwargs = {k: options[k] for k in _OPTION_KEYS if options.get(k)}
    kwargs.setdefault("permission_mode", "bypassPermissions")
    if resume:
        kwargs["resume"] = sdk_session_id
    else:
        kwargs["session_id"] = sdk_session_id
    agent_options = ClaudeAgentOptions(
        cwd=str(cwd),
        session_store=store,
        session_store_flush="eager",
        **kwargs,
    )
    ok = False
    try:
        async for message in query(prompt=prompt, options=agent_options):
            out.write(json.dumps(to_jsonable(message), ensure_ascii=False) + "\n")
            out.flush()
            if isinstance(message, ResultMessage):
                ok = not message.is_error
    finally:
        await store.close()
    return ok


def wait_for_prompt(path: Path, *, wait_seconds: float = 900.0, poll: float = 0.01) -> str:
    """The prompt the server writes to ``path`` as ``{"prompt": …}``. A file
    that does not parse yet is still being written: wait. The file is removed
    once read. ``TimeoutError`` if it never comes. (Blocking: the caller
    runs it in a thread while the SDK import finishes.)"""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            data = json.loads(path.read_bytes())
        except (FileNotFoundError, ValueError):
            data = None
        if isinstance(data, dict) and isinstance(data.get("prompt"), str):
            path.unlink(missing_ok=True)
            return str(data["prompt"])
        if time.monotonic() > deadline:
            raise TimeoutError(f"no prompt arrived in {path}")
        time.sleep(poll)
