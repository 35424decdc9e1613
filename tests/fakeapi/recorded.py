"""What the fake saw: one :class:`RecordedRequest` per ``POST /v1/messages``.

Helpers read the Messages API shapes the CLI sends: ``content`` is either a
string or a list of blocks (``text``, ``tool_use``, ``tool_result``, ``image``,
``thinking``); ``system`` is a string or a list of text blocks; the CLI also puts
``role: "system"`` entries (environment notes) into ``messages``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]

SYSTEM_REMINDER = "<system-reminder>"


def _blocks(content: Any) -> list[JSON]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content or [] if isinstance(b, dict)]


def block_texts(block: JSON) -> list[str]:
    """Every piece of text inside one content block, tool results included."""
    kind = block.get("type")
    if kind == "text":
        return [str(block.get("text", ""))]
    if kind == "tool_result":
        return [t for inner in _blocks(block.get("content")) for t in block_texts(inner)]
    if kind == "tool_use":
        return [str(v) for v in (block.get("input") or {}).values()]
    return []


@dataclass
class RecordedRequest:
    """One request body as parsed JSON plus where and when it came from."""

    path: str
    headers: dict[str, str]
    body: JSON
    kind: str  # "main" (consumed a step) or "side" (canned reply)
    at: float = field(default_factory=time.monotonic)

    @property
    def model(self) -> str:
        return str(self.body.get("model", ""))

    @property
    def messages(self) -> list[JSON]:
        return list(self.body.get("messages") or [])

    @property
    def session_id(self) -> str | None:
        """The CLI's session id (``X-Claude-Code-Session-Id`` header)."""
        return self.headers.get("x-claude-code-session-id")

    @property
    def is_subagent(self) -> bool:
        """True for a subagent's request (the CLI marks it ``cc_is_subagent=true``
        in the ``x-anthropic-billing-header`` system block)."""
        return "cc_is_subagent=true" in self.system_text

    @property
    def tool_names(self) -> list[str]:
        return [str(t.get("name")) for t in self.body.get("tools") or []]

    @property
    def system_text(self) -> str:
        return "\n".join(t for b in _blocks(self.body.get("system")) for t in block_texts(b))

    def texts(self, role: str | None = None, *, reminders: bool = False) -> list[str]:
        """Text of every message's blocks in order (optionally one role's only).

        ``<system-reminder>`` blocks the CLI injects are skipped unless
        ``reminders`` is true.
        """
        out: list[str] = []
        for msg in self.messages:
            if role is not None and msg.get("role") != role:
                continue
            for block in _blocks(msg.get("content")):
                out.extend(
                    t for t in block_texts(block) if reminders or not t.startswith(SYSTEM_REMINDER)
                )
        return out

    def user_texts(self) -> list[str]:
        """Typed user text (prompts), excluding tool results and system reminders."""
        return [
            str(b.get("text", ""))
            for m in self.messages
            if m.get("role") == "user"
            for b in _blocks(m.get("content"))
            if b.get("type") == "text" and not str(b.get("text", "")).startswith(SYSTEM_REMINDER)
        ]

    def assistant_texts(self) -> list[str]:
        """Text blocks of earlier assistant replies in the history."""
        return [
            str(b.get("text", ""))
            for m in self.messages
            if m.get("role") == "assistant"
            for b in _blocks(m.get("content"))
            if b.get("type") == "text"
        ]

    def tool_uses(self) -> list[JSON]:
        """Every ``tool_use`` block in the history, oldest first."""
        return [
            b
            for m in self.messages
            if m.get("role") == "assistant"
            for b in _blocks(m.get("content"))
            if b.get("type") == "tool_use"
        ]

    def tool_results(self) -> list[JSON]:
        """Every ``tool_result`` block in the history, oldest first."""
        return [
            b
            for m in self.messages
            if m.get("role") == "user"
            for b in _blocks(m.get("content"))
            if b.get("type") == "tool_result"
        ]

    def last_tool_result_text(self) -> str | None:
        """Text of the newest ``tool_result``, or None when there is none."""
        results = self.tool_results()
        return "\n".join(block_texts(results[-1])) if results else None

    def all_text(self) -> str:
        """System prompt, every message text, tool inputs and results, joined."""
        return "\n".join([self.system_text, *self.texts(reminders=True)])
