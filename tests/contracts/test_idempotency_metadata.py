"""The IdempotencyTable half of the MetadataStore contract, run against every
backend (adding a backend = adding a ``metadata_store`` fixture parameter).

Every test checks a promise made in the docstrings of
``sessiond.server.storage.metadata.IdempotencyTable``.
"""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from sessiond.client.errors import InvalidArgument, NotFound
from sessiond.server.storage.metadata import MetadataStore
from tests.helpers import assert_eventually

T1 = "tenant-1"
T2 = "tenant-2"
M = "SessionService.CreateSession"
DAY = 24 * 3600.0


def h(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


@pytest.fixture
async def store(metadata_store: MetadataStore) -> MetadataStore:
    for tenant in (T1, T2):
        await metadata_store.tenants.create(tenant, tenant)
    return metadata_store


async def claim(
    store: MetadataStore,
    key: str = "k1",
    request_hash: bytes | None = None,
    *,
    tenant: str = T1,
    method: str = M,
    stale_after: float = 600.0,
    ttl: float = DAY,
) -> object:
    return await store.idempotency.claim(
        tenant, method, key, request_hash or h("req"), stale_after=stale_after, ttl=ttl
    )


async def test_first_claim_wins_and_later_ones_see_the_row(store: MetadataStore) -> None:
    assert await claim(store) is None
    found = await store.idempotency.claim(T1, M, "k1", h("req"), stale_after=600, ttl=DAY)
    assert found is not None
    assert (found.tenant_id, found.method, found.key) == (T1, M, "k1")
    assert found.request_hash == h("req")
    assert found.response is None  # still running
    assert found.created_at.tzinfo is not None
    # Another request with the same key sees the row as it is (the caller
    # decides that the hashes differ).
    other = await store.idempotency.claim(T1, M, "k1", h("other"), stale_after=600, ttl=DAY)
    assert other is not None and other.request_hash == h("req")


async def test_complete_records_the_response_once(store: MetadataStore) -> None:
    idem = store.idempotency
    assert await claim(store) is None
    await idem.complete(T1, M, "k1", h("req"), b"response-1")
    found = await idem.claim(T1, M, "k1", h("req"), stale_after=600, ttl=DAY)
    assert found is not None and found.response == b"response-1"
    # A stored response is never replaced.
    await idem.complete(T1, M, "k1", h("req"), b"response-2")
    found = await idem.claim(T1, M, "k1", h("req"), stale_after=600, ttl=DAY)
    assert found is not None and found.response == b"response-1"


async def test_empty_response_is_a_response(store: MetadataStore) -> None:
    assert await claim(store) is None
    await store.idempotency.complete(T1, M, "k1", h("req"), b"")
    found = await store.idempotency.claim(T1, M, "k1", h("req"), stale_after=600, ttl=DAY)
    assert found is not None and found.response == b""


async def test_complete_of_another_request_is_a_no_op(store: MetadataStore) -> None:
    idem = store.idempotency
    assert await claim(store) is None
    await idem.complete(T1, M, "k1", h("other"), b"theirs")
    await idem.complete(T1, M, "absent", h("req"), b"nobody's")
    found = await idem.claim(T1, M, "k1", h("req"), stale_after=600, ttl=DAY)
    assert found is not None and found.response is None
    assert await claim(store, "absent") is None  # complete created nothing


async def test_release_makes_the_key_claimable_again(store: MetadataStore) -> None:
    idem = store.idempotency
    assert await claim(store) is None
    await idem.release(T1, M, "k1", h("req"))
    assert await claim(store, request_hash=h("second")) is None
    found = await idem.claim(T1, M, "k1", h("x"), stale_after=600, ttl=DAY)
    assert found is not None and found.request_hash == h("second")


async def test_release_leaves_finished_and_foreign_rows_alone(store: MetadataStore) -> None:
    idem = store.idempotency
    assert await claim(store, "done") is None
    await idem.complete(T1, M, "done", h("req"), b"r")
    await idem.release(T1, M, "done", h("req"))
    found = await idem.claim(T1, M, "done", h("req"), stale_after=600, ttl=DAY)
    assert found is not None and found.response == b"r"

    assert await claim(store, "running") is None
    await idem.release(T1, M, "running", h("other"))
    assert await claim(store, "running") is not None
    await idem.release(T1, M, "never-claimed", h("req"))  # absent: no-op


async def test_a_stale_unfinished_claim_is_taken_over(store: MetadataStore) -> None:
    idem = store.idempotency
    assert await claim(store, request_hash=h("first")) is None

    async def taken_over() -> None:
        assert await claim(store, request_hash=h("second"), stale_after=0.05) is None

    await assert_eventually(taken_over, timeout=5)
    found = await idem.claim(T1, M, "k1", h("x"), stale_after=600, ttl=DAY)
    assert found is not None
    assert found.request_hash == h("second") and found.response is None
    # The first holder's late completion no longer lands.
    await idem.complete(T1, M, "k1", h("first"), b"late")
    found = await idem.claim(T1, M, "k1", h("x"), stale_after=600, ttl=DAY)
    assert found is not None and found.response is None


async def test_a_finished_row_is_not_stale(store: MetadataStore) -> None:
    assert await claim(store) is None
    await store.idempotency.complete(T1, M, "k1", h("req"), b"r")
    await asyncio.sleep(0.1)
    found = await claim(store, stale_after=0.01)
    assert found is not None and getattr(found, "response", None) == b"r"


async def test_an_expired_row_is_as_good_as_absent(store: MetadataStore) -> None:
    assert await claim(store) is None
    await store.idempotency.complete(T1, M, "k1", h("req"), b"old")

    async def expired() -> None:
        assert await claim(store, request_hash=h("new"), ttl=0.05) is None

    await assert_eventually(expired, timeout=5)
    found = await store.idempotency.claim(T1, M, "k1", h("y"), stale_after=600, ttl=DAY)
    assert found is not None and found.request_hash == h("new") and found.response is None


async def test_concurrent_claims_have_exactly_one_winner(store: MetadataStore) -> None:
    results = await asyncio.gather(*(claim(store, "race", h(f"r{i % 2}")) for i in range(12)))
    assert sum(r is None for r in results) == 1


async def test_keys_are_scoped_by_tenant_and_method(store: MetadataStore) -> None:
    assert await claim(store, tenant=T1) is None
    assert await claim(store, tenant=T2) is None
    assert await claim(store, method="SessionService.Fork") is None
    await store.idempotency.complete(T1, M, "k1", h("req"), b"t1")
    found = await store.idempotency.claim(T2, M, "k1", h("req"), stale_after=600, ttl=DAY)
    assert found is not None and found.response is None and found.tenant_id == T2


async def test_unknown_tenant_is_not_found(store: MetadataStore) -> None:
    with pytest.raises(NotFound):
        await claim(store, tenant="nobody")


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"key": ""}, "idempotency key"),
        ({"key": "a\x00b"}, "idempotency key"),
        ({"method": ""}, "method"),
        ({"tenant": ""}, "tenant_id"),
        ({"request_hash": b""}, "request_hash"),
        ({"stale_after": 0}, "stale_after"),
        ({"stale_after": -1}, "stale_after"),
        ({"ttl": 0}, "ttl"),
        ({"ttl": float("nan")}, "ttl"),
    ],
)
async def test_bad_arguments_are_invalid(
    store: MetadataStore, kwargs: dict[str, object], words: str
) -> None:
    kwargs = dict(kwargs)  # the parameter is shared by both backends' runs
    args: dict[str, object] = {
        "tenant_id": kwargs.pop("tenant", T1),
        "method": kwargs.pop("method", M),
        "key": kwargs.pop("key", "k"),
        "request_hash": kwargs.pop("request_hash", h("req")),
    }
    durations = {"stale_after": 600.0, "ttl": DAY, **kwargs}
    with pytest.raises(InvalidArgument) as err:
        await store.idempotency.claim(**args, **durations)  # type: ignore[arg-type]
    assert words in str(err.value)
    for call in (
        store.idempotency.complete(*args.values(), b"r"),  # type: ignore[arg-type]
        store.idempotency.release(*args.values()),  # type: ignore[arg-type]
    ):
        if set(kwargs) & {"stale_after", "ttl"}:
            await call  # durations are claim's only
        else:
            with pytest.raises(InvalidArgument):
                await call


async def test_expire_deletes_old_rows_oldest_first(store: MetadataStore) -> None:
    idem = store.idempotency
    for i in range(5):
        assert await claim(store, f"old{i}", tenant=T1 if i % 2 else T2) is None
        if i % 2:
            await idem.complete(T1, M, f"old{i}", h("req"), b"r")
    await asyncio.sleep(0.3)
    assert await claim(store, "young") is None
    assert await idem.expire(0.2, limit=2) == 2
    assert await idem.expire(0.2, limit=100) == 3
    assert await idem.expire(0.2) == 0
    # The young one stayed; the old ones are claimable afresh.
    assert await claim(store, "young") is not None
    assert await claim(store, "old1", tenant=T1) is None
    assert await idem.expire(0) >= 2


async def test_expire_rejects_bad_arguments(store: MetadataStore) -> None:
    with pytest.raises(InvalidArgument):
        await store.idempotency.expire(-1)
    with pytest.raises(InvalidArgument):
        await store.idempotency.expire(10, limit=0)
