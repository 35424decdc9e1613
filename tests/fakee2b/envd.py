"""The fake envd, serving every sandbox behind one address.

Like E2B's sandbox proxy, it picks the sandbox by the ``E2b-Sandbox-Id``
header and answers 502 ``{"message": "The sandbox <id> was not found"}`` for
an unknown, killed or paused one (the SDK maps that to
``SandboxNotRunningException``). Everything but ``/health`` needs the
sandbox's ``X-Access-Token`` (401 otherwise). Routes:

* ``/process.Process/*`` and ``/filesystem.Filesystem/*``: the Connect
  services of :mod:`tests.fakee2b.services`;
* ``GET /files?path=``: the file's bytes (404 missing, 400 a directory);
* ``POST /files?path=``: ``application/octet-stream`` body or
  ``multipart/form-data`` ``file`` parts (the part's filename is the path when
  ``path`` is absent); parents are created, files are opened like envd does
  (``O_TRUNC``, 0666 minus umask); answers the ``[{"name","type","path"}]``
  list; gzip request bodies are accepted;
* ``GET /health``: 204.
"""

from __future__ import annotations

import email.parser
import email.policy
import gzip
import os
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from e2b.envd.filesystem.filesystem_connect import FilesystemASGIApplication
from e2b.envd.process.process_connect import ProcessASGIApplication

from tests.fakee2b import paths
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
from tests.fakee2b.sandboxes import FakeSandbox
from tests.fakee2b.services import FilesystemService, ProcessService

if TYPE_CHECKING:
    from tests.fakee2b.server import FakeE2B

READ_CHUNK = 1 << 20


class Envd:
    def __init__(self, fake: FakeE2B) -> None:
        self._fake = fake
        self._process = ProcessASGIApplication(ProcessService(fake))
        self._filesystem = FilesystemASGIApplication(FilesystemService(fake))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        sandbox_id = header(scope, "e2b-sandbox-id") or ""
        note(scope, sandbox_id=sandbox_id or None)
        sandbox = self._fake.sandbox(sandbox_id)
        if sandbox is None or sandbox.state != "running":
            await read_body(receive)
            await send_json(
                send,
                502,
                {
                    "sandboxId": sandbox_id,
                    "message": f"The sandbox {sandbox_id} was not found",
                    "code": 502,
                },
            )
            return
        path = scope["path"]
        authorized = header(scope, "x-access-token") == sandbox.access_token
        note(scope, authorized=authorized)
        if path == "/health":
            await send_bytes(send, 204)
            return
        if not authorized:
            await read_body(receive)
            await send_error(send, 401, "unauthorized access, please provide a valid access token")
            return
        fault = self._fake.take_fault("envd", path)
        if fault is not None:
            await read_body(receive)
            await send_error(send, fault, "injected failure")
            return
        if path.startswith("/process.Process/"):
            await self._process(scope, receive, send)
        elif path.startswith("/filesystem.Filesystem/"):
            await self._filesystem(scope, receive, send)
        elif path == "/files" and scope["method"] == "GET":
            await _download(sandbox, scope, receive, send)
        elif path == "/files" and scope["method"] == "POST":
            await _upload(sandbox, scope, receive, send)
        else:
            await read_body(receive)
            await send_error(send, 404, f"no route {scope['method']} {path}")


async def _download(sandbox: FakeSandbox, scope: Scope, receive: Receive, send: Send) -> None:
    await read_body(receive)
    path = query(scope).get("path")
    if not path:
        await send_error(send, 400, "path is required")
        return
    host = sandbox.host(path)
    if not host.exists():
        await send_error(send, 404, f"path '{paths.absolute(path)}' does not exist")
        return
    if host.is_dir():
        await send_error(send, 400, f"path '{paths.absolute(path)}' is a directory")
        return
    if "gzip" in (header(scope, "accept-encoding") or ""):
        body = gzip.compress(host.read_bytes())
        await send_bytes(
            send, 200, body, "application/octet-stream", (("content-encoding", "gzip"),)
        )
        return
    size = host.stat().st_size
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/octet-stream"),
                (b"content-length", str(size).encode()),
            ],
        }
    )
    with host.open("rb") as fh:
        while chunk := fh.read(READ_CHUNK):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _open_for_write(sandbox: FakeSandbox, path: str) -> tuple[str, Path, int] | str:
    """(sandbox path, host path, fd) for writing, or an error message."""
    absolute = paths.absolute(path)
    host = sandbox.host(absolute)
    if host.is_dir():
        return f"path is a directory: {absolute}"
    host.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(host, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    return absolute, host, fd


def _written(absolute: str) -> dict[str, str]:
    return {"name": Path(absolute).name, "type": "file", "path": absolute}


async def _upload(sandbox: FakeSandbox, scope: Scope, receive: Receive, send: Send) -> None:
    params = query(scope)
    content_type = header(scope, "content-type") or ""
    gzipped = (header(scope, "content-encoding") or "").lower() == "gzip"
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/octet-stream":
        if not params.get("path"):
            await read_body(receive)
            await send_error(send, 400, "path query parameter is required for raw body upload")
            return
        opened = _open_for_write(sandbox, params["path"])
        if isinstance(opened, str):
            await read_body(receive)
            await send_error(send, 400, opened)
            return
        absolute, _, fd = opened
        inflater = zlib.decompressobj(wbits=31) if gzipped else None
        with os.fdopen(fd, "wb") as fh:
            while True:
                message = await receive()
                chunk = message.get("body", b"")
                fh.write(inflater.decompress(chunk) if inflater else chunk)
                if message["type"] == "http.disconnect" or not message.get("more_body"):
                    break
            if inflater is not None:
                fh.write(inflater.flush())
        await send_json(send, 200, [_written(absolute)])
        return
    if not media.startswith("multipart/"):
        await read_body(receive)
        await send_error(send, 400, f"unsupported content type: {content_type}")
        return
    body = await read_body(receive)
    if gzipped:
        body = gzip.decompress(body)
    form = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    results = []
    for part in form.iter_parts():
        if part.get_param("name", header="content-disposition") != "file":
            continue
        target = params.get("path") or part.get_filename()
        if not target:
            await send_error(send, 400, "no path for the uploaded file")
            return
        opened = _open_for_write(sandbox, target)
        if isinstance(opened, str):
            await send_error(send, 400, opened)
            return
        absolute, _, fd = opened
        payload = part.get_payload(decode=True)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload if isinstance(payload, bytes) else b"")
        results.append(_written(absolute))
    await send_json(send, 200, results)
