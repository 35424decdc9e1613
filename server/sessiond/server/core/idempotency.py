"""Idempotency keys for mutating RPCs (CreateSession, Fork, Restore, Suspend).

A caller that sends an ``idempotency_key`` may retry the call as often as it
likes (a timeout, a dropped connection, a crashed client) and gets one
execution:

* same key, same request → the first call's response, replayed byte for byte
  (not a second session or fork) — for :data:`DEFAULT_TTL` (24 h);
* same key, different request → ``InvalidArgument`` naming the key;
* concurrent calls with one key → one executes; the others wait for it (up
  to ``wait`` seconds, polling the store, so this holds across replicas) and
  get its response, or ``Aborted`` ("still in progress; retry") if it takes
  longer. A retry after that gets the response once it is recorded.

"The same request" is the SHA-256 of the request's deterministic protobuf
serialization with the key field cleared (:func:`request_digest`), compared
per tenant and method. Only successes are recorded: when the execution
raises, the claim is dropped and a retry executes afresh.

The execution is shielded from the caller's cancellation (a client that
gives up mid-Fork does not leave half a fork behind an unfinished claim): it
runs to the end, and its response is recorded for the retry. A claim whose
holder died (its replica was killed) is taken over after ``stale_after``
seconds; until then retries get ``Aborted``.

No grpc here: responses are opaque bytes to this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from google.protobuf.message import Message

from sessiond.client.errors import Aborted, InvalidArgument

from ..storage.metadata import IdempotencyTable

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TTL = 24 * 3600.0
DEFAULT_STALE_AFTER = 15 * 60.0
DEFAULT_WAIT = 10.0
MAX_KEY_BYTES = 256


def request_digest(request: Message, key_field: str = "idempotency_key") -> bytes:
    """SHA-256 of ``request``'s deterministic serialization with
    ``key_field`` cleared (map order and the key itself do not matter)."""
    copy = type(request)()
    copy.CopyFrom(request)
    copy.ClearField(key_field)
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).digest()


def check_key(key: str) -> str:
    """A key is at most 256 bytes of printable text."""
    size = len(key.encode())
    if size > MAX_KEY_BYTES:
        raise InvalidArgument(f"idempotency_key is {size} bytes, over the limit of {MAX_KEY_BYTES}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        raise InvalidArgument("idempotency_key contains control characters")
    return key


class Idempotency:
    """Runs executions at most once per (tenant, method, key); see the module
    docstring for the contract."""

    def __init__(
        self,
        table: IdempotencyTable,
        *,
        ttl: float = DEFAULT_TTL,
        stale_after: float = DEFAULT_STALE_AFTER,
        wait: float = DEFAULT_WAIT,
        poll: float = 0.05,
    ) -> None:
        self._table = table
        self.ttl = ttl
        self.stale_after = stale_after
        self.wait = wait
        self._poll = poll
        # Executions that outlived their caller; referenced until done.
        self._detached: set[asyncio.Future[Any]] = set()

    async def run(
        self,
        tenant_id: str,
        method: str,
        key: str,
        request_hash: bytes,
        execute: Callable[[], Awaitable[T]],
        encode: Callable[[T], bytes],
        decode: Callable[[bytes], T],
    ) -> T:
        """``execute()`` once for this key, or the recorded response of the
        execution that already ran (``decode``d). An empty key executes
        unconditionally. ``InvalidArgument`` for a malformed key or one
        used with another request; ``Aborted`` if the first execution is
        still running after ``wait`` seconds."""
        if not key:
            return await execute()
        check_key(key)
        deadline = time.monotonic() + self.wait
        delay = self._poll
        while True:
            found = await self._table.claim(
                tenant_id, method, key, request_hash, stale_after=self.stale_after, ttl=self.ttl
            )
            if found is None:
                break
            if found.request_hash != request_hash:
                raise InvalidArgument(
                    f"idempotency_key {key!r} was already used with a different {method} request"
                )
            if found.response is not None:
                log.info("idempotent replay method=%s tenant=%s", method, tenant_id)
                return decode(found.response)
            if time.monotonic() >= deadline:
                raise Aborted(
                    f"a {method} request with idempotency_key {key!r} is still in progress; retry"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

        async def execute_and_record() -> T:
            try:
                result = await execute()
            except BaseException:
                with contextlib.suppress(Exception):
                    await self._table.release(tenant_id, method, key, request_hash)
                raise
            try:
                await self._table.complete(tenant_id, method, key, request_hash, encode(result))
            except Exception:
                # The work is done; only its record is missing. Retries see an
                # unfinished claim (Aborted) until it goes stale.
                log.warning(
                    "recording idempotent response failed method=%s tenant=%s",
                    method,
                    tenant_id,
                    exc_info=True,
                )
            return result

        task: asyncio.Task[T] = asyncio.ensure_future(execute_and_record())
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                self._detached.add(task)
                task.add_done_callback(self._forget)
            raise

    def _forget(self, task: asyncio.Future[Any]) -> None:
        self._detached.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.info("detached idempotent execution failed: %s", type(task.exception()).__name__)

    async def close(self, grace: float | None = None) -> None:
        """Wait (up to ``grace`` seconds) for executions whose callers went
        away, so their responses are recorded before the stores close."""
        if self._detached:
            await asyncio.wait(set(self._detached), timeout=grace)

    async def expire(self, *, limit: int = 1000) -> int:
        """Delete keys older than the TTL (up to ``limit``); GC calls this."""
        return await self._table.expire(self.ttl, limit=limit)
