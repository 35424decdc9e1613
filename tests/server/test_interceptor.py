"""The one server interceptor: sessiond errors become their status; anything
else becomes INTERNAL with a generic message (details only in the log);
unauthenticated calls never reach the handler."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from sessiond.client.errors import NotFound, Unauthenticated
from sessiond.server.auth import AnonymousAuth
from sessiond.server.identity import Identity, current_identity
from sessiond.server.interceptors import Metadata, ServerInterceptor

reached: list[str] = []


async def boom(request: bytes, context: Any) -> bytes:
    reached.append("boom")
    raise ValueError("secret detail from deep inside")


async def missing(request: bytes, context: Any) -> bytes:
    raise NotFound("session s1 not found")


async def whoami(request: bytes, context: Any) -> bytes:
    return current_identity().tenant_id.encode()


async def stream_fails(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield b"first"
    raise RuntimeError("stream secret")


class DenyAll:
    async def authenticate(self, metadata: Metadata, method: str) -> Identity:
        raise Unauthenticated("no credentials")


async def _serve(auth: Any) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server(interceptors=[ServerInterceptor(auth)])
    handlers = {
        "Boom": grpc.unary_unary_rpc_method_handler(boom),
        "Missing": grpc.unary_unary_rpc_method_handler(missing),
        "WhoAmI": grpc.unary_unary_rpc_method_handler(whoami),
        "Stream": grpc.unary_stream_rpc_method_handler(stream_fails),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Svc", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def test_errors_map_to_statuses_without_leaking(caplog: pytest.LogCaptureFixture) -> None:
    server, target = await _serve(AnonymousAuth("tenant-x"))
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            with (
                caplog.at_level(logging.INFO, logger="sessiond.server.interceptors"),
                pytest.raises(grpc.aio.AioRpcError) as err,
            ):
                await channel.unary_unary("/t.Svc/Boom")(b"")
            assert err.value.code() == grpc.StatusCode.INTERNAL
            assert "secret" not in (err.value.details() or "")
            assert "secret detail from deep inside" in caplog.text  # logged, not sent

            with pytest.raises(grpc.aio.AioRpcError) as err:
                await channel.unary_unary("/t.Svc/Missing")(b"")
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert err.value.details() == "session s1 not found"

            assert await channel.unary_unary("/t.Svc/WhoAmI")(b"") == b"tenant-x"

            call = channel.unary_stream("/t.Svc/Stream")(b"")
            got = []
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for item in call:
                    got.append(item)
            assert got == [b"first"]
            assert err.value.code() == grpc.StatusCode.INTERNAL
            assert "stream secret" not in (err.value.details() or "")
    finally:
        await server.stop(None)


async def test_unauthenticated_calls_never_reach_the_handler() -> None:
    reached.clear()
    server, target = await _serve(DenyAll())
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await channel.unary_unary("/t.Svc/Boom")(b"")
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert reached == []
    finally:
        await server.stop(None)
