"""The lease half of the MetadataStore contract — leases with fencing
epochs, fenced updates and the session state machine, idle claiming — and
the transcript re-keying and positions, run against every backend.

Same shape as ``test_metadata_store.py``: adding a backend = adding a
``metadata_store`` fixture parameter. Every test checks a promise made in
the docstrings of ``SessionTable`` (``acquire_lease`` … ``list_leased_by``)
and ``TranscriptTable`` (``move_session``, ``position``, ``last_position``)
in ``sessiond.server.storage.metadata``. Lease times are judged against
``store.now()`` (the database clock), never the test's own clock; expiry is
awaited with ``assert_eventually``.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from typing import Any

import pytest

from sessiond.client.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from sessiond.server.storage.metadata import MetadataStore
from sessiond.server.storage.records import (
    NewSession,
    SessionChanges,
    SessionRecord,
    SessionState,
    TranscriptEntry,
    TranscriptKey,
)
from tests.helpers import assert_eventually

T1 = "tenant-1"
T2 = "tenant-2"
S1 = "sess-1"
S2 = "sess-2"
LONG = 60.0  # a ttl no test outlives
SHORT = 0.2  # a ttl a test waits out

St = SessionState


@pytest.fixture
async def store(metadata_store: MetadataStore) -> MetadataStore:
    """Tenants T1 and T2, each with sessions S1 and S2 (state NEW, epoch 0)."""
    for tenant in (T1, T2):
        await metadata_store.tenants.create(tenant, tenant)
        for sid in (S1, S2):
            await metadata_store.sessions.create(NewSession(tenant_id=tenant, session_id=sid))
    return metadata_store


# --- helpers -------------------------------------------------------------------


async def lease(
    store: MetadataStore, owner: str, sid: str = S1, tenant: str = T1, ttl: float = LONG
) -> SessionRecord:
    """Acquire a lease that must be granted."""
    rec = await store.sessions.acquire_lease(tenant, sid, owner, ttl)
    assert rec is not None, f"{owner} was refused the lease on {sid}"
    return rec


async def to_state(
    store: MetadataStore, path: list[SessionState], sid: str = S1, tenant: str = T1
) -> SessionRecord:
    """Walk the session along ``path`` under a fresh lease, then release it."""
    held = await lease(store, "setup", sid, tenant)
    rec = held
    for state in path:
        rec = await store.sessions.update_fenced(
            tenant, sid, held.epoch, SessionChanges(state=state, touch=True)
        )
    await store.sessions.release_lease(tenant, sid, "setup", held.epoch)
    return rec


async def new_session(store: MetadataStore, sid: str, tenant: str = T1) -> SessionRecord:
    return await store.sessions.create(NewSession(tenant, sid))


async def make_active(store: MetadataStore, sid: str, tenant: str = T1) -> SessionRecord:
    return await to_state(store, [St.HYDRATING, St.ACTIVE], sid, tenant)


async def wait_idle(store: MetadataStore, records: list[SessionRecord], seconds: float) -> None:
    """Until every record's last activity is more than ``seconds`` old on the
    database clock."""
    newest = max(r.last_active_at for r in records)

    async def check() -> None:
        assert await store.now() - newest > timedelta(seconds=seconds)

    await assert_eventually(check)


async def wait_expired(store: MetadataStore, sid: str = S1, tenant: str = T1) -> None:
    async def check() -> None:
        rec = await store.sessions.get(tenant, sid)
        assert rec.lease_expires_at is not None
        assert rec.lease_expires_at <= await store.now()

    await assert_eventually(check)


def near(value: datetime | None, low: datetime, high: datetime, ttl: float) -> bool:
    """``value`` is ``ttl`` seconds after some instant in ``[low, high]``."""
    span = timedelta(seconds=ttl)
    return value is not None and low + span <= value <= high + span


def e(d: dict[str, Any]) -> TranscriptEntry:
    obj = {"type": "x", **d}
    return TranscriptEntry(data=json.dumps(obj), parsed=obj, uuid=obj.get("uuid"))


def user(uuid: str, text: str) -> TranscriptEntry:
    """An entry the SDK's summary fold picks up (first prompt)."""
    return e({"type": "user", "uuid": uuid, "message": {"role": "user", "content": text}})


async def load_all(
    store: MetadataStore, key: TranscriptKey, tenant: str = T1
) -> list[dict[str, Any]]:
    return [json.loads(t) async for page in store.transcripts.load(tenant, key) for t in page]


# --- record fields -------------------------------------------------------------


