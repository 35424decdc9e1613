"""The MetadataStore contract, run against every backend.

Adding a backend = adding a ``metadata_store`` fixture parameter (and its
``<name>_metadata_store`` fixture). Every test checks a promise made in the
docstrings of ``sessiond.server.storage.metadata``; the transcript tests
mirror, at the table level, what the SDK's ``run_session_store_conformance``
checks of a SessionStore (plus the concurrency and byte-exactness a real
adapter needs). URL parsing and migrations live in
``tests/storage/test_metadata_url.py``.
"""

from __future__ import annotations

import asyncio
import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from claude_agent_sdk import (
    SessionKey,
    SessionListSubkeysKey,
    SessionStore,
    SessionStoreEntry,
    SessionStoreListEntry,
    SessionSummaryEntry,
    fold_session_summary,
)
from claude_agent_sdk.testing import run_session_store_conformance

from sessiond.client.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from sessiond.server.storage.metadata import MetadataStore, TranscriptTable
from sessiond.server.storage.records import (
    NewSession,
    SessionRecord,
    SessionState,
    TranscriptEntry,
    TranscriptKey,
)

T1 = "tenant-1"
T2 = "tenant-2"
KEY = TranscriptKey("proj", "sess")
SUB1 = TranscriptKey("proj", "sess", "subagents/agent-1")
SUB2 = TranscriptKey("proj", "sess", "subagents/agent-2")


@pytest.fixture
async def store(metadata_store: MetadataStore) -> MetadataStore:
    """A store with tenants T1 and T2."""
    await metadata_store.tenants.create(T1, "Tenant One")
    await metadata_store.tenants.create(T2, "Tenant Two")
    return metadata_store


# --- helpers -------------------------------------------------------------------


def e(d: dict[str, Any]) -> TranscriptEntry:
    """An entry as the SDK adapter would hand it over (``type`` is required)."""
    obj = {"type": "x", **d}
    return TranscriptEntry(data=json.dumps(obj), parsed=obj, uuid=obj.get("uuid"))


def raw(text: str) -> TranscriptEntry:
    """An entry from exact JSON text (to check byte-exact round trips)."""
    obj = json.loads(text)
    return TranscriptEntry(data=text, parsed=obj, uuid=obj.get("uuid"))


async def load_all(
    store: MetadataStore, key: TranscriptKey, tenant: str = T1, page_size: int = 500
) -> list[dict[str, Any]]:
    return [json.loads(t) for t in await load_texts(store, key, tenant, page_size)]


async def load_texts(
    store: MetadataStore, key: TranscriptKey, tenant: str = T1, page_size: int = 500
) -> list[str]:
    return [
        t async for page in store.transcripts.load(tenant, key, page_size=page_size) for t in page
    ]


async def pages(
    store: MetadataStore, key: TranscriptKey, page_size: int, tenant: str = T1
) -> list[list[str]]:
    return [page async for page in store.transcripts.load(tenant, key, page_size=page_size)]


async def assert_not_found(store: MetadataStore, key: TranscriptKey, tenant: str = T1) -> None:
    with pytest.raises(NotFound):
        await load_texts(store, key, tenant)


async def mtimes(store: MetadataStore, project: str = "proj", tenant: str = T1) -> dict[str, int]:
    return {
        s.session_id: s.mtime_ms for s in await store.transcripts.list_sessions(tenant, project)
    }


async def summaries(
    store: MetadataStore, project: str = "proj", tenant: str = T1
) -> dict[str, Any]:
    return {s.session_id: s for s in await store.transcripts.list_summaries(tenant, project)}


def aware_utc(dt: datetime) -> bool:
    return dt.tzinfo is not None and dt.utcoffset() == timedelta(0)


# --- store ---------------------------------------------------------------------


async def test_now_is_timezone_aware_utc(metadata_store: MetadataStore) -> None:
    now = await metadata_store.now()
    assert aware_utc(now)
    assert abs(now - datetime.now(UTC)) < timedelta(minutes=5)


async def test_ping_and_idempotent_close(metadata_store: MetadataStore) -> None:
    await metadata_store.ping()
    await metadata_store.close()
    await metadata_store.close()
    with pytest.raises(Unavailable):
        await metadata_store.ping()


# --- tenants -------------------------------------------------------------------


async def test_tenant_create_and_get(metadata_store: MetadataStore) -> None:
    created = await metadata_store.tenants.create("acme", "Acme Corp")
    assert created.tenant_id == "acme"
    assert created.name == "Acme Corp"
    assert isinstance(created.chunk_key, bytes) and len(created.chunk_key) == 32
    assert created.disabled is False
    assert aware_utc(created.created_at)
    assert await metadata_store.tenants.get("acme") == created
    other = await metadata_store.tenants.create("globex", "Globex")
    assert other.chunk_key != created.chunk_key


