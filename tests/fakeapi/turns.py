"""Run one agent turn through ``claude_agent_sdk.query`` and keep what came back."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from claude_agent_sdk import (
    AssistantMessage,
    ClaudeAgentOptions,
    Message,
    ResultMessage,
    TextBlock,
    UserMessage,
    query,
)


@dataclass
class Turn:
    """Messages of one ``query()`` call with arrival times (seconds from start)."""

    started: float = 0.0  # time.monotonic() when query() was called
    messages: list[tuple[float, Message]] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def result(self) -> ResultMessage:
        """The turn's ResultMessage; AssertionError if there was none."""
        for _, m in reversed(self.messages):
            if isinstance(m, ResultMessage):
                return m
        raise AssertionError(f"no ResultMessage in {[type(m).__name__ for _, m in self.messages]}")

    @property
    def session_id(self) -> str:
        return self.result.session_id

    def assistant_texts(self) -> list[str]:
        return [
            b.text
            for _, m in self.messages
            if isinstance(m, AssistantMessage)
            for b in m.content
            if isinstance(b, TextBlock)
        ]

    def prompt_uuids(self) -> list[str]:
        """uuids of replayed user prompts (needs ``replay-user-messages``): the
        checkpoint ids ``rewind_files`` takes."""
        return [
            m.uuid
            for _, m in self.messages
            if isinstance(m, UserMessage) and isinstance(m.content, str) and m.uuid
        ]

    def first(self, kind: type[object]) -> float:
        """Arrival time of the first message of type ``kind``."""
        return next(t for t, m in self.messages if isinstance(m, kind))


async def run_turn(prompt: str, options: ClaudeAgentOptions) -> Turn:
    """Spawn the CLI for one prompt, collect every message until it exits."""
    turn = Turn(started=time.monotonic())
    async for message in query(prompt=prompt, options=options):
        turn.messages.append((time.monotonic() - turn.started, message))
    turn.elapsed = time.monotonic() - turn.started
    return turn