async def test_new_session_has_no_lease_or_project(store: MetadataStore) -> None:
    rec = await store.sessions.get(T1, S1)
    assert (rec.project_key, rec.lease_owner, rec.lease_expires_at) == (None, None, None)
    assert rec.epoch == 0


async def test_lease_and_project_fields_carried_by_every_read(store: MetadataStore) -> None:
    held = await lease(store, "a")
    rec = await store.sessions.update_fenced(T1, S1, held.epoch, SessionChanges(project_key="p"))
    assert (rec.project_key, rec.lease_owner) == ("p", "a")
    assert await store.sessions.get(T1, S1) == rec
    listed = {r.session_id: r for r in (await store.sessions.list(T1)).items}
    assert listed[S1] == rec
    updated = await store.sessions.update(T1, S1, set_labels={"k": "v"})
    assert (updated.project_key, updated.lease_owner) == ("p", "a")
    assert updated.lease_expires_at == rec.lease_expires_at
    bumped = await store.sessions.bump_epoch(T1, S1)
    assert (bumped.project_key, bumped.lease_owner) == ("p", "a")
    assert await store.sessions.list_leased_by("a") == [bumped]


# --- acquire -------------------------------------------------------------------


async def test_acquire_free_lease_bumps_epoch_with_db_clock_expiry(store: MetadataStore) -> None:
    before = await store.now()
    rec = await lease(store, "a", ttl=30)
    after = await store.now()
    assert rec.lease_owner == "a"
    assert rec.epoch == 1  # NULL owner → "a" is a change of owner
    assert near(rec.lease_expires_at, before, after, 30)
    assert await store.sessions.get(T1, S1) == rec


async def test_acquire_by_same_owner_extends_without_bump(store: MetadataStore) -> None:
    first = await lease(store, "a", ttl=10)
    before = await store.now()
    again = await lease(store, "a", ttl=30)
    after = await store.now()
    assert again.epoch == first.epoch
    assert near(again.lease_expires_at, before, after, 30)
    assert again.updated_at == first.updated_at  # no takeover, no record change


async def test_acquire_live_lease_of_other_owner_returns_none(store: MetadataStore) -> None:
    held = await lease(store, "a")
    assert await store.sessions.acquire_lease(T1, S1, "b", LONG) is None
    assert await store.sessions.get(T1, S1) == held


async def test_acquire_missing_or_deleted(store: MetadataStore) -> None:
    with pytest.raises(NotFound):
        await store.sessions.acquire_lease(T1, "nope", "a", LONG)
    with pytest.raises(NotFound):
        await store.sessions.acquire_lease("no-tenant", S1, "a", LONG)
    await store.sessions.mark_deleted(T1, S1)
    with pytest.raises(FailedPrecondition):
        await store.sessions.acquire_lease(T1, S1, "a", LONG)


async def test_leases_are_per_tenant(store: MetadataStore) -> None:
    await lease(store, "a", S1, T1)
    other = await lease(store, "b", S1, T2)
    assert other.epoch == 1
    assert (await store.sessions.get(T1, S1)).lease_owner == "a"


async def test_concurrent_acquirers_exactly_one_wins(store: MetadataStore) -> None:
    owners = [f"replica-{i}" for i in range(20)]
    results = await asyncio.gather(*(store.sessions.acquire_lease(T1, S1, o, LONG) for o in owners))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert winners[0].epoch == 1
    assert await store.sessions.get(T1, S1) == winners[0]


async def test_expired_lease_taken_over_fences_old_holder(store: MetadataStore) -> None:
    old = await lease(store, "a", ttl=SHORT)

    async def take() -> SessionRecord:
        rec = await store.sessions.acquire_lease(T1, S1, "b", LONG)
        assert rec is not None
        return rec

    new = await assert_eventually(take)
    assert new.epoch == old.epoch + 1
    assert new.lease_owner == "b"
    with pytest.raises(Aborted):
        await store.sessions.renew_lease(T1, S1, "a", old.epoch, LONG)
    with pytest.raises(Aborted):
        await store.sessions.update_fenced(T1, S1, old.epoch, SessionChanges(sandbox_id="x"))
    await store.sessions.release_lease(T1, S1, "a", old.epoch)  # a no-op
    assert await store.sessions.acquire_lease(T1, S1, "a", LONG) is None
    assert await store.sessions.get(T1, S1) == new


async def test_same_owner_reacquires_expired_lease_without_bump(store: MetadataStore) -> None:
    old = await lease(store, "a", ttl=SHORT)
    await wait_expired(store)
    again = await lease(store, "a")
    assert again.epoch == old.epoch