async def test_tenant_create_taken_id_already_exists(metadata_store: MetadataStore) -> None:
    first = await metadata_store.tenants.create("acme", "Acme")
    with pytest.raises(AlreadyExists):
        await metadata_store.tenants.create("acme", "Another")
    assert await metadata_store.tenants.get("acme") == first


async def test_tenant_get_missing_not_found(metadata_store: MetadataStore) -> None:
    with pytest.raises(NotFound):
        await metadata_store.tenants.get("nobody")


async def test_tenant_ensure_race_yields_one_chunk_key(metadata_store: MetadataStore) -> None:
    results = await asyncio.gather(
        *(metadata_store.tenants.ensure("acme", f"name-{i}") for i in range(10))
    )
    assert len({t.chunk_key for t in results}) == 1
    assert len({t.name for t in results}) == 1
    assert await metadata_store.tenants.get("acme") == results[0]


async def test_tenant_ensure_returns_existing_unchanged(metadata_store: MetadataStore) -> None:
    created = await metadata_store.tenants.create("acme", "Acme")
    assert await metadata_store.tenants.ensure("acme", "Renamed?") == created


# --- sessions ------------------------------------------------------------------


async def test_session_create_defaults(store: MetadataStore) -> None:
    new = NewSession(
        tenant_id=T1,
        session_id="s1",
        labels={"team": "support", "ticket": "42"},
        agent_options={"model": "x", "max_turns": 3, "nested": {"a": [1, 2]}},
        snapshot_policy={"on_idle": True},
        forked_from="s0",
    )
    rec = await store.sessions.create(new)
    assert rec.tenant_id == T1 and rec.session_id == "s1"
    assert rec.state is SessionState.NEW
    assert rec.epoch == 0 and rec.turn_count == 0
    assert rec.labels == new.labels
    assert rec.agent_options == new.agent_options
    assert rec.snapshot_policy == new.snapshot_policy
    assert rec.forked_from == "s0"
    assert rec.sdk_session_id is None and rec.latest_snapshot_id is None
    assert rec.sandbox_id is None and rec.sandbox_cwd is None
    assert aware_utc(rec.created_at)
    assert rec.created_at == rec.updated_at == rec.last_active_at
    assert await store.sessions.get(T1, "s1") == rec


async def test_session_create_taken_id_already_exists(store: MetadataStore) -> None:
    await store.sessions.create(NewSession(T1, "s1"))
    with pytest.raises(AlreadyExists):
        await store.sessions.create(NewSession(T1, "s1", labels={"x": "y"}))
    await store.sessions.mark_deleted(T1, "s1")
    with pytest.raises(AlreadyExists):
        await store.sessions.create(NewSession(T1, "s1"))
    # The same id under another tenant is another session.
    await store.sessions.create(NewSession(T2, "s1"))


async def test_session_create_unknown_tenant_not_found(store: MetadataStore) -> None:
    with pytest.raises(NotFound):
        await store.sessions.create(NewSession("no-such-tenant", "s1"))


async def test_session_get_missing_or_other_tenants_not_found(store: MetadataStore) -> None:
    await store.sessions.create(NewSession(T1, "s1"))
    with pytest.raises(NotFound):
        await store.sessions.get(T1, "nope")
    with pytest.raises(NotFound):
        await store.sessions.get(T2, "s1")
    with pytest.raises(NotFound):
        await store.sessions.update(T2, "s1", set_labels={"a": "b"})
    with pytest.raises(NotFound):
        await store.sessions.mark_deleted(T2, "s1")
    assert (await store.sessions.get(T1, "s1")).state is SessionState.NEW


async def _create_many(store: MetadataStore, ids: list[str], **kw: Any) -> list[SessionRecord]:
    return [await store.sessions.create(NewSession(T1, sid, **kw)) for sid in ids]


async def list_all(
    store: MetadataStore, tenant: str = T1, page_size: int = 100, **kw: Any
) -> list[SessionRecord]:
    out: list[SessionRecord] = []
    token = ""
    while True:
        page = await store.sessions.list(tenant, page_size=page_size, page_token=token, **kw)
        out += page.items
        token = page.next_token
        if not token:
            return out


async def test_session_list_newest_first(store: MetadataStore) -> None:
    created = await _create_many(store, [f"s{i}" for i in range(6)])
    await store.sessions.create(NewSession(T2, "other"))
    page = await store.sessions.list(T1)
    assert [s.session_id for s in page.items] == [s.session_id for s in reversed(created)]
    assert page.next_token == ""
    keys = [(s.created_at, s.session_id) for s in page.items]
    assert keys == sorted(keys, reverse=True)
    assert [s.session_id for s in (await store.sessions.list(T2)).items] == ["other"]


