"""The sessiond exception tree, shared by server, hydrator and clients.

Every error carries the gRPC status code it travels as. The server's error
interceptor turns these into statuses (anything else becomes INTERNAL, logged
with its traceback but never sent); the client turns statuses back into these,
so callers never handle grpc types::

    SessiondError
     ├── InvalidArgument      INVALID_ARGUMENT    the request is malformed
     ├── NotFound             NOT_FOUND           no such thing (or not yours)
     ├── AlreadyExists        ALREADY_EXISTS
     ├── FailedPrecondition   FAILED_PRECONDITION wrong state for this call
     ├── Aborted              ABORTED             lost a lease / a race; retry
     ├── ResourceExhausted    RESOURCE_EXHAUSTED  a limit or quota was hit
     ├── Unavailable          UNAVAILABLE         a dependency is down; retry
     ├── DataLoss             DATA_LOSS           stored data is missing/corrupt
     ├── Unauthenticated      UNAUTHENTICATED     no or bad credentials
     ├── PermissionDenied     PERMISSION_DENIED   credentials lack the right
     ├── Unimplemented        UNIMPLEMENTED
     ├── DeadlineExceeded     DEADLINE_EXCEEDED
     ├── Cancelled            CANCELLED
     └── Internal             INTERNAL            a bug; details are in the server log
"""

from __future__ import annotations

import grpc


class SessiondError(Exception):
    """Base of every sessiond error. ``code`` is the gRPC status it maps to."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidArgument(SessiondError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(SessiondError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(SessiondError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(SessiondError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(SessiondError):
    code = grpc.StatusCode.ABORTED


class ResourceExhausted(SessiondError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(SessiondError):
    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(SessiondError):
    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(SessiondError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(SessiondError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unimplemented(SessiondError):
    code = grpc.StatusCode.UNIMPLEMENTED


class DeadlineExceeded(SessiondError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(SessiondError):
    code = grpc.StatusCode.CANCELLED


class Internal(SessiondError):
    code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[SessiondError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Aborted,
        ResourceExhausted,
        Unavailable,
        DataLoss,
        Unauthenticated,
        PermissionDenied,
        Unimplemented,
        DeadlineExceeded,
        Cancelled,
        Internal,
    )
}


def error_for_code(code: grpc.StatusCode, message: str) -> SessiondError:
    """The sessiond error for a gRPC status (UNKNOWN and others → SessiondError)."""
    cls = _BY_CODE.get(code)
    if cls is None:
        err = SessiondError(message)
        err.code = code
        return err
    return cls(message)


def from_rpc_error(exc: grpc.RpcError) -> SessiondError:
    """Translate a grpc.RpcError (sync or aio) into the sessiond tree."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return error_for_code(code, details or code.name)