# --- renew ---------------------------------------------------------------------


async def test_renew_extends_on_db_clock(store: MetadataStore) -> None:
    held = await lease(store, "a", ttl=5)
    before = await store.now()
    await store.sessions.renew_lease(T1, S1, "a", held.epoch, 40)
    after = await store.now()
    rec = await store.sessions.get(T1, S1)
    assert near(rec.lease_expires_at, before, after, 40)
    assert (rec.epoch, rec.lease_owner, rec.updated_at) == (held.epoch, "a", held.updated_at)


async def test_renew_refused_to_wrong_owner_or_epoch(store: MetadataStore) -> None:
    held = await lease(store, "a")
    with pytest.raises(Aborted):
        await store.sessions.renew_lease(T1, S1, "b", held.epoch, LONG)
    with pytest.raises(Aborted):
        await store.sessions.renew_lease(T1, S1, "a", held.epoch - 1, LONG)
    with pytest.raises(NotFound):
        await store.sessions.renew_lease(T1, "nope", "a", held.epoch, LONG)
    assert await store.sessions.get(T1, S1) == held


async def test_expired_untaken_lease_renewable_by_its_holder(store: MetadataStore) -> None:
    held = await lease(store, "a", ttl=SHORT)
    await wait_expired(store)
    await store.sessions.renew_lease(T1, S1, "a", held.epoch, LONG)
    assert await store.sessions.acquire_lease(T1, S1, "b", LONG) is None
    rec = await store.sessions.get(T1, S1)
    assert (rec.lease_owner, rec.epoch) == ("a", held.epoch)


async def test_bump_epoch_fences_lease_holder(store: MetadataStore) -> None:
    held = await lease(store, "a")
    await store.sessions.bump_epoch(T1, S1)
    with pytest.raises(Aborted):
        await store.sessions.renew_lease(T1, S1, "a", held.epoch, LONG)
    with pytest.raises(Aborted):
        await store.sessions.update_fenced(T1, S1, held.epoch, SessionChanges(touch=True))


# --- release -------------------------------------------------------------------


async def test_release_ends_lease_and_next_holder_bumps_epoch(store: MetadataStore) -> None:
    held = await lease(store, "a")
    await store.sessions.release_lease(T1, S1, "a", held.epoch)
    now = await store.now()
    rec = await store.sessions.get(T1, S1)
    assert rec.lease_owner is None
    assert rec.lease_expires_at is not None and rec.lease_expires_at <= now
    assert rec.epoch == held.epoch
    assert await store.sessions.list_leased_by("a") == []
    # A released lease is free; taking it, even back, fences stragglers.
    again = await lease(store, "a")
    assert again.epoch == held.epoch + 1
    await store.sessions.release_lease(T1, S1, "a", again.epoch)
    other = await lease(store, "b")
    assert other.epoch == held.epoch + 2


async def test_release_not_held_is_noop(store: MetadataStore) -> None:
    held = await lease(store, "a")
    await store.sessions.release_lease(T1, S1, "b", held.epoch)
    await store.sessions.release_lease(T1, S1, "a", held.epoch + 1)
    await store.sessions.release_lease(T1, "nope", "a", held.epoch)
    assert await store.sessions.get(T1, S1) == held
    await store.sessions.release_lease(T1, S1, "a", held.epoch)
    await store.sessions.release_lease(T1, S1, "a", held.epoch)  # twice: still a no-op
    assert (await store.sessions.get(T1, S1)).lease_owner is None


async def test_mark_deleted_ends_lease_and_fences_holder(store: MetadataStore) -> None:
    held = await lease(store, "a")
    gone = await store.sessions.mark_deleted(T1, S1)
    assert gone.lease_owner is None
    assert gone.lease_expires_at is not None and gone.lease_expires_at <= await store.now()
    assert await store.sessions.list_leased_by("a") == []
    with pytest.raises(Aborted):
        await store.sessions.renew_lease(T1, S1, "a", held.epoch, LONG)
    with pytest.raises(FailedPrecondition):
        await store.sessions.update_fenced(T1, S1, gone.epoch, SessionChanges(touch=True))
    await store.sessions.release_lease(T1, S1, "a", held.epoch)
    assert await store.sessions.get(T1, S1) == gone