async def test_session_list_label_filter_requires_every_label(store: MetadataStore) -> None:
    await store.sessions.create(NewSession(T1, "a", labels={"team": "x", "env": "prod"}))
    await store.sessions.create(NewSession(T1, "b", labels={"team": "x", "env": "dev"}))
    await store.sessions.create(NewSession(T1, "c", labels={"team": "y", "env": "prod"}))
    await store.sessions.create(NewSession(T1, "d", labels={"a.b": 'q"uote', "ü": "ß"}))
    await store.sessions.create(NewSession(T1, "e"))

    async def ids(labels: dict[str, str] | None) -> set[str]:
        return {s.session_id for s in (await store.sessions.list(T1, labels=labels)).items}

    assert await ids({"team": "x"}) == {"a", "b"}
    assert await ids({"team": "x", "env": "prod"}) == {"a"}
    assert await ids({"env": "prod"}) == {"a", "c"}
    assert await ids({"team": "x", "env": "staging"}) == set()
    assert await ids({"missing": "x"}) == set()
    assert await ids({"a.b": 'q"uote', "ü": "ß"}) == {"d"}
    assert await ids({}) == await ids(None) == {"a", "b", "c", "d", "e"}


async def test_session_list_pages_without_dup_or_gap(store: MetadataStore) -> None:
    created = await _create_many(store, [f"s{i:02d}" for i in range(8)], labels={"k": "v"})
    p1 = await store.sessions.list(T1, page_size=3, labels={"k": "v"})
    p2 = await store.sessions.list(T1, page_size=3, labels={"k": "v"}, page_token=p1.next_token)
    p3 = await store.sessions.list(T1, page_size=3, labels={"k": "v"}, page_token=p2.next_token)
    assert [len(p.items) for p in (p1, p2, p3)] == [3, 3, 2]
    assert p1.next_token and p2.next_token and p3.next_token == ""
    got = [s.session_id for p in (p1, p2, p3) for s in p.items]
    assert got == [s.session_id for s in reversed(created)]
    # An exactly full last page ends with an empty token, not an empty page.
    six = await store.sessions.list(T1, page_size=4, labels={"k": "v"})
    rest = await store.sessions.list(T1, page_size=4, labels={"k": "v"}, page_token=six.next_token)
    assert len(rest.items) == 4 and rest.next_token == ""


async def test_session_list_paging_stable_under_concurrent_inserts(store: MetadataStore) -> None:
    before = {s.session_id for s in await _create_many(store, [f"old{i:02d}" for i in range(9)])}
    stop = asyncio.Event()
    inserted: list[str] = []

    async def writer() -> None:
        i = 0
        while not stop.is_set():
            await store.sessions.create(NewSession(T1, f"new{i:03d}"))
            inserted.append(f"new{i:03d}")
            i += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(writer())
    try:
        seen: list[str] = []
        token = ""
        n_pages = 0
        while True:
            page = await store.sessions.list(T1, page_size=3, page_token=token)
            seen += [s.session_id for s in page.items]
            n_pages += 1
            await asyncio.sleep(0.01)  # let the writer commit between pages
            token = page.next_token
            if not token:
                break
    finally:
        stop.set()
        await task
    assert inserted, "the writer never ran"
    assert len(seen) == len(set(seen)), "a session appeared on two pages"
    assert before <= set(seen), "a session that existed before paging was skipped"
    assert n_pages >= 3


async def test_session_list_malformed_token_invalid_argument(store: MetadataStore) -> None:
    await _create_many(store, ["a", "b", "c"])
    good = (await store.sessions.list(T1, page_size=1)).next_token
    assert good
    for bad in ["garbage!!", "e30", "W10", good[:-3], good + "AAAA", "WzEsImZwIiwxLCJ4Il0"]:
        with pytest.raises(InvalidArgument):
            await store.sessions.list(T1, page_size=1, page_token=bad)
    # A token is bound to its query: another filter or tenant cannot reuse it.
    with pytest.raises(InvalidArgument):
        await store.sessions.list(T1, page_size=1, page_token=good, labels={"x": "y"})
    with pytest.raises(InvalidArgument):
        await store.sessions.list(T2, page_size=1, page_token=good)
    with pytest.raises(InvalidArgument):
        await store.sessions.list(T1, page_size=0)


async def test_session_list_include_deleted(store: MetadataStore) -> None:
    await _create_many(store, ["a", "b", "c"])
    await store.sessions.mark_deleted(T1, "b")
    assert [s.session_id for s in await list_all(store)] == ["c", "a"]
    every = await list_all(store, include_deleted=True)
    assert [s.session_id for s in every] == ["c", "b", "a"]
    assert every[1].state is SessionState.DELETED
    assert [s.session_id for s in await list_all(store, page_size=1, include_deleted=True)] == [
        "c",
        "b",
        "a",
    ]


