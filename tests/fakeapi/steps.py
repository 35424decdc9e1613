"""Scripted assistant replies ("steps") and their wire encodings.

A :class:`Step` is one whole assistant message: the content blocks the fake
returns for one ``POST /v1/messages``. Steps compose with ``+`` so one reply can
carry several blocks (``text("writing it") + tool_use("Write", {...})``).

Encodings follow the Messages API exactly: :meth:`Step.to_message` is the
non-streaming JSON body, :meth:`Step.sse_events` the ``event:``/``data:`` pairs
of a streamed reply (``message_start``, ``ping``, ``content_block_start`` /
``*_delta`` / ``content_block_stop`` per block, ``message_delta`` with
``stop_reason`` and usage, ``message_stop``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

JSON = dict[str, Any]

_TEXT_CHUNK = 24
_JSON_CHUNK = 32


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def _chunks(s: str, size: int) -> list[str]:
    return [s[i : i + size] for i in range(0, len(s), size)] or [""]


@dataclass(frozen=True)
class Step:
    """One assistant reply.

    ``delay`` sleeps before the response headers are sent (first-byte latency);
    ``event_delay`` sleeps between SSE events (a slow stream, e.g. to kill a
    sandbox mid-turn). ``error`` makes the reply an HTTP error instead
    (``(status, error_type, message)``).
    """

    blocks: tuple[JSON, ...] = ()
    stop_reason: str = "end_turn"
    delay: float = 0.0
    event_delay: float = 0.0
    error: tuple[int, str, str] | None = None
    usage: JSON = field(default_factory=lambda: {"input_tokens": 10, "output_tokens": 5})

    def __add__(self, other: Step) -> Step:
        """Concatenate blocks; a tool_use anywhere makes the reply stop on tool_use."""
        stop = (
            "tool_use"
            if "tool_use" in (self.stop_reason, other.stop_reason)
            else (other.stop_reason)
        )
        return replace(self, blocks=self.blocks + other.blocks, stop_reason=stop)

    def slow(self, delay: float = 0.0, event_delay: float = 0.0) -> Step:
        """A copy of this step with latency added."""
        return replace(self, delay=delay, event_delay=event_delay)

    @property
    def is_final(self) -> bool:
        """True when the CLI will end its turn on this reply (no tool to run)."""
        return self.error is None and self.stop_reason != "tool_use"

    def to_message(self, model: str) -> JSON:
        """The non-streaming ``Message`` JSON body."""
        return {
            "id": _new_id("msg"),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [dict(b) for b in self.blocks],
            "stop_reason": self.stop_reason,
            "stop_sequence": None,
            "usage": self._usage(),
        }

    def sse_events(self, model: str) -> Iterator[tuple[str, JSON]]:
        """``(event_name, data)`` pairs of the streamed reply, in wire order."""
        start = self.to_message(model)
        start.update(content=[], stop_reason=None)
        start["usage"] = {**self._usage(), "output_tokens": 1}
        yield "message_start", {"type": "message_start", "message": start}
        yield "ping", {"type": "ping"}
        for index, block in enumerate(self.blocks):
            yield from _block_events(index, block)
        yield (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": self.usage.get("output_tokens", 5)},
            },
        )
        yield "message_stop", {"type": "message_stop"}

    def error_body(self) -> JSON:
        """The API's error envelope for an error step."""
        assert self.error is not None
        _, etype, message = self.error
        return {"type": "error", "error": {"type": etype, "message": message}}

    def _usage(self) -> JSON:
        return {
            "input_tokens": 10,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 5,
            **self.usage,
        }


def _block_events(index: int, block: JSON) -> Iterator[tuple[str, JSON]]:
    kind = block["type"]
    if kind == "text":
        yield (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": index,
                "content_block": {"type": "text", "text": ""},
            },
        )
        for piece in _chunks(block["text"], _TEXT_CHUNK):
            yield (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "text_delta", "text": piece},
                },
            )
    elif kind == "tool_use":
        yield (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": index,
                "content_block": {**block, "input": {}},
            },
        )
        for piece in _chunks(json.dumps(block["input"]), _JSON_CHUNK):
            yield (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": piece},
                },
            )
    else:
        raise ValueError(f"unsupported block type {kind!r}")
    yield "content_block_stop", {"type": "content_block_stop", "index": index}


def text(s: str) -> Step:
    """A reply with one text block that ends the turn (``stop_reason=end_turn``)."""
    return Step(blocks=({"type": "text", "text": s},))


def tool_use(name: str, input: JSON, *, id: str | None = None) -> Step:
    """A reply that calls tool ``name`` with ``input`` (``stop_reason=tool_use``).

    The CLI runs the tool and sends the next request with a ``tool_result``
    whose ``tool_use_id`` is ``id`` (generated when omitted).
    """
    block = {"type": "tool_use", "id": id or _new_id("toolu"), "name": name, "input": input}
    return Step(blocks=(block,), stop_reason="tool_use")


def api_error(status: int = 500, type: str = "api_error", message: str = "fake error") -> Step:
    """An HTTP error reply in the API's envelope (529 ``overloaded_error`` is retried
    by the CLI with backoff; 400 ``invalid_request_error`` is not)."""
    return Step(error=(status, type, message))