async def test_lease_arguments_validated(store: MetadataStore) -> None:
    sessions = store.sessions
    for ttl in (0, -1, float("nan"), float("inf"), 1e12, True):
        with pytest.raises(InvalidArgument):
            await sessions.acquire_lease(T1, S1, "a", ttl)
    for owner in ("", "a\0b"):
        with pytest.raises(InvalidArgument):
            await sessions.acquire_lease(T1, S1, owner, LONG)
    held = await lease(store, "a")
    with pytest.raises(InvalidArgument):
        await sessions.renew_lease(T1, S1, "a", held.epoch, 0)
    for epoch in (-1, 2**63, "1"):
        with pytest.raises(InvalidArgument):
            await sessions.renew_lease(T1, S1, "a", epoch, LONG)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument):
            await sessions.release_lease(T1, S1, "a", epoch)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        await sessions.claim_idle("a", -1, LONG, 10)
    with pytest.raises(InvalidArgument):
        await sessions.claim_idle("a", 0, LONG, 0)
    with pytest.raises(InvalidArgument):
        await sessions.list_leased_by("")
    assert await sessions.get(T1, S1) == held


# --- update_fenced -------------------------------------------------------------


async def test_update_fenced_applies_changes(store: MetadataStore) -> None:
    held = await lease(store, "a")
    before = await store.now()
    rec = await store.sessions.update_fenced(
        T1,
        S1,
        held.epoch,
        SessionChanges(
            sandbox_id="sbx",
            sandbox_cwd="/work",
            sdk_session_id="sdk",
            project_key="-work",
            latest_snapshot_id="snap",
            add_turns=2,
            touch=True,
        ),
    )
    after = await store.now()
    assert (rec.sandbox_id, rec.sandbox_cwd, rec.sdk_session_id) == ("sbx", "/work", "sdk")
    assert (rec.project_key, rec.latest_snapshot_id, rec.turn_count) == ("-work", "snap", 2)
    assert before <= rec.last_active_at <= after
    assert before <= rec.updated_at <= after
    assert (rec.epoch, rec.state, rec.lease_owner) == (held.epoch, St.NEW, "a")
    assert await store.sessions.get(T1, S1) == rec

    # None leaves a field, "" clears it; add_turns adds; no touch, no activity.
    rec2 = await store.sessions.update_fenced(
        T1, S1, held.epoch, SessionChanges(sandbox_id="", project_key="", add_turns=3)
    )
    assert (rec2.sandbox_id, rec2.project_key) == (None, None)
    assert (rec2.sandbox_cwd, rec2.sdk_session_id, rec2.latest_snapshot_id) == (
        "/work",
        "sdk",
        "snap",
    )
    assert rec2.turn_count == 5
    assert rec2.last_active_at == rec.last_active_at
    assert rec2.updated_at >= rec.updated_at


async def test_update_fenced_wrong_epoch_aborted_nothing_written(store: MetadataStore) -> None:
    held = await lease(store, "a")
    for epoch in (held.epoch - 1, held.epoch + 1):
        with pytest.raises(Aborted):
            await store.sessions.update_fenced(
                T1, S1, epoch, SessionChanges(state=St.HYDRATING, sandbox_id="x", add_turns=1)
            )
    assert await store.sessions.get(T1, S1) == held


async def test_update_fenced_missing_or_deleted(store: MetadataStore) -> None:
    with pytest.raises(NotFound):
        await store.sessions.update_fenced(T1, "nope", 0, SessionChanges(touch=True))
    with pytest.raises(NotFound):
        await store.sessions.update_fenced("no-tenant", S1, 0, SessionChanges(touch=True))
    gone = await store.sessions.mark_deleted(T1, S1)
    with pytest.raises(FailedPrecondition):
        await store.sessions.update_fenced(T1, S1, gone.epoch, SessionChanges(touch=True))


async def test_update_fenced_needs_only_the_epoch(store: MetadataStore) -> None:
    # The epoch is the fence; the lease is how a holder comes to own one.
    held = await lease(store, "a")
    await store.sessions.release_lease(T1, S1, "a", held.epoch)
    rec = await store.sessions.update_fenced(T1, S1, held.epoch, SessionChanges(add_turns=1))
    assert rec.turn_count == 1


async def test_concurrent_fenced_updates_lose_nothing(store: MetadataStore) -> None:
    held = await lease(store, "a")
    await asyncio.gather(
        *(
            store.sessions.update_fenced(T1, S1, held.epoch, SessionChanges(add_turns=1))
            for _ in range(20)
        )
    )
    assert (await store.sessions.get(T1, S1)).turn_count == 20


