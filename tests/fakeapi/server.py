"""FakeMessagesAPI: a loopback stand-in for the Anthropic Messages API.

The real Claude Code CLI talks to it through ``ANTHROPIC_BASE_URL``. It runs a
stdlib ``ThreadingHTTPServer`` on a daemon thread bound to 127.0.0.1, so sync
tests, async tests and any number of CLI processes can share one instance.

Replies to main-agent requests come, in order of precedence, from:

1. the script: a FIFO of :class:`~tests.fakeapi.steps.Step` (or responders,
   callables ``RecordedRequest -> Step``), one entry consumed per request;
2. the rules: responders added with :meth:`FakeMessagesAPI.respond_with`, asked
   in order, the first non-None answer wins (rules are never consumed);
3. ``default_step`` (text "ok").

Side requests (anything :attr:`FakeMessagesAPI.is_side_request` flags: by
default a request that offers no tools, as title/summary generation does) get
``side_step`` and never consume the script. Every request is recorded. A
responder that raises makes the reply a 500 and is re-raised when the ``with``
block exits (also kept in ``errors``).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import socket
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from tests.fakeapi.recorded import RecordedRequest
from tests.fakeapi.steps import Step, api_error, text

logger = logging.getLogger(__name__)

JSON = dict[str, Any]
Responder = Callable[[RecordedRequest], "Step | None"]
ScriptEntry = Step | Callable[[RecordedRequest], Step]

FAKE_MODELS = ("claude-opus-5-5", "claude-sonnet-4-5", "claude-haiku-4-5")


def default_is_side_request(body: JSON) -> bool:
    """A request without tools is a side request (title, summary, classifier)."""
    return not body.get("tools")


class FakeMessagesAPI:
    """Scriptable fake of ``POST /v1/messages`` (SSE and JSON) on 127.0.0.1.

    Thread-safe. ``start()`` / ``stop()`` or use as a context manager.
    """

    def __init__(self, *, default_step: Step | None = None, side_step: Step | None = None) -> None:
        self.default_step: Step = default_step or text("ok")
        self.side_step: Step = side_step or text("Fake side reply")
        self.is_side_request: Callable[[JSON], bool] = default_is_side_request
        self._script: deque[ScriptEntry] = deque()
        self._rules: list[Responder] = []
        self._records: list[RecordedRequest] = []
        self._log: list[tuple[str, str, int]] = []
        self._cond = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self._conns: set[socket.socket] = set()
        self._thread: threading.Thread | None = None
        self.errors: list[Exception] = []  # raised by responders; re-raised on __exit__

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> FakeMessagesAPI:
        """Bind a free port on 127.0.0.1 and serve on a daemon thread. Idempotent."""
        if self._server is None:
            server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
            server.daemon_threads = True
            server.block_on_close = False  # the CLI keeps connections alive
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="fake-messages-api",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the socket and cut open keep-alive connections
        (a CLI still running sees the API go away). Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        with self._cond:
            conns, self._conns = set(self._conns), set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeMessagesAPI:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if exc is None and self.errors:
            raise AssertionError("a fake API responder failed") from self.errors[0]

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash); only valid once started."""
        if self._server is None:
            raise RuntimeError("FakeMessagesAPI is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # -- scripting -----------------------------------------------------------

    def script(self, *steps: ScriptEntry) -> None:
        """Queue replies for the next main-agent requests, one per request."""
        with self._cond:
            self._script.extend(steps)

    def add_turn(self, *steps: ScriptEntry) -> None:
        """Queue one whole agent turn: tool steps, then exactly one final step.

        Raises ValueError when a Step before the last ends the turn, or the last
        one does not (callables are not checked).
        """
        if not steps:
            raise ValueError("a turn needs at least one step")
        fixed = [(i, s) for i, s in enumerate(steps) if isinstance(s, Step)]
        for i, step in fixed:
            last = i == len(steps) - 1
            if step.error is None and step.is_final != last:
                where = "last" if last else f"#{i}"
                raise ValueError(f"step {where} of a turn: is_final={step.is_final}")
        self.script(*steps)

    def respond_with(self, responder: Responder) -> None:
        """Add a standing rule, asked when the script is empty (None = pass)."""
        with self._cond:
            self._rules.append(responder)

    def reset(self) -> None:
        """Drop the script, the rules and every record."""
        with self._cond:
            self._script.clear()
            self._rules.clear()
            self._records.clear()
            self._log.clear()

    @property
    def pending(self) -> int:
        """Scripted entries not yet consumed."""
        with self._cond:
            return len(self._script)

    # -- records -------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Main-agent requests, oldest first (a snapshot copy)."""
        with self._cond:
            return [r for r in self._records if r.kind == "main"]

    @property
    def side_requests(self) -> list[RecordedRequest]:
        """Requests answered with ``side_step``."""
        with self._cond:
            return [r for r in self._records if r.kind == "side"]

    @property
    def http_log(self) -> list[tuple[str, str, int]]:
        """``(method, path, status)`` of every HTTP request, for diagnostics."""
        with self._cond:
            return list(self._log)

    def last_user_texts(self) -> list[str]:
        """User prompts in the newest main request's history (no reminders)."""
        reqs = self.requests
        if not reqs:
            raise AssertionError("the fake API received no main-agent request")
        return reqs[-1].user_texts()

    @staticmethod
    def all_text_in(request: RecordedRequest) -> str:
        """Every text the request carries (system, messages, tool I/O)."""
        return request.all_text()

    def wait_for_requests(self, n: int, timeout: float = 30.0) -> list[RecordedRequest]:
        """Block until ``n`` main requests were recorded; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while sum(r.kind == "main" for r in self._records) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"fewer than {n} main requests after {timeout}s")
                self._cond.wait(left)
        return self.requests

    # -- used by the handler -------------------------------------------------

    def _track(self, conn: socket.socket, open_: bool) -> None:
        with self._cond:
            if open_:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def _log_http(self, method: str, path: str, status: int) -> None:
        with self._cond:
            self._log.append((method, path, status))

    def _answer(self, path: str, headers: dict[str, str], body: JSON) -> Step:
        side = self.is_side_request(body)
        record = RecordedRequest(path, headers, body, "side" if side else "main")
        with self._cond:
            self._records.append(record)
            self._cond.notify_all()
            if side:
                return self.side_step
            entry = self._script.popleft() if self._script else None
            rules = list(self._rules)
        if entry is not None:
            return entry if isinstance(entry, Step) else entry(record)
        for rule in rules:
            step = rule(record)
            if step is not None:
                return step
        return self.default_step


def _make_handler(api: FakeMessagesAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        fake = api

    return Handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-anthropic/1"
    fake: FakeMessagesAPI

    def setup(self) -> None:
        super().setup()
        self.fake._track(self.connection, True)

    def finish(self) -> None:
        self.fake._track(self.connection, False)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("fakeapi: " + format, *args)

    # -- plumbing --------------------------------------------------------------

    def _read_json(self) -> JSON:
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        encoding = (self.headers.get("content-encoding") or "").lower()
        if encoding == "gzip":
            raw = gzip.decompress(raw)
        elif encoding == "deflate":
            raw = zlib.decompress(raw)
        parsed = json.loads(raw or b"{}")
        return parsed if isinstance(parsed, dict) else {}

    def _send_json(self, status: int, payload: JSON) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", "req_fake")
        self.end_headers()
        self.wfile.write(data)
        self.fake._log_http(self.command, self.path, status)

    def _send_sse(self, step: Step, model: str) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("request-id", "req_fake")
        self.end_headers()
        for i, (event, data) in enumerate(step.sse_events(model)):
            if i and step.event_delay:
                time.sleep(step.event_delay)
            frame = f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(frame), frame))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        self.fake._log_http(self.command, self.path, 200)

    def _not_found(self) -> None:
        self._send_json(
            404,
            {"type": "error", "error": {"type": "not_found_error", "message": self.path}},
        )

    # -- routes ----------------------------------------------------------------

    def do_POST(self) -> None:
        route = self.path.split("?", 1)[0].rstrip("/")
        if route == "/v1/messages":
            self._messages()
        elif route == "/v1/messages/count_tokens":
            body = self._read_json()
            self._send_json(200, {"input_tokens": max(1, len(json.dumps(body)) // 4)})
        else:
            self._read_json()
            self._not_found()

    def do_GET(self) -> None:
        route = self.path.split("?", 1)[0].rstrip("/")
        if route == "/v1/models":
            data = [{"type": "model", "id": m, "display_name": m} for m in FAKE_MODELS]
            self._send_json(200, {"data": data, "has_more": False})
        elif route == "":
            self._send_json(200, {})
        else:
            self._not_found()

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
        self.fake._log_http("HEAD", self.path, 200)

    def _messages(self) -> None:
        body = self._read_json()
        headers = {k.lower(): v for k, v in self.headers.items() if k.lower() != "x-api-key"}
        try:
            step = self.fake._answer(self.path, headers, body)
        except Exception as exc:  # a test's responder is broken: surface it, don't hang
            logger.exception("fake API responder failed")
            with self.fake._cond:
                self.fake.errors.append(exc)
            step = api_error(500, "api_error", f"fake responder failed: {exc!r}")
        if step.delay:
            time.sleep(step.delay)
        if step.error is not None:
            self._send_json(step.error[0], step.error_body())
            return
        model = str(body.get("model") or FAKE_MODELS[0])
        if body.get("stream"):
            self._send_sse(step, model)
        else:
            self._send_json(200, step.to_message(model))
