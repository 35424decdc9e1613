"""The fake E2B control API: REST + JSON, authenticated by ``X-API-KEY``.

Routes (what e2b 2.6x calls): ``POST /v2/sandboxes`` (201), ``GET
/v2/sandboxes`` (list, metadata/state filters), ``GET /sandboxes/{id}``,
``DELETE /sandboxes/{id}`` (204/404), ``POST /sandboxes/{id}/timeout`` (204),
``POST /sandboxes/{id}/pause`` (204, 409 when already paused), ``POST
/v2/sandboxes/{id}/connect`` (200 running / 201 resumed). Errors are
``{"code", "message"}`` like the real API; a wrong or missing key is 401.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from tests.fakee2b.asgi import (
    Receive,
    Scope,
    Send,
    header,
    lifespan,
    note,
    query,
    read_body,
    send_bytes,
    send_error,
    send_json,
)

if TYPE_CHECKING:
    from tests.fakee2b.server import FakeE2B

_SANDBOX = re.compile(r"^/(?:v2/)?sandboxes/([^/]+)(/[a-z]+)?$")


class ControlAPI:
    def __init__(self, fake: FakeE2B) -> None:
        self._fake = fake

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        method, path = scope["method"], scope["path"]
        match = _SANDBOX.match(path)
        if match:
            note(scope, sandbox_id=match.group(1))
        authorized = header(scope, "x-api-key") == self._fake.api_key
        note(scope, authorized=authorized)
        body = await read_body(receive)
        if not authorized:
            await send_error(send, 401, "Invalid API key")
            return
        fault = self._fake.take_fault("api", path)
        if fault is not None:
            await send_error(send, fault, "injected failure")
            return
        try:
            payload: Any = json.loads(body) if body else {}
        except ValueError:
            await send_error(send, 400, "invalid JSON body")
            return
        if path == "/v2/sandboxes" and method == "POST":
            await self._create(send, payload)
        elif path == "/v2/sandboxes" and method == "GET":
            await self._list(scope, send)
        elif match:
            await self._sandbox(send, method, path, match.group(1), match.group(2), payload)
        else:
            await send_error(send, 404, f"no route {method} {path}")

    async def _create(self, send: Send, payload: dict[str, Any]) -> None:
        template = payload.get("templateID")
        if not isinstance(template, str) or not template:
            await send_error(send, 400, "templateID is required")
            return
        sandbox = self._fake.create_sandbox(
            template=template,
            timeout=int(payload.get("timeout") or 300),
            env_vars=dict(payload.get("envVars") or {}),
            metadata=dict(payload.get("metadata") or {}),
        )
        await send_json(send, 201, sandbox.created())

    async def _list(self, scope: Scope, send: Send) -> None:
        params = query(scope)
        wanted_meta = dict(parse_qsl(params.get("metadata", "")))
        states = set(filter(None, params.get("state", "").split(",")))
        out = []
        for sandbox in self._fake.sandboxes():
            if states and sandbox.state not in states:
                continue
            if any(sandbox.metadata.get(k) != v for k, v in wanted_meta.items()):
                continue
            out.append(sandbox.listed())
        await send_json(send, 200, out)

    async def _sandbox(
        self,
        send: Send,
        method: str,
        path: str,
        sandbox_id: str,
        action: str | None,
        payload: dict[str, Any],
    ) -> None:
        sandbox = self._fake.sandbox(sandbox_id)
        if sandbox is None:
            await send_error(
                send, 404, f"sandbox \"{sandbox_id}\" doesn't exist or you don't have access to it"
            )
            return
        v2 = path.startswith("/v2/")
        if action is None and method == "GET" and not v2:
            await send_json(send, 200, sandbox.listed())
        elif action is None and method == "DELETE" and not v2:
            await self._fake.kill_sandbox(sandbox_id)
            await send_bytes(send, 204)
        elif action == "/timeout" and method == "POST" and not v2:
            sandbox.set_timeout(int(payload.get("timeout", 0)))
            await send_bytes(send, 204)
        elif action == "/pause" and method == "POST" and not v2:
            if sandbox.state == "paused":
                await send_error(send, 409, f"sandbox {sandbox_id} is already paused")
                return
            sandbox.pause()
            await send_bytes(send, 204)
        elif action == "/connect" and method == "POST" and v2:
            resumed = sandbox.state == "paused"
            timeout = payload.get("timeout")
            if resumed:
                sandbox.resume(int(timeout) if timeout else None)
            elif timeout:
                # The API only ever extends a running sandbox's lifetime.
                sandbox.extend(int(timeout))
            await send_json(send, 201 if resumed else 200, sandbox.created())
        else:
            await send_error(send, 404, f"no route {method} {path}")