async def test_update_fenced_changes_validated(store: MetadataStore) -> None:
    held = await lease(store, "a")
    bad = [
        SessionChanges(add_turns=-1),
        SessionChanges(add_turns=True),
        SessionChanges(sandbox_id="a\0b"),
        SessionChanges(project_key=7),  # type: ignore[arg-type]
        SessionChanges(state="bogus"),  # type: ignore[arg-type]
    ]
    for changes in bad:
        with pytest.raises(InvalidArgument):
            await store.sessions.update_fenced(T1, S1, held.epoch, changes)
    with pytest.raises(InvalidArgument):
        await store.sessions.update_fenced(T1, S1, -1, SessionChanges())
    assert await store.sessions.get(T1, S1) == held


# The session state machine, written out independently of the implementation.
LEGAL = {
    St.NEW: {St.NEW, St.HYDRATING, St.SUSPENDED},
    St.HYDRATING: {St.HYDRATING, St.ACTIVE, St.SUSPENDED, St.NEW},
    St.ACTIVE: {St.ACTIVE, St.SUSPENDING, St.SUSPENDED, St.HYDRATING},
    St.SUSPENDING: {St.SUSPENDING, St.SUSPENDED, St.ACTIVE},
    St.SUSPENDED: {St.SUSPENDED, St.HYDRATING},
}
# A legal way to reach each state from NEW.
PATH_TO = {
    St.NEW: [],
    St.HYDRATING: [St.HYDRATING],
    St.ACTIVE: [St.HYDRATING, St.ACTIVE],
    St.SUSPENDING: [St.HYDRATING, St.ACTIVE, St.SUSPENDING],
    St.SUSPENDED: [St.HYDRATING, St.ACTIVE, St.SUSPENDING, St.SUSPENDED],
}


@pytest.mark.parametrize("source", list(LEGAL), ids=lambda s: s.value)
async def test_state_machine(store: MetadataStore, source: SessionState) -> None:
    for i, target in enumerate(SessionState):
        sid = f"sm-{i}"
        await store.sessions.create(NewSession(T1, sid))
        start = await to_state(store, PATH_TO[source], sid)
        assert start.state is source
        held = await lease(store, "a", sid)
        change = SessionChanges(state=target, add_turns=1)
        if target in LEGAL[source]:
            rec = await store.sessions.update_fenced(T1, sid, held.epoch, change)
            assert (rec.state, rec.turn_count) == (target, 1)
        else:
            with pytest.raises(FailedPrecondition) as info:
                await store.sessions.update_fenced(T1, sid, held.epoch, change)
            assert source.value in str(info.value) and target.value in str(info.value)
            assert await store.sessions.get(T1, sid) == held


async def test_state_machine_round_trip(store: MetadataStore) -> None:
    # Suspend, resume, a failed suspend and a failed hydrate, under one lease.
    held = await lease(store, "a")
    path = [
        St.HYDRATING,
        St.ACTIVE,
        St.SUSPENDING,
        St.ACTIVE,
        St.SUSPENDING,
        St.SUSPENDED,
        St.HYDRATING,
        St.SUSPENDED,
        St.HYDRATING,
        St.ACTIVE,
    ]
    for state in path:
        rec = await store.sessions.update_fenced(T1, S1, held.epoch, SessionChanges(state=state))
        assert rec.state is state


# --- claim_idle ----------------------------------------------------------------


async def test_claim_idle_claims_only_idle_active_free_sessions(store: MetadataStore) -> None:
    idle = 0.5
    for sid in ("old-a", "old-b", "suspended", "held", "recent"):
        await new_session(store, sid)
    old = [await make_active(store, "old-a"), await make_active(store, S1, T2)]
    old.append(await make_active(store, "old-b"))
    suspended = await to_state(store, PATH_TO[St.SUSPENDED], "suspended")
    held = await make_active(store, "held")
    await lease(store, "other", "held")
    await wait_idle(store, [*old, suspended, held], idle)
    await make_active(store, "recent")  # NEW sessions S1, S2 are never claimed either

    claimed = await store.sessions.claim_idle("reaper", idle, LONG, 10)
    # Oldest first, across tenants.
    assert [(r.tenant_id, r.session_id) for r in claimed] == [
        (r.tenant_id, r.session_id) for r in old
    ]
    now = await store.now()
    for before, rec in zip(old, claimed, strict=True):
        assert rec.lease_owner == "reaper"
        assert rec.epoch == before.epoch + 1
        assert rec.lease_expires_at is not None and rec.lease_expires_at > now
        assert await store.sessions.get(rec.tenant_id, rec.session_id) == rec
    # Nothing is left to claim: the claimed ones now hold live leases.
    assert await store.sessions.claim_idle("reaper-2", idle, LONG, 10) == []
    assert (await store.sessions.get(T1, "held")).lease_owner == "other"


