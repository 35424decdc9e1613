"""One agent turn in a sandbox: a ``sessiond-hydrator run`` process.

The runner is started as soon as the sandbox exists — before the workspace
is restored — so that its interpreter start-up and its import of
``claude_agent_sdk`` (about a second of CPU) overlap the restore. It waits
for the prompt, which the server hands over through a file once the
workspace is in place, then streams every SDK message as a JSON line.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sessiond.client.errors import Unavailable

from ..sandboxes.provider import Execution, SandboxProvider

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TurnEvent:
    """One item of a Query stream: a status change or an SDK message."""

    phase: str = ""  # queued | hydrating | running | snapshotting | done
    detail: str = ""
    snapshot_id: str = ""
    message_type: str = ""
    message_json: str = ""
    message_uuid: str = ""


class TurnRunner:
    def __init__(
        self,
        provider: SandboxProvider,
        sandbox_id: str,
        session_id: str,
        execution: Execution,
        prompt_path: str,
    ) -> None:
        self._provider = provider
        self._sandbox_id = sandbox_id
        self._session_id = session_id
        self._execution = execution
        self._prompt_path = prompt_path
        self.got_result = False

    @classmethod
    async def start(
        cls,
        provider: SandboxProvider,
        sandbox_id: str,
        *,
        command: Sequence[str],
        env: Mapping[str, str],
        session_id: str,
        workdir: str,
        config_dir: str,
        sdk_session_id: str,
        resume: bool,
        options: dict[str, Any],
    ) -> TurnRunner:
        prompt_path = f"{config_dir}/.sessiond-prompt-{secrets.token_hex(8)}.json"
        args = [
            *command,
            "run",
            "--session",
            session_id,
            "--cwd",
            workdir,
            "--sdk-session-id",
            sdk_session_id,
            "--options",
            json.dumps(options),
            "--prompt-file",
            prompt_path,
        ]
        if resume:
            args.append("--resume")
        # Its own cwd is the config dir: the workdir may still be swapped
        # out from under it by the restore.
        execution = await provider.exec(sandbox_id, args, env=env, cwd=config_dir)
        return cls(provider, sandbox_id, session_id, execution, prompt_path)

    async def send(self, prompt: str) -> None:
        """Hand the prompt over (a JSON document, so a reader never mistakes a
        partly written file for a prompt)."""
        data = json.dumps({"prompt": prompt}).encode()
        await self._provider.put_file(self._sandbox_id, self._prompt_path, data, mode=0o600)

    async def events(self) -> AsyncIterator[TurnEvent]:
        """Every SDK message until the runner exits; ``Unavailable`` if it
        exits without finishing the turn."""
        stderr = bytearray()
        buf = b""
        async for event in self._execution.events():
            if event.stream == "stderr":
                stderr.extend(event.data)
                del stderr[:-8192]
                continue
            buf += event.data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                parsed = parse_message(line)
                if parsed is None:
                    continue
                if parsed.message_type == "result":
                    self.got_result = True
                yield parsed
        code = await self._execution.wait()
        if code != 0 or not self.got_result:
            # stderr may hold agent output: log its size only, never content.
            log.warning(
                "runner failed session=%s exit=%s stderr_bytes=%d",
                self._session_id,
                code,
                len(stderr),
            )
            raise Unavailable(f"the agent runner exited with code {code} before finishing the turn")

    async def kill(self) -> None:
        await self._execution.kill()


def parse_message(line: bytes) -> TurnEvent | None:
    line = line.strip()
    if not line:
        return None
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    msg_uuid = data.get("uuid")
    return TurnEvent(
        message_type=str(data.get("type", "")),
        message_json=line.decode("utf-8", "replace"),
        message_uuid=msg_uuid if isinstance(msg_uuid, str) else "",
    )