async def test_session_update_labels_and_options_atomically(store: MetadataStore) -> None:
    rec = await store.sessions.create(
        NewSession(T1, "s1", labels={"a": "1", "b": "2"}, agent_options={"m": 1})
    )
    await asyncio.sleep(0.002)
    upd = await store.sessions.update(
        T1, "s1", set_labels={"a": "9", "c": "3"}, remove_labels=["b", "absent"]
    )
    assert upd.labels == {"a": "9", "c": "3"}
    assert upd.agent_options == {"m": 1}  # None leaves it alone
    assert upd.snapshot_policy == {}
    assert upd.updated_at > rec.updated_at
    assert upd.created_at == rec.created_at and upd.epoch == rec.epoch
    assert await store.sessions.get(T1, "s1") == upd
    upd2 = await store.sessions.update(
        T1, "s1", agent_options={"m": 2}, snapshot_policy={"turn": True}
    )
    assert upd2.labels == upd.labels
    assert upd2.agent_options == {"m": 2} and upd2.snapshot_policy == {"turn": True}


async def test_session_update_label_both_set_and_removed_invalid(store: MetadataStore) -> None:
    await store.sessions.create(NewSession(T1, "s1", labels={"a": "1"}))
    with pytest.raises(InvalidArgument):
        await store.sessions.update(T1, "s1", set_labels={"a": "2"}, remove_labels=["a"])
    assert (await store.sessions.get(T1, "s1")).labels == {"a": "1"}


async def test_session_concurrent_label_updates_lose_nothing(store: MetadataStore) -> None:
    await store.sessions.create(NewSession(T1, "s1"))
    await asyncio.gather(
        *(store.sessions.update(T1, "s1", set_labels={f"k{i}": str(i)}) for i in range(10))
    )
    assert (await store.sessions.get(T1, "s1")).labels == {f"k{i}": str(i) for i in range(10)}


async def test_session_update_missing_or_deleted(store: MetadataStore) -> None:
    with pytest.raises(NotFound):
        await store.sessions.update(T1, "nope", set_labels={"a": "b"})
    await store.sessions.create(NewSession(T1, "s1", labels={"a": "1"}))
    await store.sessions.mark_deleted(T1, "s1")
    with pytest.raises(FailedPrecondition):
        await store.sessions.update(T1, "s1", set_labels={"a": "2"})
    assert (await store.sessions.get(T1, "s1")).labels == {"a": "1"}


async def test_session_mark_deleted_idempotent_and_fences(store: MetadataStore) -> None:
    rec = await store.sessions.create(NewSession(T1, "s1"))
    gone = await store.sessions.mark_deleted(T1, "s1")
    assert gone.state is SessionState.DELETED
    assert gone.epoch == rec.epoch + 1
    assert gone.updated_at >= rec.updated_at
    again = await store.sessions.mark_deleted(T1, "s1")
    assert again.state is SessionState.DELETED
    assert again.epoch == gone.epoch
    assert await store.sessions.get(T1, "s1") == again
    with pytest.raises(NotFound):
        await store.sessions.mark_deleted(T1, "nope")


async def test_malformed_ids_and_labels_invalid_argument(store: MetadataStore) -> None:
    bad_sessions = [
        NewSession(T1, ""),
        NewSession(T1, "a\0b"),
        NewSession(T1, "s", labels={"k": "v\0"}),
        NewSession(T1, "s", labels={"": "v"}),
        NewSession(T1, "s", labels={"k": 1}),  # type: ignore[dict-item]
    ]
    for new in bad_sessions:
        with pytest.raises(InvalidArgument):
            await store.sessions.create(new)
    await store.sessions.create(NewSession(T1, "s"))
    with pytest.raises(InvalidArgument):
        await store.sessions.update(T1, "s", set_labels={"k": "\0"})
    with pytest.raises(InvalidArgument):
        await store.sessions.list(T1, labels={"k\0": "v"})
    for key in [TranscriptKey("", "s"), TranscriptKey("p", ""), TranscriptKey("p", "s", "a\0")]:
        with pytest.raises(InvalidArgument):
            await store.transcripts.append(T1, key, [e({"n": 1})])
    with pytest.raises(InvalidArgument):
        await store.tenants.create("", "empty")
    assert [s.session_id for s in (await store.sessions.list(T1)).items] == ["s"]


# --- transcripts: append + load -------------------------------------------------


async def test_append_then_load_in_order(store: MetadataStore) -> None:
    r1 = await store.transcripts.append(T1, KEY, [e({"uuid": "z", "n": 1})])
    r2 = await store.transcripts.append(
        T1, KEY, [e({"uuid": "a", "n": 2}), e({"uuid": "m", "n": 3})]
    )
    r3 = await store.transcripts.append(T1, KEY, [e({"uuid": "b", "n": 4})])
    assert (r1.appended, r2.appended, r3.appended) == (1, 2, 1)
    assert r1.duplicates == r2.duplicates == r3.duplicates == 0
    assert [x["n"] for x in await load_all(store, KEY)] == [1, 2, 3, 4]
    assert [x["uuid"] for x in await load_all(store, KEY)] == ["z", "a", "m", "b"]