async def test_claim_idle_respects_limit_and_order(store: MetadataStore) -> None:
    recs = []
    for i in range(5):
        await new_session(store, f"s{i}")
        recs.append(await make_active(store, f"s{i}"))
    await wait_idle(store, recs, 0)
    first = await store.sessions.claim_idle("r", 0, LONG, 2)
    assert [r.session_id for r in first] == ["s0", "s1"]
    rest = await store.sessions.claim_idle("r", 0, LONG, 10)
    assert [r.session_id for r in rest] == ["s2", "s3", "s4"]


async def test_claim_idle_takes_expired_leases(store: MetadataStore) -> None:
    a = await make_active(store, S1)
    b = await make_active(store, S2)
    await lease(store, "other", S1, ttl=SHORT)
    await lease(store, "reaper", S2, ttl=SHORT)
    await wait_expired(store, S1)
    await wait_expired(store, S2)
    await wait_idle(store, [a, b], 0)
    claimed = {r.session_id: r for r in await store.sessions.claim_idle("reaper", 0, LONG, 10)}
    assert set(claimed) == {S1, S2}
    assert claimed[S1].epoch == a.epoch + 2  # "other" took it, then the reaper
    assert claimed[S2].epoch == b.epoch + 1  # the reaper's own expired lease: no bump


async def test_concurrent_claimers_never_share_a_session(store: MetadataStore) -> None:
    sids = [(t, f"idle-{i}") for t in (T1, T2) for i in range(30)]
    await asyncio.gather(*(new_session(store, sid, t) for t, sid in sids))
    recs = list(await asyncio.gather(*(make_active(store, sid, t) for t, sid in sids)))
    await wait_idle(store, recs, 0)

    async def claimer(owner: str) -> list[tuple[str, str]]:
        mine: list[tuple[str, str]] = []
        while batch := await store.sessions.claim_idle(owner, 0, LONG, 7):
            mine += [(r.tenant_id, r.session_id) for r in batch]
        return mine

    results = await asyncio.gather(*(claimer(f"replica-{i}") for i in range(4)))
    every = [k for mine in results for k in mine]
    assert len(every) == len(set(every)), "a session was claimed twice"
    assert set(every) == set(sids)
    for owner, mine in zip((f"replica-{i}" for i in range(4)), results, strict=True):
        for t, sid in mine:
            rec = await store.sessions.get(t, sid)
            assert (rec.lease_owner, rec.epoch) == (owner, 2)


async def test_claimers_and_acquirers_race_one_winner_per_session(store: MetadataStore) -> None:
    sids = [f"race-{i}" for i in range(30)]
    await asyncio.gather(*(new_session(store, sid) for sid in sids))
    recs = list(await asyncio.gather(*(make_active(store, sid) for sid in sids)))
    await wait_idle(store, recs, 0)

    async def claimer(owner: str) -> list[str]:
        return [r.session_id for r in await store.sessions.claim_idle(owner, 0, LONG, 100)]

    async def acquire(sid: str) -> str | None:
        rec = await store.sessions.acquire_lease(T1, sid, "api", LONG)
        return None if rec is None else rec.session_id

    claimers = asyncio.gather(claimer("replica-0"), claimer("replica-1"))
    acquirers = asyncio.gather(*(acquire(sid) for sid in sids))
    claimed, got = await asyncio.gather(claimers, acquirers)
    acquired = [sid for sid in got if sid is not None]
    winners = claimed[0] + claimed[1] + acquired
    assert sorted(winners) == sorted(sids)  # every session exactly once
    for sid in sids:
        rec = await store.sessions.get(T1, sid)
        assert rec.epoch == 2  # exactly one takeover after make_active's
        expected = "api" if sid in acquired else "replica-0" if sid in claimed[0] else "replica-1"
        assert rec.lease_owner == expected


# --- list_leased_by ------------------------------------------------------------


