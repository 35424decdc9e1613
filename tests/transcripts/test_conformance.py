"""The SDK's own SessionStore conformance suite against SessiondSessionStore,
talking gRPC to a real sessiond server — once on SQLite, once on PostgreSQL."""

from __future__ import annotations

import pytest
from claude_agent_sdk.testing import run_session_store_conformance
from claude_agent_sdk.types import SessionStore

from sessiond.client import SessiondSessionStore
from tests.fixtures.server import RunningServer

OPTIONAL = ("list_sessions", "list_session_summaries", "delete", "list_subkeys")


async def test_sdk_conformance_suite(sessiond_server: RunningServer) -> None:
    stores: list[SessiondSessionStore] = []

    async def make_store() -> SessionStore:
        # A fresh tenant per store: the suite reuses keys and expects isolation.
        _, token = await sessiond_server.new_tenant()
        store = SessiondSessionStore(sessiond_server.target, token=token)
        stores.append(store)
        return store  # type: ignore[return-value]

    try:
        await run_session_store_conformance(make_store)
    finally:
        for store in stores:
            await store.close()
    # Nothing optional was skipped: every method is a real override.
    for name in OPTIONAL:
        assert getattr(SessiondSessionStore, name) is not getattr(SessionStore, name, None)
    assert len(stores) >= 14


@pytest.mark.parametrize("method", OPTIONAL)
def test_every_optional_method_is_implemented(method: str) -> None:
    assert callable(getattr(SessiondSessionStore, method))