async def test_append_empty_batch_is_noop(store: MetadataStore) -> None:
    res = await store.transcripts.append(T1, KEY, [])
    assert (res.appended, res.duplicates, res.mtime_ms) == (0, 0, 0)
    await assert_not_found(store, KEY)
    assert await store.transcripts.list_sessions(T1, "proj") == []
    await store.transcripts.append(T1, KEY, [e({"uuid": "a"})])
    before = await mtimes(store)
    await store.transcripts.append(T1, KEY, [])
    assert await load_all(store, KEY) == [{"type": "x", "uuid": "a"}]
    assert await mtimes(store) == before


async def test_append_idempotent_on_uuid(store: MetadataStore) -> None:
    # A duplicate inside one batch: the first occurrence wins.
    res = await store.transcripts.append(
        T1, KEY, [e({"uuid": "a", "n": 1}), e({"uuid": "b", "n": 2}), e({"uuid": "a", "n": 3})]
    )
    assert (res.appended, res.duplicates) == (2, 1)
    before = await mtimes(store)
    summary_before = (await summaries(store))["sess"]
    # The SDK's retry of a batch that did commit: nothing changes at all.
    retry = await store.transcripts.append(
        T1, KEY, [e({"uuid": "a", "n": 1}), e({"uuid": "b", "n": 2})]
    )
    assert (retry.appended, retry.duplicates, retry.mtime_ms) == (0, 2, 0)
    assert await mtimes(store) == before
    assert (await summaries(store))["sess"] == summary_before
    # Mixed: old uuids skipped, new ones appended after them.
    mixed = await store.transcripts.append(
        T1, KEY, [e({"uuid": "b", "n": 9}), e({"uuid": "c", "n": 4}), e({"uuid": "c", "n": 5})]
    )
    assert (mixed.appended, mixed.duplicates) == (1, 2)
    assert mixed.mtime_ms > before["sess"]
    assert [x["n"] for x in await load_all(store, KEY)] == [1, 2, 4]


async def test_entries_without_uuid_always_appended(store: MetadataStore) -> None:
    same = e({"n": 1})
    r1 = await store.transcripts.append(T1, KEY, [same, same])
    r2 = await store.transcripts.append(T1, KEY, [same])
    assert (r1.appended, r1.duplicates, r2.appended) == (2, 0, 1)
    assert await load_all(store, KEY) == [same.parsed] * 3


async def test_uuid_scope_is_the_key(store: MetadataStore) -> None:
    entry = e({"uuid": "u"})
    assert (await store.transcripts.append(T1, KEY, [entry])).appended == 1
    assert (await store.transcripts.append(T1, SUB1, [entry])).appended == 1
    assert (
        await store.transcripts.append(T1, TranscriptKey("other", "sess"), [entry])
    ).appended == 1
    assert (await store.transcripts.append(T2, KEY, [entry])).appended == 1


async def test_subpath_stored_independently(store: MetadataStore) -> None:
    await store.transcripts.append(T1, KEY, [e({"uuid": "m", "n": 1})])
    await store.transcripts.append(T1, SUB1, [e({"uuid": "s", "n": 1})])
    assert await load_all(store, KEY) == [{"type": "x", "uuid": "m", "n": 1}]
    assert await load_all(store, SUB1) == [{"type": "x", "uuid": "s", "n": 1}]
    await assert_not_found(store, SUB2)


async def test_project_isolation(store: MetadataStore) -> None:
    a, b = TranscriptKey("A", "s1"), TranscriptKey("B", "s1")
    await store.transcripts.append(T1, a, [e({"from": "A"})])
    await store.transcripts.append(T1, b, [e({"from": "B"})])
    assert await load_all(store, a) == [{"type": "x", "from": "A"}]
    assert await load_all(store, b) == [{"type": "x", "from": "B"}]
    assert list(await mtimes(store, "A")) == ["s1"]
    assert list(await mtimes(store, "B")) == ["s1"]


async def test_tenant_isolation(store: MetadataStore) -> None:
    await store.transcripts.append(T1, KEY, [e({"secret": 1, "customTitle": "t1"})])
    await store.transcripts.append(T1, SUB1, [e({"secret": 2})])
    await assert_not_found(store, KEY, tenant=T2)
    await assert_not_found(store, SUB1, tenant=T2)
    assert await store.transcripts.list_sessions(T2, "proj") == []
    assert await store.transcripts.list_summaries(T2, "proj") == []
    assert await store.transcripts.list_subkeys(T2, "proj", "sess") == []
    await store.transcripts.delete(T2, KEY)  # another tenant's delete touches nothing
    assert len(await load_all(store, KEY)) == 1
    assert len(await load_all(store, SUB1)) == 1


async def test_append_unknown_tenant_not_found(store: MetadataStore) -> None:
    with pytest.raises(NotFound):
        await store.transcripts.append("no-such-tenant", KEY, [e({"n": 1})])


async def test_load_never_written_not_found_on_first_iteration(store: MetadataStore) -> None:
    it = store.transcripts.load(T1, TranscriptKey("proj", "nope"))  # no I/O yet
    with pytest.raises(NotFound):
        await it.__anext__()
    await store.transcripts.append(T1, KEY, [e({"uuid": "x"})])
    await assert_not_found(store, TranscriptKey("proj", "sess", "nope"))