async def test_list_leased_by_lists_live_leases_of_owner(store: MetadataStore) -> None:
    a1 = await lease(store, "a", S1, T1)
    a2 = await lease(store, "a", S1, T2)
    await lease(store, "b", S2, T1)
    short = await lease(store, "a", S2, T2, ttl=SHORT)
    assert {(r.tenant_id, r.session_id) for r in await store.sessions.list_leased_by("a")} == {
        (T1, S1),
        (T2, S1),
        (T2, S2),
    }

    async def expired() -> None:
        assert await store.sessions.list_leased_by("a") == [a1, a2]

    await assert_eventually(expired)
    assert short.lease_owner == "a"
    await store.sessions.release_lease(T1, S1, "a", a1.epoch)
    assert await store.sessions.list_leased_by("a") == [a2]
    assert await store.sessions.list_leased_by("nobody") == []


# --- transcripts: move_session -------------------------------------------------


async def test_move_session_rekeys_main_subpaths_and_summary(store: MetadataStore) -> None:
    tr = store.transcripts
    main, sub = TranscriptKey("old", S1), TranscriptKey("old", S1, "subagents/agent-1")
    await tr.append(T1, main, [user("u1", "hello"), e({"uuid": "u2"}), e({"n": 3})])
    await tr.append(T1, sub, [e({"uuid": "s1"})])
    await tr.append(T1, TranscriptKey("old", S2), [user("o1", "other session")])
    entries = await load_all(store, main)
    sub_entries = await load_all(store, sub)
    pos = await tr.position(T1, main, "u2")
    last = await tr.last_position(T1, main)
    summary = {s.session_id: s for s in await tr.list_summaries(T1, "old")}[S1]
    mtime = {s.session_id: s.mtime_ms for s in await tr.list_sessions(T1, "old")}[S1]

    await tr.move_session(T1, S1, "old", "new")

    new_main, new_sub = TranscriptKey("new", S1), TranscriptKey("new", S1, sub.subpath)
    assert await load_all(store, new_main) == entries
    assert await load_all(store, new_sub) == sub_entries
    for gone in (main, sub):
        with pytest.raises(NotFound):
            await load_all(store, gone)
    assert await tr.list_subkeys(T1, "new", S1) == [sub.subpath]
    assert await tr.list_subkeys(T1, "old", S1) == []
    assert {s.session_id: s.mtime_ms for s in await tr.list_sessions(T1, "new")} == {S1: mtime}
    assert [s.session_id for s in await tr.list_sessions(T1, "old")] == [S2]
    assert await tr.list_summaries(T1, "new") == [summary]
    assert [s.session_id for s in await tr.list_summaries(T1, "old")] == [S2]
    # Positions survive the move; the key keeps its uuids and seq counter.
    assert await tr.position(T1, new_main, "u2") == pos
    assert await tr.last_position(T1, new_main) == last
    again = await tr.append(T1, new_main, [e({"uuid": "u2"}), e({"uuid": "u4"})])
    assert (again.appended, again.duplicates) == (1, 1)
    assert await tr.position(T1, new_main, "u4") > last[1]
    folded = {s.session_id: s for s in await tr.list_summaries(T1, "new")}[S1]
    assert folded.mtime_ms > summary.mtime_ms


async def test_move_session_noop_cases(store: MetadataStore) -> None:
    tr = store.transcripts
    await tr.append(T1, TranscriptKey("p", S1), [e({"uuid": "a"})])
    await tr.move_session(T1, S1, "p", "p")
    await tr.move_session(T1, S1, "empty", "p")  # nothing under "empty": even a taken target
    await tr.move_session(T2, S1, "p", "q")  # another tenant's "p" holds nothing
    await tr.move_session(T1, S2, "p", "q")
    assert [x["uuid"] for x in await load_all(store, TranscriptKey("p", S1))] == ["a"]
    assert await tr.list_sessions(T1, "q") == []


async def test_move_session_refuses_taken_target(store: MetadataStore) -> None:
    tr = store.transcripts
    await tr.append(T1, TranscriptKey("old", S1), [user("a", "x")])
    await tr.append(T1, TranscriptKey("old", S1, "subagents/agent-1"), [e({"uuid": "b"})])
    # Any key of the session under the target counts, even only a subpath.
    await tr.append(T1, TranscriptKey("new", S1, "subagents/agent-9"), [e({"uuid": "c"})])
    with pytest.raises(AlreadyExists):
        await tr.move_session(T1, S1, "old", "new")
    assert await tr.list_subkeys(T1, "old", S1) == ["subagents/agent-1"]
    assert [s.session_id for s in await tr.list_summaries(T1, "old")] == [S1]
    assert await tr.list_subkeys(T1, "new", S1) == ["subagents/agent-9"]
    assert await tr.list_sessions(T1, "new") == []


