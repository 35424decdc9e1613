"""Run one resumed turn in a fresh Python process (used by e2e tests).

Usage: python -m tests.e2e.resume_turn SPEC_JSON
SPEC: {"target", "token", "cwd", "env", "session_id", "prompt"}; prints the
result's session id on the last line.
"""

from __future__ import annotations

import asyncio
import json
import sys

from claude_agent_sdk import ClaudeAgentOptions, ResultMessage, query

from sessiond.client import SessiondSessionStore


async def main(spec: dict[str, object]) -> str:
    store = SessiondSessionStore(str(spec["target"]), token=str(spec["token"]))
    options = ClaudeAgentOptions(
        cwd=str(spec["cwd"]),
        env=dict(spec["env"]),  # type: ignore[arg-type]
        permission_mode="bypassPermissions",
        session_store=store,
        resume=str(spec["session_id"]),
    )
    sid = ""
    async for message in query(prompt=str(spec["prompt"]), options=options):
        if isinstance(message, ResultMessage):
            sid = message.session_id
    await store.close()
    return sid


if __name__ == "__main__":
    print(asyncio.run(main(json.loads(sys.argv[1]))))
