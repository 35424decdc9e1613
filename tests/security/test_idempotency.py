"""Idempotency keys on mutating RPCs, through real gRPC on both backends.

Same key + same request → the first response (no second session or fork);
same key + another request → INVALID_ARGUMENT naming the key; concurrent
calls → one execution, the others get its response (or ABORTED "still in
progress; retry" past the wait); failures are not recorded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from sessiond.client import Aborted, AsyncClient, InvalidArgument
from sessiond.client.errors import DeadlineExceeded
from sessiond.server.storage.records import SessionRecord
from tests.fixtures.server import RunningServer
from tests.helpers import assert_eventually
from tests.security.scenario import give_conversation, give_snapshot


@pytest.fixture
async def tenant(sessiond_server: RunningServer) -> tuple[str, AsyncClient]:
    tenant_id, token = await sessiond_server.new_tenant()
    return tenant_id, await sessiond_server.client(token)


async def session_ids(client: AsyncClient) -> list[str]:
    return [s.session_id for s in (await client.list_sessions()).sessions]


async def test_create_session_replays_the_first_response(
    tenant: tuple[str, AsyncClient],
) -> None:
    _, client = tenant
    first = await client.create_session(labels={"a": "1"}, idempotency_key="create-1")
    again = await client.create_session(labels={"a": "1"}, idempotency_key="create-1")
    assert again == first
    assert await session_ids(client) == [first.session_id]
    # Without a key every call creates.
    await client.create_session(labels={"a": "1"})
    await client.create_session(labels={"a": "1"})
    assert len(await session_ids(client)) == 3


async def test_same_key_with_another_request_is_invalid(tenant: tuple[str, AsyncClient]) -> None:
    _, client = tenant
    await client.create_session(labels={"a": "1"}, idempotency_key="k-42")
    with pytest.raises(InvalidArgument) as err:
        await client.create_session(labels={"a": "2"}, idempotency_key="k-42")
    assert "k-42" in str(err.value) and "different" in str(err.value)
    assert len(await session_ids(client)) == 1


async def test_keys_are_per_tenant_and_per_method(sessiond_server: RunningServer) -> None:
    a = await sessiond_server.client()
    b = await sessiond_server.client()
    sa = await a.create_session(idempotency_key="shared")
    sb = await b.create_session(idempotency_key="shared")
    assert sa.session_id != sb.session_id
    assert await session_ids(a) == [sa.session_id]
    # The same key on another method is another key.
    suspended = await a.suspend(sa.session_id, idempotency_key="shared")
    assert suspended.session.session_id == sa.session_id


async def test_concurrent_calls_execute_once(tenant: tuple[str, AsyncClient]) -> None:
    _, client = tenant
    results = await asyncio.gather(
        *(client.create_session(labels={"c": "1"}, idempotency_key="burst") for _ in range(8))
    )
    assert len({r.session_id for r in results}) == 1
    assert await session_ids(client) == [results[0].session_id]


async def test_failures_are_not_recorded(tenant: tuple[str, AsyncClient]) -> None:
    _, client = tenant
    for _ in range(2):  # executed (and refused) each time
        with pytest.raises(InvalidArgument, match="session_id"):
            await client.create_session(session_id="bad/id", idempotency_key="retry-me")
    # The key is free for the corrected request.
    ok = await client.create_session(session_id="good-id", idempotency_key="retry-me")
    assert ok.session_id == "good-id"
    assert (await client.create_session(session_id="good-id", idempotency_key="retry-me")) == ok


@pytest.mark.parametrize("key", ["x" * 257, "a\nb"])
async def test_malformed_keys_are_invalid(tenant: tuple[str, AsyncClient], key: str) -> None:
    _, client = tenant
    with pytest.raises(InvalidArgument, match="idempotency_key"):
        await client.create_session(idempotency_key=key)
    assert await session_ids(client) == []


async def test_suspend_replays_its_first_response(tenant: tuple[str, AsyncClient]) -> None:
    _, client = tenant
    session = await client.create_session(labels={"v": "1"})
    first = await client.suspend(session.session_id, idempotency_key="susp")
    await client.update_session(session.session_id, set_labels={"v": "2"})
    replayed = await client.suspend(session.session_id, idempotency_key="susp")
    assert replayed == first and replayed.session.labels["v"] == "1"
    fresh = await client.suspend(session.session_id)
    assert fresh.session.labels["v"] == "2"


async def test_fork_with_a_key_forks_once(
    sessiond_server: RunningServer, tenant: tuple[str, AsyncClient]
) -> None:
    tenant_id, client = tenant
    src = await client.create_session()
    _, uuids = await give_conversation(sessiond_server, client, tenant_id, src.session_id, "hi")
    fork = await client.fork(src.session_id, labels={"f": "1"}, idempotency_key="fork-1")
    again = await client.fork(src.session_id, labels={"f": "1"}, idempotency_key="fork-1")
    assert again == fork and fork.forked_from_session_id == src.session_id
    assert sorted(await session_ids(client)) == sorted([src.session_id, fork.session_id])
    with pytest.raises(InvalidArgument, match="fork-1"):
        await client.fork(src.session_id, at_message_uuid=uuids[1], idempotency_key="fork-1")


async def test_restore_into_a_new_session_with_a_key_restores_once(
    sessiond_server: RunningServer, tenant: tuple[str, AsyncClient]
) -> None:
    tenant_id, client = tenant
    src = await client.create_session()
    _, uuids = await give_conversation(sessiond_server, client, tenant_id, src.session_id, "hi")
    _, snapshot_id = await give_snapshot(sessiond_server, tenant_id, src.session_id, uuids[1], 2)
    kwargs: dict[str, Any] = {
        "snapshot_id": snapshot_id,
        "into_new_session": True,
        "idempotency_key": "restore-1",
    }
    first = await client.restore(src.session_id, **kwargs)
    again = await client.restore(src.session_id, **kwargs)
    assert again == first and first.session_id != src.session_id
    assert len(await session_ids(client)) == 2


def slow(server: RunningServer, seconds: float) -> asyncio.Event:
    """Make CreateSession's execution take ``seconds``; the event is set when
    an execution starts."""
    sessions = server.server.sessions
    original: Callable[..., Awaitable[SessionRecord]] = sessions.create
    started = asyncio.Event()

    async def create(*args: Any, **kwargs: Any) -> SessionRecord:
        started.set()
        await asyncio.sleep(seconds)
        return await original(*args, **kwargs)

    sessions.create = create  # type: ignore[method-assign]
    return started


async def test_a_call_still_in_progress_is_aborted_past_the_wait(
    sessiond_server: RunningServer, tenant: tuple[str, AsyncClient]
) -> None:
    _, client = tenant
    sessiond_server.server.idempotency.wait = 0.3
    started = slow(sessiond_server, 1.5)
    first = asyncio.create_task(client.create_session(idempotency_key="slow"))
    await started.wait()
    with pytest.raises(Aborted, match="still in progress"):
        await client.create_session(idempotency_key="slow")
    created = await first

    async def replayed() -> None:
        assert (await client.create_session(idempotency_key="slow")) == created

    await assert_eventually(replayed)
    assert await session_ids(client) == [created.session_id]


async def test_a_waiting_call_gets_the_first_calls_response(
    sessiond_server: RunningServer, tenant: tuple[str, AsyncClient]
) -> None:
    _, client = tenant
    started = slow(sessiond_server, 0.5)
    first = asyncio.create_task(client.create_session(idempotency_key="wait"))
    await started.wait()
    second = await client.create_session(idempotency_key="wait")  # waits, does not execute
    assert second == await first
    assert await session_ids(client) == [second.session_id]


async def test_a_caller_that_gives_up_does_not_lose_the_execution(
    sessiond_server: RunningServer,
) -> None:
    _, token = await sessiond_server.new_tenant()
    started = slow(sessiond_server, 1.0)
    async with AsyncClient(sessiond_server.target, token=token, timeout=0.3) as impatient:
        with pytest.raises(DeadlineExceeded):
            await impatient.create_session(idempotency_key="gone")
    assert started.is_set()
    client = await sessiond_server.client(token)

    async def recorded() -> None:
        again = await client.create_session(idempotency_key="gone")
        assert await session_ids(client) == [again.session_id]

    # The execution went on without its caller; the retry gets its result.
    await assert_eventually(recorded, timeout=10)
