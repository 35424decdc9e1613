"""Channel construction and call plumbing shared by the clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from .errors import SessiondError, from_rpc_error

T = TypeVar("T")

DEFAULT_MAX_MESSAGE_BYTES = 64 << 20


def channel_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_permit_without_calls", 0),
    ]


def aio_channel(
    target: str,
    *,
    root_certificates: bytes | None = None,
    tls: bool = False,
    client_cert: bytes | None = None,
    client_key: bytes | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> grpc.aio.Channel:
    """A channel to ``target``: plaintext unless TLS is asked for.

    TLS is used when ``tls`` is true or any of the PEM arguments is given.
    ``root_certificates`` are the CAs trusted for the server's certificate
    (None: gRPC's default roots, which honour
    ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``). ``client_cert`` and ``client_key``
    (PEM, both or neither — ``ValueError`` otherwise) are presented to a
    server that requires client certificates (mTLS).
    """
    options = channel_options(max_message_bytes)
    if (client_cert is None) != (client_key is None):
        raise ValueError("client_cert and client_key must be given together")
    if tls or root_certificates is not None or client_cert is not None:
        creds = grpc.ssl_channel_credentials(
            root_certificates=root_certificates,
            private_key=client_key,
            certificate_chain=client_cert,
        )
        return grpc.aio.secure_channel(target, creds, options=options)
    return grpc.aio.insecure_channel(target, options=options)


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


async def call(fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    """Await a unary call, translating grpc errors into the sessiond tree."""
    try:
        return await fn(*args, **kwargs)
    except grpc.RpcError as exc:
        raise from_rpc_error(exc) from None


async def stream(iterator: AsyncIterator[T]) -> AsyncIterator[T]:
    """Iterate a server stream, translating grpc errors into the sessiond tree."""
    try:
        async for item in iterator:
            yield item
    except grpc.RpcError as exc:
        raise from_rpc_error(exc) from None


__all__ = ["SessiondError", "aio_channel", "auth_metadata", "call", "stream"]
