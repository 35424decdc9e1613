"""The quota half of the MetadataStore contract, on every backend (the
fixtures of ``test_workspace_metadata.py``)."""

# ruff: noqa: F811

from __future__ import annotations

import asyncio

import pytest

from sessiond.client.errors import InvalidArgument, NotFound, ResourceExhausted
from sessiond.server.storage.metadata import MetadataStore
from tests.contracts.test_workspace_metadata import (  # noqa: F401 - fixtures
    S1,
    T1,
    T2,
    add,
    cid,
    store,
)


async def test_usage_counts_packs_manifests_and_live_sessions(store: MetadataStore) -> None:
    before = await store.quotas.usage(T1)
    assert before.quota_bytes is None and before.quota_sessions is None
    await add(store, T1, "p1", [cid(1), cid(2)], length=1000)
    after = await store.quotas.usage(T1)
    # The workspace fixture's packs record a size of their own; the delta is what counts.
    assert after.stored_bytes > before.stored_bytes
    assert after.live_sessions == 2
    await store.sessions.mark_deleted(T1, S1)
    assert (await store.quotas.usage(T1)).live_sessions == 1
    assert (await store.quotas.usage(T2)).live_sessions == 2
    with pytest.raises(NotFound):
        await store.quotas.usage("nobody")


async def test_reservations_never_overshoot_the_quota(store: MetadataStore) -> None:
    stored = (await store.quotas.usage(T1)).stored_bytes
    await store.quotas.set_quota(T1, quota_bytes=stored + 500, quota_sessions=None)

    async def reserve() -> bool:
        try:
            await store.quotas.reserve_bytes(T1, 100)
        except ResourceExhausted as exc:
            assert "quota" in str(exc)
            return False
        return True

    results = await asyncio.gather(*(reserve() for _ in range(12)))
    assert sum(results) == 5
    assert (await store.quotas.usage(T1)).reserved_bytes == 500
    # Another tenant is unaffected.
    await store.quotas.reserve_bytes(T2, 10**9)
    for _ in range(5):
        await store.quotas.release_bytes(T1, 100)
    assert (await store.quotas.usage(T1)).reserved_bytes == 0
    await store.quotas.release_bytes(T1, 100)  # never below zero
    assert (await store.quotas.usage(T1)).reserved_bytes == 0
    assert await reserve()


async def test_set_quota_errors(store: MetadataStore) -> None:
    with pytest.raises(NotFound):
        await store.quotas.set_quota("nobody", quota_bytes=1, quota_sessions=1)
    with pytest.raises(InvalidArgument):
        await store.quotas.set_quota(T1, quota_bytes=-1, quota_sessions=None)
    with pytest.raises(InvalidArgument):
        await store.quotas.reserve_bytes(T1, -5)
    await store.quotas.set_quota(T1, quota_bytes=None, quota_sessions=3)
    usage = await store.quotas.usage(T1)
    assert usage.quota_sessions == 3 and usage.quota_bytes is None
    assert await store.quotas.live_sessions(T1) == 2
