"""asyncpg → sessiond error translation, and the transaction runner that
applies it once for every PostgreSQL table.

Mapping (anything a caller may see)::

    class 22 data exception, client-side encode error   → InvalidArgument
    class 08 connection, 57 operator intervention,
    53 insufficient resources, closed connection/pool,
    OSError, timeout                                     → Unavailable
    class 40 serialization failure / deadlock            → retried, then Aborted
    anything else                                        → Internal (logged)

Integrity violations (unique, foreign key) are translated by the caller,
which knows what the constraint means (``AlreadyExists``, ``NotFound``).
Messages name the operation and the SQLSTATE, never parameters or content.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
from asyncpg.exceptions import _base as asyncpg_base

from sessiond.client.errors import (
    Aborted,
    Internal,
    InvalidArgument,
    SessiondError,
    Unavailable,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Attempts for a transaction that PostgreSQL rolled back as a deadlock victim
#: or serialization failure (always safe to re-run: nothing was committed).
TX_ATTEMPTS = 5

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
    asyncpg.exceptions.ConnectionFailureError,
    OSError,
    TimeoutError,
)


def _one_line(text: object, limit: int = 200) -> str:
    stripped = str(text or "").strip()
    line = stripped.splitlines()[0] if stripped else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def translate(exc: BaseException, what: str) -> SessiondError:
    """The sessiond error for a driver exception raised while doing ``what``."""
    if isinstance(exc, SessiondError):
        return exc
    if isinstance(exc, asyncpg.DataError | asyncpg_base.DataError | UnicodeError):
        # The server's primary message ("invalid input syntax for type json",
        # "unsupported Unicode escape sequence") carries no row content.
        msg = exc.message if isinstance(exc, asyncpg.PostgresError) else type(exc).__name__
        return InvalidArgument(f"{what}: value rejected by the database: {_one_line(msg)}")
    if isinstance(exc, _UNAVAILABLE):
        return Unavailable(f"{what}: PostgreSQL unavailable: {_describe(exc)}")
    if isinstance(exc, asyncpg.InterfaceError):
        text = str(exc)
        if "closed" in text or "closing" in text:
            return Unavailable(f"{what}: PostgreSQL unavailable: {_one_line(text)}")
        log.error("%s: asyncpg interface error", what, exc_info=exc)
        return Internal(f"{what}: database client error")
    if isinstance(exc, asyncpg.TransactionRollbackError):
        return Aborted(f"{what}: transaction aborted by the database ({exc.sqlstate}); retry")
    if isinstance(exc, asyncpg.PostgresError):
        log.error("%s: database error %s", what, exc.sqlstate, exc_info=exc)
        return Internal(f"{what}: database error {exc.sqlstate}")
    log.error("%s: unexpected error", what, exc_info=exc)
    return Internal(f"{what}: unexpected {type(exc).__name__}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, asyncpg.PostgresError):
        return f"{_one_line(exc.message or str(exc)) or type(exc).__name__} ({exc.sqlstate})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return _one_line(str(exc)) or type(exc).__name__


async def run(
    pool: asyncpg.Pool,
    what: str,
    fn: Callable[[asyncpg.Connection], Awaitable[T]],
    *,
    transaction: bool = True,
) -> T:
    """Run ``fn`` on a pooled connection, inside one transaction unless
    ``transaction`` is false (then ``fn`` is responsible for its own
    atomicity: one statement, or its own ``conn.transaction()``). Deadlock
    victims and serialization failures are retried (nothing was committed);
    every driver error is translated; SessiondErrors raised by ``fn`` pass
    through unchanged.
    """
    for attempt in range(1, TX_ATTEMPTS + 1):
        try:
            async with pool.acquire() as conn:
                if not transaction:
                    return await fn(conn)
                async with conn.transaction():
                    return await fn(conn)
        except asyncpg.TransactionRollbackError as exc:
            if attempt == TX_ATTEMPTS:
                raise translate(exc, what) from exc
            log.info("%s: retrying after %s (attempt %s)", what, exc.sqlstate, attempt)
            await asyncio.sleep(random.uniform(0, 0.005 * 2**attempt))
        except SessiondError:
            raise
        except Exception as exc:
            raise translate(exc, what) from exc
    raise AssertionError("unreachable")