async def test_move_session_is_per_tenant(store: MetadataStore) -> None:
    tr = store.transcripts
    await tr.append(T1, TranscriptKey("old", S1), [e({"uuid": "t1"})])
    await tr.append(T2, TranscriptKey("old", S1), [e({"uuid": "t2"})])
    await tr.append(T2, TranscriptKey("new", S1), [e({"uuid": "t2-new"})])
    await tr.move_session(T1, S1, "old", "new")  # T2's "new" is no obstacle
    assert [x["uuid"] for x in await load_all(store, TranscriptKey("new", S1))] == ["t1"]
    assert [x["uuid"] for x in await load_all(store, TranscriptKey("old", S1), T2)] == ["t2"]


async def test_move_session_racing_appends_loses_nothing(store: MetadataStore) -> None:
    tr = store.transcripts
    old, new = TranscriptKey("old", S1), TranscriptKey("new", S1)
    await tr.append(T1, old, [e({"uuid": "first"})])

    async def writer(w: int) -> None:
        for i in range(10):
            await tr.append(T1, old, [e({"uuid": f"w{w}-{i}-{j}"}) for j in range(3)])

    async def mover() -> None:
        await asyncio.sleep(0.01)
        await tr.move_session(T1, S1, "old", "new")

    await asyncio.gather(*(writer(w) for w in range(4)), mover())
    moved = [x["uuid"] for x in await load_all(store, new)]
    try:
        stayed = [x["uuid"] for x in await load_all(store, old)]
    except NotFound:
        stayed = []
    every = moved + stayed
    assert len(every) == len(set(every)) == 1 + 4 * 10 * 3
    assert moved[0] == "first"
    for w in range(4):  # each writer's batches stay in order on each side
        for side in (moved, stayed):
            mine = [u for u in side if u.startswith(f"w{w}-")]
            assert mine == sorted(mine, key=lambda u: tuple(map(int, u.split("-")[1:])))


async def test_move_session_arguments_validated(store: MetadataStore) -> None:
    for args in [("", "a", "b"), (S1, "", "b"), (S1, "a", ""), (S1, "a\0", "b")]:
        with pytest.raises(InvalidArgument):
            await store.transcripts.move_session(T1, *args)


# --- transcripts: positions ----------------------------------------------------


async def test_position_is_append_order(store: MetadataStore) -> None:
    tr = store.transcripts
    key = TranscriptKey("p", S1)
    await tr.append(T1, key, [e({"uuid": "a"}), e({"n": 1}), e({"uuid": "b"})])
    await tr.append(T1, key, [e({"uuid": "a"}), e({"uuid": "c"})])  # "a" is a duplicate
    seqs = [await tr.position(T1, key, u) for u in ("a", "b", "c")]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert seqs[0] >= 1


async def test_position_not_found(store: MetadataStore) -> None:
    tr = store.transcripts
    key = TranscriptKey("p", S1)
    await tr.append(T1, key, [e({"uuid": "a"})])
    await tr.append(T1, TranscriptKey("p", S1, "subagents/agent-1"), [e({"uuid": "sub"})])
    for tenant, k, uuid in [
        (T1, key, "missing"),
        (T1, key, "sub"),  # another key of the session
        (T1, TranscriptKey("q", S1), "a"),
        (T2, key, "a"),
    ]:
        with pytest.raises(NotFound):
            await tr.position(tenant, k, uuid)
    with pytest.raises(InvalidArgument):
        await tr.position(T1, key, "")


async def test_last_position(store: MetadataStore) -> None:
    tr = store.transcripts
    key = TranscriptKey("p", S1)
    assert await tr.last_position(T1, key) == (None, 0)
    await tr.append(T1, key, [e({"n": 0})])
    only_plain = await tr.last_position(T1, key)
    assert only_plain[0] is None and only_plain[1] >= 1
    await tr.append(T1, key, [e({"uuid": "a"}), e({"uuid": "b"})])
    b = await tr.position(T1, key, "b")
    assert await tr.last_position(T1, key) == ("b", b)
    await tr.append(T1, key, [e({"n": 1}), e({"n": 2})])
    uuid, seq = await tr.last_position(T1, key)
    assert uuid == "b" and seq > b  # the last entry's seq, the last uuid
    assert await tr.last_position(T2, key) == (None, 0)
    assert await tr.last_position(T1, TranscriptKey("p", S1, "subagents/x")) == (None, 0)
    await tr.delete(T1, key)
    assert await tr.last_position(T1, key) == (None, 0)
