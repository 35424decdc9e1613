"""Small ASGI helpers and the request recorder shared by the fake's apps."""

from __future__ import annotations

import json
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

# Where the apps leave what they decided about a request for the recorder.
NOTES = "fake_e2b"


def header(scope: Scope, name: str) -> str | None:
    wanted = name.lower().encode()
    for key, value in scope.get("headers", ()):
        if key.lower() == wanted:
            return bytes(value).decode("latin-1")
    return None


def query(scope: Scope) -> dict[str, str]:
    return dict(parse_qsl(bytes(scope.get("query_string", b"")).decode(), keep_blank_values=True))


def note(scope: Scope, **values: Any) -> None:
    scope.setdefault(NOTES, {}).update(values)


async def read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def send_bytes(
    send: Send,
    status: int,
    body: bytes = b"",
    content_type: str | None = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> None:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers]
    if content_type is not None:
        raw.append((b"content-type", content_type.encode()))
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, payload: Any) -> None:
    await send_bytes(send, status, json.dumps(payload).encode(), "application/json")


async def send_error(send: Send, status: int, message: str) -> None:
    """An E2B-style JSON error: ``{"code": <status>, "message": ...}``."""
    await send_json(send, status, {"code": status, "message": message})


async def lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


@dataclass(frozen=True, slots=True)
class Call:
    """One HTTP request the fake answered. Secrets are never kept: only
    whether the credential the request carried was the right one."""

    plane: Literal["api", "envd"]
    method: str
    path: str
    status: int
    # From the path (control API) or the E2b-Sandbox-Id header (envd).
    sandbox_id: str | None
    # Control API: X-API-KEY matched; envd: X-Access-Token matched.
    authorized: bool
    user_agent: str


class Recorder:
    """Thread-safe log of :class:`Call`s (written on the fake's loop, read by
    tests on theirs)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[Call] = []

    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def clear(self) -> None:
        with self._lock:
            self._calls.clear()

    def wrap(self, plane: Literal["api", "envd"], app: App) -> App:
        """``app`` with every HTTP request it answers recorded (when the
        response starts, so a long stream is recorded while it runs)."""

        async def recorded(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            started = False

            async def send_recording(message: Message) -> None:
                nonlocal started
                if message["type"] == "http.response.start" and not started:
                    started = True
                    self._add(plane, scope, int(message["status"]))
                await send(message)

            try:
                await app(scope, receive, send_recording)
            finally:
                if not started:
                    self._add(plane, scope, 500)

        return recorded

    def _add(self, plane: Literal["api", "envd"], scope: Scope, status: int) -> None:
        notes = scope.get(NOTES, {})
        call = Call(
            plane=plane,
            method=str(scope["method"]),
            path=str(scope["path"]),
            status=status,
            sandbox_id=notes.get("sandbox_id"),
            authorized=bool(notes.get("authorized", False)),
            user_agent=header(scope, "user-agent") or "",
        )
        with self._lock:
            self._calls.append(call)