async def test_load_pages(store: MetadataStore) -> None:
    await store.transcripts.append(T1, KEY, [e({"n": i}) for i in range(3)])
    await store.transcripts.append(T1, KEY, [e({"n": i}) for i in range(3, 5)])
    got = await pages(store, KEY, page_size=2)
    assert [len(p) for p in got] == [2, 2, 1]
    assert [json.loads(t)["n"] for p in got for t in p] == [0, 1, 2, 3, 4]
    await store.transcripts.append(T1, SUB1, [e({"n": i}) for i in range(4)])
    assert [len(p) for p in await pages(store, SUB1, page_size=2)] == [2, 2]
    assert [len(p) for p in await pages(store, SUB1, page_size=100)] == [4]


async def test_load_sees_appends_made_between_pages(store: MetadataStore) -> None:
    await store.transcripts.append(T1, KEY, [e({"n": i}) for i in range(4)])
    seen: list[int] = []
    async for page in store.transcripts.load(T1, KEY, page_size=2):
        seen += [json.loads(t)["n"] for t in page]
        if len(seen) == 2:
            await store.transcripts.append(T1, KEY, [e({"n": 4})])
    assert seen == [0, 1, 2, 3, 4]


async def test_concurrent_appenders_lose_nothing_and_keep_batches_contiguous(
    store: MetadataStore,
) -> None:
    async def appender(i: int) -> None:
        batch = [e({"uuid": f"w{i}-{j}", "w": i, "j": j}) for j in range(5)]
        res = await store.transcripts.append(T1, KEY, batch)
        assert res.appended == 5

    await asyncio.gather(*(appender(i) for i in range(20)))
    got = await load_all(store, KEY, page_size=7)
    assert len(got) == 100
    assert len({x["uuid"] for x in got}) == 100
    for start in range(0, 100, 5):
        chunk = got[start : start + 5]
        assert {x["w"] for x in chunk} == {chunk[0]["w"]}, "a batch was interleaved"
        assert [x["j"] for x in chunk] == [0, 1, 2, 3, 4]
    # The summary was folded once per batch, serialized: it saw every batch.
    assert (await summaries(store))["sess"].mtime_ms == (await mtimes(store))["sess"]


async def test_concurrent_first_appends_create_one_key(store: MetadataStore) -> None:
    keys = [TranscriptKey("proj", f"s{i % 3}", "" if i % 2 else "subagents/a") for i in range(12)]
    await asyncio.gather(
        *(store.transcripts.append(T1, k, [e({"uuid": f"u{i}"})]) for i, k in enumerate(keys))
    )
    assert sorted(await mtimes(store)) == ["s0", "s1", "s2"]
    total = 0
    for sid in ["s0", "s1", "s2"]:
        total += len(await load_all(store, TranscriptKey("proj", sid)))
        total += len(await load_all(store, TranscriptKey("proj", sid, "subagents/a")))
    assert total == 12


async def test_entry_text_round_trips_byte_exact(store: MetadataStore) -> None:
    texts = [
        '{"type":"user","uuid":"u1","message":{"content":"h\\u00e9llo \\ud83d\\ude00"}}',
        '{"type": "user", "uuid": "u2", "text": "NUL \\u0000 inside", "z": 1, "a": 2}',
        json.dumps(
            {"type": "x", "uuid": "u3", "t": "日本語 עברית 😀 \u0000 \t\n"}, ensure_ascii=False
        ),
        '{ "type" : "x" ,\n  "n" : 1.50, "big": 12345678901234567890, "e": 1e400 }',
        json.dumps({"type": "x", "uuid": "u5", "blob": "q" * (1 << 20)}),
    ]
    await store.transcripts.append(T1, KEY, [raw(t) for t in texts])
    assert await load_texts(store, KEY) == texts


# --- transcripts: listing, summaries, mtime ------------------------------------


async def test_list_sessions_main_transcripts_only(store: MetadataStore) -> None:
    ra = await store.transcripts.append(T1, TranscriptKey("proj", "a"), [e({"n": 1})])
    rb = await store.transcripts.append(T1, TranscriptKey("proj", "b"), [e({"n": 1})])
    await store.transcripts.append(T1, TranscriptKey("proj", "a", "subagents/agent-1"), [e({})])
    await store.transcripts.append(T1, TranscriptKey("proj", "sub-only", "subagents/x"), [e({})])
    await store.transcripts.append(T1, TranscriptKey("other", "c"), [e({"n": 1})])
    listed = await mtimes(store)
    assert listed == {"a": ra.mtime_ms, "b": rb.mtime_ms}
    assert all(math.isfinite(m) and m > 1e12 for m in listed.values())
    assert await store.transcripts.list_sessions(T1, "never-appended-project") == []


