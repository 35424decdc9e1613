"""The one server interceptor: authenticate, run, map errors, log one line.

* Authentication resolves the caller's :class:`Identity` (the tenant comes only
  from credentials) and makes it current for the RPC.
* :class:`~sessiond.client.errors.SessiondError` becomes its gRPC status with
  its message; any other exception becomes INTERNAL with a generic message —
  the traceback is logged, never sent.
* One log line per RPC: method, status, duration, tenant and the ids/byte
  counts servicers attached with :func:`log_field`. Never request content.
  The fields also travel as ``record.rpc`` (a dict) for the JSON log format.
* Metrics (when given): latency histogram and counter by method and code.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Protocol

import grpc
from grpc.aio import ServicerContext

from sessiond.client.errors import SessiondError

from .identity import (
    Identity,
    begin_log_fields,
    end_log_fields,
    reset_identity,
    set_identity,
)
from .metrics import ServerMetrics

log = logging.getLogger(__name__)

# Infrastructure services that answer without credentials.
PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

Metadata = Sequence[tuple[str, str | bytes]]


class Authenticator(Protocol):
    async def authenticate(self, metadata: Metadata, method: str) -> Identity:
        """The caller's identity. Raises ``Unauthenticated`` (no/bad/expired
        credentials) or ``PermissionDenied`` (valid credentials, wrong RPC)."""
        ...


class ServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, authenticator: Authenticator, metrics: ServerMetrics | None = None) -> None:
        self._auth = authenticator
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or method.startswith(PUBLIC_PREFIXES):
            return handler
        metadata: Metadata = tuple(details.invocation_metadata or ())
        return _wrap(handler, method, metadata, self._auth, self._metrics)


async def _enter(
    context: ServicerContext, method: str, metadata: Metadata, auth: Authenticator
) -> tuple[Identity | None, SessiondError | None]:
    try:
        return await auth.authenticate(metadata, method), None
    except SessiondError as exc:
        return None, exc


def _status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, SessiondError):
        return exc.code, exc.message
    return grpc.StatusCode.INTERNAL, "internal error; see the server log"


def _finish(
    method: str,
    code: grpc.StatusCode,
    started: float,
    ident: Identity | None,
    fields: dict[str, object],
    metrics: ServerMetrics | None,
) -> None:
    """The RPC's log line and metrics."""
    seconds = time.monotonic() - started
    if metrics is not None:
        metrics.observe_rpc(method, code.name, seconds)
    extra = " ".join(f"{k}={v}" for k, v in fields.items())
    tenant = ident.tenant_id if ident else "-"
    rpc: dict[str, object] = {
        "method": method,
        "code": code.name,
        "tenant": tenant,
        "duration_ms": round(seconds * 1000, 1),
        **fields,
    }
    log.info(
        "rpc %s code=%s tenant=%s duration_ms=%.1f %s",
        method,
        code.name,
        tenant,
        seconds * 1000,
        extra,
        extra={"rpc": rpc},
    )


class _RpcScope:
    """One RPC's shared handling: authenticate and make the identity current
    on entry; on exit map the error to a status and write the log line and
    metrics. Used around unary and streaming handlers alike."""

    def __init__(
        self,
        method: str,
        metadata: Metadata,
        auth: Authenticator,
        metrics: ServerMetrics | None,
        context: ServicerContext,
    ) -> None:
        self._method = method
        self._metadata = metadata
        self._auth = auth
        self._metrics = metrics
        self._context = context
        self._code = grpc.StatusCode.OK

    async def __aenter__(self) -> None:
        self._started = time.monotonic()
        self._fields, self._ftoken = begin_log_fields()
        self._ident, err = await _enter(self._context, self._method, self._metadata, self._auth)
        self._itoken = set_identity(self._ident)
        if err is not None:
            # __aexit__ does not run when __aenter__ raises: finish here.
            self._code = err.code
            self._close()
            await self._context.abort(err.code, err.message)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        try:
            if exc is None:
                return False
            if isinstance(exc, asyncio.CancelledError):
                self._code = grpc.StatusCode.CANCELLED
                return False
            if _is_abort(exc):
                self._code = _context_code(self._context)
                return False
            if not isinstance(exc, SessiondError):
                log.error("unhandled error in %s", self._method, exc_info=exc)
            self._code, message = _status_of(exc)
            await self._context.abort(self._code, message)
            return False
        finally:
            self._close()

    def _close(self) -> None:
        _finish(self._method, self._code, self._started, self._ident, self._fields, self._metrics)
        reset_identity(self._itoken)
        end_log_fields(self._ftoken)


def _wrap(
    handler: grpc.RpcMethodHandler,
    method: str,
    metadata: Metadata,
    auth: Authenticator,
    metrics: ServerMetrics | None,
) -> grpc.RpcMethodHandler:
    def scope(context: ServicerContext) -> _RpcScope:
        return _RpcScope(method, metadata, auth, metrics, context)

    if handler.response_streaming:
        inner_stream: Callable[[Any, ServicerContext], AsyncIterator[Any]] = (
            handler.unary_stream or handler.stream_stream
        )

        async def streaming(request: Any, context: ServicerContext) -> AsyncIterator[Any]:
            async with scope(context):
                async for item in inner_stream(request, context):
                    yield item

        factory = (
            grpc.unary_stream_rpc_method_handler
            if handler.unary_stream
            else grpc.stream_stream_rpc_method_handler
        )
        return factory(
            streaming,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    inner_unary: Callable[[Any, ServicerContext], Awaitable[Any]] = (
        handler.unary_unary or handler.stream_unary
    )

    async def unary(request: Any, context: ServicerContext) -> Any:
        async with scope(context):
            return await inner_unary(request, context)

    factory = (
        grpc.unary_unary_rpc_method_handler
        if handler.unary_unary
        else grpc.stream_unary_rpc_method_handler
    )
    return factory(
        unary,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _is_abort(exc: BaseException) -> bool:
    # context.abort() raises grpc.aio.AbortError; let it through untouched.
    return isinstance(exc, grpc.aio.AbortError)


def _context_code(context: ServicerContext) -> grpc.StatusCode:
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
