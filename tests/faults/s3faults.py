"""S3 faults injected with botocore ``before-send`` hooks on the server's
:class:`S3BlobStore` (its ``events``): a handler sees every attempt of a
request (botocore's retries included) and may answer in place of the
server, send the request itself, or raise what the HTTP layer would.

Hooks run on the store's worker threads: their counters take a lock.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.compat import HTTPHeaders
from botocore.exceptions import ReadTimeoutError
from botocore.httpsession import URLLib3Session
from urllib3.exceptions import ProtocolError

from sessiond.server.storage.s3_blob import S3BlobStore, no_expect_continue

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)

Match = Callable[[AWSPreparedRequest], bool]


def packs(request: AWSPreparedRequest) -> bool:
    return "/packs/" in request.url


def big_ranged_read(request: AWSPreparedRequest, at_least: int = 1 << 20) -> bool:
    """A ranged GET of at least ``at_least`` bytes: data chunks being read
    for a restore (trees are read in small ranges)."""
    value = request.headers.get("Range", b"")
    text = value.decode() if isinstance(value, bytes) else str(value)
    m = re.fullmatch(r"bytes=(\d+)-(\d+)", text)
    return m is not None and int(m.group(2)) - int(m.group(1)) + 1 >= at_least


def _headers(items: Any) -> HTTPHeaders:
    headers = HTTPHeaders()
    for k, v in dict(items).items():
        headers[k] = v
    return headers


class _Body:
    """A response body for :class:`AWSResponse` (``content`` reads ``stream()``)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._data

    def read(self, amt: int | None = None) -> bytes:
        data, self._data = self._data, b""
        return data

    def close(self) -> None:
        pass


class _ResetBody:
    """A body whose connection is reset by the peer after the response
    headers and part of the data came in."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    def read(self, amt: int | None = None) -> bytes:
        length = int(self._raw.headers.get("Content-Length", "0"))
        self._raw.read(max(1, length // 2))  # part of it arrives…
        self._raw.release_conn()
        raise ProtocolError(  # …then the peer resets the connection
            "Connection broken: ConnectionResetError(104, 'Connection reset by peer')",
            ConnectionResetError(104, "Connection reset by peer"),
        )

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.read()

    def close(self) -> None:
        self._raw.release_conn()


@dataclass
class Fault:
    """Injects into the first ``times`` attempts of every request that
    ``match``es (``times`` None: into every attempt). ``seen`` counts the
    matching attempts, ``injected`` those that were faulted, ``tries`` the
    attempts per request."""

    match: Match
    times: int | None = None
    seen: int = 0
    injected: int = 0
    # Statuses S3 answered to requests a fault sent itself.
    statuses: list[int] = field(default_factory=list)
    # Matching attempts per request (method, URL, range): botocore's and the
    # store's retries of one request share a key.
    tries: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _http: URLLib3Session = field(default_factory=URLLib3Session, repr=False)

    def _claim(self, request: AWSPreparedRequest) -> bool:
        if not self.match(request):
            return False
        with self._lock:
            self.seen += 1
            key = (request.method, request.url, str(request.headers.get("Range", "")))
            self.tries[key] += 1
            if self.times is not None and self.tries[key] > self.times:
                return False
            self.injected += 1
            return True

    def send(self, request: AWSPreparedRequest) -> AWSResponse:
        """Send the request for real (as the store would)."""
        no_expect_continue(request)
        return self._http.send(request)


class SlowDown(Fault):
    """503 SlowDown: S3's throttling answer, retried by botocore."""

    def __call__(self, request: AWSPreparedRequest, **_: Any) -> AWSResponse | None:
        if not self._claim(request):
            return None
        headers = _headers(
            {"Content-Type": "application/xml", "Content-Length": str(len(SLOW_DOWN))}
        )
        return AWSResponse(request.url, 503, headers, _Body(SLOW_DOWN))


class TimeoutAfterLanding(Fault):
    """The request reaches S3 and succeeds, but the reply is lost: the
    client times out reading it."""

    def __call__(self, request: AWSPreparedRequest, **_: Any) -> AWSResponse | None:
        if not self._claim(request):
            return None
        response = self.send(request)
        self.statuses.append(response.status_code)
        raise ReadTimeoutError(endpoint_url=request.url)


class ResetMidBody(Fault):
    """The response starts (status, headers, part of the body), then the
    connection is reset."""

    def __call__(self, request: AWSPreparedRequest, **_: Any) -> AWSResponse | None:
        if not self._claim(request):
            return None
        request.stream_output = True
        real = self.send(request)
        assert real.status_code in (200, 206), real.status_code
        return AWSResponse(
            request.url, real.status_code, _headers(real.headers), _ResetBody(real.raw)
        )


class DamagedInTransit(Fault):
    """The object arrives with a byte flipped, under the checksum S3 keeps
    for it (AWS sends ``x-amz-checksum-sha256`` when asked; SeaweedFS never
    does, so the header is added as AWS would send it)."""

    def __call__(self, request: AWSPreparedRequest, **_: Any) -> AWSResponse | None:
        if not self._claim(request):
            return None
        real = self.send(request)
        data = real.content
        headers = dict(real.headers)
        headers["x-amz-checksum-sha256"] = base64.b64encode(hashlib.sha256(data).digest()).decode()
        damaged = bytes([data[0] ^ 0xFF]) + data[1:]
        return AWSResponse(request.url, real.status_code, _headers(headers), _Body(damaged))


class Hook(Fault):
    """Calls ``action`` (say, killing the S3 server) before the ``after``-th
    matching request goes out; the request itself is then sent normally."""

    def __init__(self, match: Match, after: int, action: Callable[[], None]) -> None:
        super().__init__(match, times=1)
        self._after = after
        self._action = action
        self.done = threading.Event()

    def __call__(self, request: AWSPreparedRequest, **_: Any) -> None:
        if not self.match(request):
            return
        with self._lock:
            self.seen += 1
            fire = self.seen == self._after
        if fire:
            self._action()
            self.injected += 1
            self.done.set()


@contextlib.contextmanager
def injected(store: Any, operation: str, handler: Callable[..., Any]) -> Iterator[None]:
    """``handler`` on ``before-send.s3.<operation>`` of ``store`` (the
    server's blob store, which must be an :class:`S3BlobStore`) for the
    block."""
    assert isinstance(store, S3BlobStore), store
    event = f"before-send.s3.{operation}"
    store.events.register_first(event, handler)
    try:
        yield
    finally:
        store.events.unregister(event, handler)