async def test_mtime_is_storage_clock_epoch_ms_and_strictly_increasing(
    store: MetadataStore,
) -> None:
    db_now_ms = (await store.now()).timestamp() * 1000
    results = [await store.transcripts.append(T1, KEY, [e({"n": i})]) for i in range(5)]
    stamps = [r.mtime_ms for r in results]
    assert all(isinstance(m, int) and m > 1e12 for m in stamps)
    assert abs(stamps[0] - db_now_ms) < 60_000
    assert stamps == sorted(stamps) and len(set(stamps)) == 5
    assert (await mtimes(store))["sess"] == stamps[-1]
    # A subagent append does not move the main transcript's mtime.
    await store.transcripts.append(T1, SUB1, [e({"n": 9})])
    assert (await mtimes(store))["sess"] == stamps[-1]


async def test_summary_folds_new_entries_with_sdk_fold(store: MetadataStore) -> None:
    batches = [
        [
            e({"uuid": "1", "timestamp": "2024-01-01T00:00:00.000Z", "customTitle": "first"}),
            e({"uuid": "2", "type": "tag", "tag": "urgent", "cwd": "/work/a"}),
            e(
                {
                    "uuid": "3",
                    "type": "user",
                    "message": {"content": "please fix the build"},
                    "timestamp": "2024-01-01T00:00:01.000Z",
                }
            ),
        ],
        [e({"uuid": "4", "type": "tag", "tag": ""}), e({"uuid": "5", "gitBranch": "main"})],
        # A retry of the first batch plus one new entry: the retried entries
        # must not be folded again (they would re-set the cleared tag).
        [
            e({"uuid": "1"}),
            e({"uuid": "2", "type": "tag", "tag": "urgent"}),
            e({"uuid": "6", "customTitle": "second", "timestamp": "2024-01-01T00:00:02.000Z"}),
        ],
    ]
    last = None
    for batch in batches:
        last = await store.transcripts.append(T1, KEY, batch)
    assert last is not None
    firsts: dict[str, Any] = {}  # the stream the store keeps: first occurrence wins
    for x in (x for b in batches for x in b):
        firsts.setdefault(x.uuid or "", x.parsed)
    expected = fold_session_summary(
        None,
        {"project_key": "proj", "session_id": "sess"},
        list(firsts.values()),
    )["data"]
    summary = (await summaries(store))["sess"]
    assert summary.data == expected
    assert "tag" not in summary.data
    assert summary.data["custom_title"] == "second"
    assert summary.data["first_prompt"] == "please fix the build"
    assert summary.mtime_ms == last.mtime_ms == (await mtimes(store))["sess"]
    # The stored summary round-trips into the SDK fold (mtime kept verbatim).
    refolded = fold_session_summary(
        {"session_id": "sess", "mtime": summary.mtime_ms, "data": summary.data},
        {"project_key": "proj", "session_id": "sess"},
        [{"type": "x", "timestamp": "2024-01-01T00:00:03.000Z"}],
    )
    assert refolded["mtime"] == summary.mtime_ms


async def test_summary_ignores_subpaths_and_other_projects(store: MetadataStore) -> None:
    await store.transcripts.append(
        T1, KEY, [e({"customTitle": "main", "timestamp": "2024-01-01T00:00:00Z"})]
    )
    await store.transcripts.append(
        T1, TranscriptKey("other", "elsewhere"), [e({"customTitle": "o"})]
    )
    before = await summaries(store)
    assert set(before) == {"sess"}
    await store.transcripts.append(
        T1, SUB1, [e({"customTitle": "subagent", "timestamp": "2024-01-01T00:00:09Z"})]
    )
    await store.transcripts.append(T1, TranscriptKey("proj", "sub-only", "subagents/x"), [e({})])
    after = await summaries(store)
    assert set(after) == {"sess"}
    assert after["sess"] == before["sess"]
    assert await store.transcripts.list_summaries(T1, "never-appended-project") == []


async def test_summary_mtime_tracks_list_sessions_mtime(store: MetadataStore) -> None:
    for i in range(3):
        await store.transcripts.append(T1, KEY, [e({"n": i})])
        await store.transcripts.append(T1, TranscriptKey("proj", "b"), [e({"n": i})])
        listed = await mtimes(store)
        summ = await summaries(store)
        for sid in ("sess", "b"):
            assert summ[sid].mtime_ms >= listed[sid]
            assert summ[sid].mtime_ms == listed[sid]


# --- transcripts: delete + subkeys ------------------------------------------------


async def test_delete_main_cascades_to_subkeys_and_summary(store: MetadataStore) -> None:
    other = TranscriptKey("proj", "sess2")
    other_proj = TranscriptKey("other-proj", "sess")
    for k in (KEY, SUB1, SUB2, other, other_proj):
        await store.transcripts.append(T1, k, [e({"n": 1})])
    await store.transcripts.append(T2, KEY, [e({"n": 1})])
    await store.transcripts.delete(T1, KEY)
    for k in (KEY, SUB1, SUB2):
        await assert_not_found(store, k)
    assert len(await load_all(store, other)) == 1
    assert len(await load_all(store, other_proj)) == 1
    assert len(await load_all(store, KEY, tenant=T2)) == 1
    assert await store.transcripts.list_subkeys(T1, "proj", "sess") == []
    assert set(await mtimes(store)) == {"sess2"}
    assert set(await summaries(store)) == {"sess2"}
    # Idempotent, and a never-written key is fine too.
    await store.transcripts.delete(T1, KEY)
    await store.transcripts.delete(T1, TranscriptKey("proj", "never-written"))
    # The key can be written again and starts from scratch.
    await store.transcripts.append(T1, KEY, [e({"n": 2, "customTitle": "again"})])
    assert await load_all(store, KEY) == [{"type": "x", "n": 2, "customTitle": "again"}]
    assert (await summaries(store))["sess"].data["custom_title"] == "again"


async def test_delete_subpath_removes_only_that_subkey(store: MetadataStore) -> None:
    for k in (KEY, SUB1, SUB2):
        await store.transcripts.append(T1, k, [e({"n": 1})])
    summary = (await summaries(store))["sess"]
    await store.transcripts.delete(T1, SUB1)
    await assert_not_found(store, SUB1)
    assert len(await load_all(store, SUB2)) == 1
    assert len(await load_all(store, KEY)) == 1
    assert await store.transcripts.list_subkeys(T1, "proj", "sess") == ["subagents/agent-2"]
    assert (await summaries(store))["sess"] == summary
    await store.transcripts.delete(T1, SUB1)


async def test_delete_races_appends_without_leftovers(store: MetadataStore) -> None:
    async def appender(i: int) -> None:
        for j in range(5):
            await store.transcripts.append(T1, KEY if i % 2 else SUB1, [e({"uuid": f"{i}-{j}"})])

    await store.transcripts.append(T1, KEY, [e({"uuid": "seed"})])
    await asyncio.gather(*(appender(i) for i in range(6)), store.transcripts.delete(T1, KEY))
    await store.transcripts.delete(T1, KEY)
    await assert_not_found(store, KEY)
    await assert_not_found(store, SUB1)
    assert await summaries(store) == {}
    assert await mtimes(store) == {}


async def test_list_subkeys_sorted_and_excludes_main(store: MetadataStore) -> None:
    await store.transcripts.append(T1, KEY, [e({"n": 1})])
    assert await store.transcripts.list_subkeys(T1, "proj", "sess") == []
    subs = ["subagents/b", "subagents/B", "subagents/a-2", "subagents/a_1", "subagents/é", "x/Z"]
    for s in subs:
        await store.transcripts.append(T1, TranscriptKey("proj", "sess", s), [e({"n": 1})])
    await store.transcripts.append(T1, TranscriptKey("proj", "other", "subagents/zz"), [e({})])
    assert await store.transcripts.list_subkeys(T1, "proj", "sess") == sorted(subs)
    assert await store.transcripts.list_subkeys(T1, "proj", "never-appended") == []


# --- the SDK's own conformance suite, through a minimal adapter ----------------


class _TableSessionStore(SessionStore):
    """The thinnest SessionStore on a TranscriptTable (one tenant each, so
    every store the conformance suite asks for starts empty)."""

    def __init__(self, table: TranscriptTable, tenant: str) -> None:
        self._table = table
        self._tenant = tenant

    @staticmethod
    def _key(key: SessionKey) -> TranscriptKey:
        return TranscriptKey(key["project_key"], key["session_id"], key.get("subpath") or "")

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        batch = [TranscriptEntry(json.dumps(x), dict(x), x.get("uuid")) for x in entries]
        await self._table.append(self._tenant, self._key(key), batch)

    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        try:
            return [
                json.loads(t)
                async for page in self._table.load(self._tenant, self._key(key))
                for t in page
            ]
        except NotFound:
            return None

    async def list_sessions(self, project_key: str) -> list[SessionStoreListEntry]:
        return [
            {"session_id": s.session_id, "mtime": s.mtime_ms}
            for s in await self._table.list_sessions(self._tenant, project_key)
        ]

    async def list_session_summaries(self, project_key: str) -> list[SessionSummaryEntry]:
        return [
            {"session_id": s.session_id, "mtime": s.mtime_ms, "data": s.data}
            for s in await self._table.list_summaries(self._tenant, project_key)
        ]

    async def delete(self, key: SessionKey) -> None:
        await self._table.delete(self._tenant, self._key(key))

    async def list_subkeys(self, key: SessionListSubkeysKey) -> list[str]:
        return await self._table.list_subkeys(self._tenant, key["project_key"], key["session_id"])


async def test_sdk_session_store_conformance(metadata_store: MetadataStore) -> None:
    count = 0

    async def make_store() -> SessionStore:
        nonlocal count
        count += 1
        tenant = await metadata_store.tenants.create(f"conformance-{count}", "c")
        return _TableSessionStore(metadata_store.transcripts, tenant.tenant_id)

    await run_session_store_conformance(make_store)
    assert count > 10
