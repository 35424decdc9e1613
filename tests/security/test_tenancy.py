"""Tenancy and tokens, through real gRPC on both metadata backends.

* Another tenant's sessions, transcripts and workspaces are invisible:
  every read, write or delete is NOT_FOUND (or, for list calls and
  transcript deletes, empty / a no-op), nothing of the victim's appears in
  an error message, and the victim's data is unchanged afterwards.
* The tenant comes only from credentials: no request carries a tenant
  field, and metadata such as ``x-tenant-id`` changes nothing.
* Expired and revoked API keys are UNAUTHENTICATED (revocation within the
  auth cache's interval; expiry exactly).
* Sandbox tokens reach one session and the hydrator's RPCs only.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sessiond.api.v1 import (
    common_pb2,
    format_pb2,
    sessions_pb2,
    transcripts_pb2,
    workspace_pb2,
)
from sessiond.client import (
    AsyncClient,
    NotFound,
    PermissionDenied,
    SessiondError,
    Unauthenticated,
)
from sessiond.client._channel import call, stream
from sessiond.server import sandbox_tokens
from sessiond.server.core.tenants import Tenants
from tests.fixtures.server import RunningServer, run_server
from tests.helpers import assert_eventually
from tests.security.scenario import Victim, give_conversation, make_victim

# -- helpers ---------------------------------------------------------------------


def assert_reveals_nothing(
    err: SessiondError, victim: Victim, supplied: tuple[str, ...] = ()
) -> None:
    """The message names nothing of the victim's but what the caller itself
    put in the request (``supplied``: echoing an id back reveals nothing)."""
    for private in victim.private:
        if private not in supplied:
            assert private not in err.message, (private, err.message)


async def hidden(victim: Victim, attempt: Awaitable[Any], *supplied: str) -> None:
    """``attempt`` fails NOT_FOUND and names nothing of the victim's."""
    with pytest.raises(NotFound) as err:
        await attempt
    assert_reveals_nothing(err.value, victim, supplied)


async def drain(iterator: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in iterator]


async def refused(attempt: Awaitable[Any]) -> str:
    """The message of the Unauthenticated ``attempt`` raises; AssertionError
    if it succeeds (so it can be retried by ``assert_eventually``)."""
    try:
        await attempt
    except Unauthenticated as exc:
        return exc.message
    raise AssertionError("the call still succeeds")


async def unary(client: AsyncClient, method: Callable[..., Any], request: Any) -> Any:
    return await call(method, request, metadata=client.metadata, timeout=30)


async def victim_intact(victim: Victim) -> None:
    """The victim still sees exactly what it had."""
    session = await victim.client.get_session(victim.session_id)
    assert session.state != common_pb2.SESSION_STATE_DELETED
    assert dict(session.labels) == {"owner": "victim", "note": victim.secret[-16:]}
    assert session.sdk_session_id == victim.sdk_session_id
    snaps = await victim.client.list_snapshots(victim.session_id)
    assert [s.snapshot_id for s in snaps.snapshots] == [victim.snapshot_id]
    pages = await drain(victim.client.load_entries(victim.key()))
    assert [json.loads(e)["uuid"] for p in pages for e in p] == victim.message_uuids
    assert await victim.client.list_subkeys(victim.project_key, victim.sdk_session_id) == [
        "subagents/agent-1"
    ]


@pytest.fixture
async def victim(sessiond_server: RunningServer) -> Victim:
    return await make_victim(sessiond_server)


@pytest.fixture
async def attacker(sessiond_server: RunningServer) -> AsyncClient:
    _, token = await sessiond_server.new_tenant("attacker")
    return await sessiond_server.client(token)


# -- sessions ---------------------------------------------------------------------


async def test_other_tenants_sessions_are_not_found(
    sessiond_server: RunningServer, victim: Victim, attacker: AsyncClient
) -> None:
    sid = victim.session_id
    await hidden(victim, attacker.get_session(sid))
    await hidden(victim, attacker.update_session(sid, set_labels={"owner": "attacker"}))
    await hidden(victim, attacker.update_session(sid, remove_labels=["owner"]))
    await hidden(victim, attacker.delete_session(sid))
    await hidden(victim, drain(attacker.query(sid, "hello")))
    await hidden(victim, attacker.suspend(sid))
    await hidden(victim, attacker.resume(sid))
    await hidden(victim, attacker.fork(sid))
    await hidden(victim, attacker.fork(sid, at_message_uuid=victim.message_uuids[0]))
    await hidden(victim, attacker.list_snapshots(sid))
    await hidden(victim, attacker.restore(sid, snapshot_id=victim.snapshot_id))
    await hidden(victim, attacker.restore(sid, message_uuid=victim.message_uuids[1]))
    await hidden(
        victim, attacker.restore(sid, snapshot_id=victim.snapshot_id, into_new_session=True)
    )
    await victim_intact(victim)


async def test_own_session_cannot_reach_into_another_tenant(
    sessiond_server: RunningServer, victim: Victim
) -> None:
    # The attacker has a session with a conversation of its own and points
    # victim's ids (snapshot, message uuid) at it.
    tenant_id, token = await sessiond_server.new_tenant("attacker")
    attacker = await sessiond_server.client(token)
    own = await attacker.create_session()
    await give_conversation(sessiond_server, attacker, tenant_id, own.session_id, "mine")
    await hidden(victim, attacker.restore(own.session_id, snapshot_id=victim.snapshot_id))
    uuid = victim.message_uuids[1]
    await hidden(victim, attacker.restore(own.session_id, message_uuid=uuid), uuid)
    await hidden(victim, attacker.fork(own.session_id, at_message_uuid=uuid), uuid)
    await victim_intact(victim)


async def test_session_ids_are_per_tenant(
    sessiond_server: RunningServer, victim: Victim, attacker: AsyncClient
) -> None:
    # Taking the victim's id creates the attacker's own session: nothing is
    # shared, nothing collides, nothing is revealed.
    mine = await attacker.create_session(session_id=victim.session_id, labels={"x": "1"})
    assert mine.session_id == victim.session_id
    got = await attacker.get_session(victim.session_id)
    assert dict(got.labels) == {"x": "1"} and not got.sdk_session_id
    assert not (await attacker.list_snapshots(victim.session_id)).snapshots
    await attacker.delete_session(victim.session_id)  # its own
    await victim_intact(victim)


async def test_lists_show_nothing_of_another_tenant(
    sessiond_server: RunningServer, victim: Victim, attacker: AsyncClient
) -> None:
    own = await attacker.create_session()
    for deleted in (False, True):
        listed = await attacker.list_sessions(include_deleted=deleted)
        assert [s.session_id for s in listed.sessions] == [own.session_id]
    assert not (await attacker.list_sessions(label_selector={"owner": "victim"})).sessions
    assert await attacker.list_transcript_sessions(victim.project_key) == []
    assert await attacker.list_session_summaries(victim.project_key) == []
    assert await attacker.list_subkeys(victim.project_key, victim.sdk_session_id) == []


# -- transcripts ----------------------------------------------------------------


async def test_other_tenants_transcripts_are_invisible(
    sessiond_server: RunningServer, victim: Victim, attacker: AsyncClient
) -> None:
    supplied = (victim.project_key, victim.sdk_session_id)
    await hidden(victim, drain(attacker.load_entries(victim.key())), *supplied)
    await hidden(victim, drain(attacker.load_entries(victim.key("subagents/agent-1"))), *supplied)
    # Deleting "the victim's" key deletes nothing of the victim's.
    await attacker.delete_transcript(victim.key())
    # Appending under the victim's key writes into the attacker's own space.
    planted = json.dumps({"type": "user", "uuid": victim.message_uuids[0], "text": "planted"})
    result = await attacker.append_entries(victim.key(), [planted])
    assert (result.appended, result.duplicates) == (1, 0)
    pages = await drain(attacker.load_entries(victim.key()))
    assert [json.loads(e)["text"] for p in pages for e in p] == ["planted"]
    await victim_intact(victim)


# -- workspaces -------------------------------------------------------------------


async def test_other_tenants_workspaces_are_not_found(
    sessiond_server: RunningServer, victim: Victim, attacker: AsyncClient
) -> None:
    ws = attacker.workspace
    sid = victim.session_id
    some_id = b"\x01" * 32
    for acquire in (False, True):
        await hidden(
            victim,
            unary(
                attacker,
                ws.GetWorkspace,
                workspace_pb2.GetWorkspaceRequest(session_id=sid, acquire_lease=acquire),
            ),
        )
    await hidden(
        victim,
        unary(
            attacker,
            ws.MissingChunks,
            workspace_pb2.MissingChunksRequest(session_id=sid, chunk_ids=[some_id]),
        ),
    )
    await hidden(
        victim,
        drain(
            stream(
                ws.GetChunks(
                    workspace_pb2.GetChunksRequest(session_id=sid, chunk_ids=[some_id]),
                    metadata=attacker.metadata,
                )
            )
        ),
    )

    async def pack() -> AsyncIterator[workspace_pb2.PutPackRequest]:
        chunk = workspace_pb2.PackChunk(
            chunk_id=some_id, kind=workspace_pb2.CHUNK_KIND_DATA, length=1, raw_length=1
        )
        yield workspace_pb2.PutPackRequest(
            header=workspace_pb2.PackHeader(session_id=sid, chunks=[chunk])
        )
        yield workspace_pb2.PutPackRequest(data=b"x")

    await hidden(victim, call(ws.PutPack, pack(), metadata=attacker.metadata, timeout=30))
    await hidden(
        victim,
        unary(
            attacker,
            ws.PutManifest,
            workspace_pb2.PutManifestRequest(
                session_id=sid,
                manifest=format_pb2.Manifest(version=1, root_tree_id=some_id).SerializeToString(),
            ),
        ),
    )
    await hidden(
        victim,
        unary(
            attacker,
            ws.GetManifest,
            workspace_pb2.GetManifestRequest(session_id=sid, manifest_id=victim.manifest_id),
        ),
    )
    await hidden(
        victim,
        unary(
            attacker,
            ws.GetManifest,
            workspace_pb2.GetManifestRequest(session_id=sid, snapshot_id=victim.snapshot_id),
        ),
    )
    await hidden(
        victim,
        unary(
            attacker,
            ws.CommitSnapshot,
            workspace_pb2.CommitSnapshotRequest(
                session_id=sid,
                manifest_id=victim.manifest_id,
                trigger=common_pb2.SNAPSHOT_TRIGGER_MANUAL,
            ),
        ),
    )
    # Through a session of its own, the victim's manifest and snapshot are
    # just as unknown.
    own = await attacker.create_session()
    await hidden(
        victim,
        unary(
            attacker,
            ws.GetManifest,
            workspace_pb2.GetManifestRequest(
                session_id=own.session_id, manifest_id=victim.manifest_id
            ),
        ),
        victim.manifest_id,
    )
    await hidden(
        victim,
        unary(
            attacker,
            ws.GetManifest,
            workspace_pb2.GetManifestRequest(
                session_id=own.session_id, snapshot_id=victim.snapshot_id
            ),
        ),
    )
    await hidden(
        victim,
        unary(
            attacker,
            ws.CommitSnapshot,
            workspace_pb2.CommitSnapshotRequest(
                session_id=own.session_id,
                manifest_id=victim.manifest_id,
                trigger=common_pb2.SNAPSHOT_TRIGGER_MANUAL,
            ),
        ),
        victim.manifest_id,
    )
    assert not (await attacker.list_snapshots(own.session_id)).snapshots
    await victim_intact(victim)


# -- the tenant comes from credentials only -----------------------------------------


def test_no_request_carries_a_tenant_field() -> None:
    for module in (sessions_pb2, transcripts_pb2, workspace_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                stack = [method.input_type]
                seen: set[str] = set()
                while stack:
                    msg = stack.pop()
                    if msg.full_name in seen:
                        continue
                    seen.add(msg.full_name)
                    for f in msg.fields:
                        assert "tenant" not in f.name.lower(), (method.full_name, f.name)
                        if f.message_type is not None:
                            stack.append(f.message_type)


async def test_forged_tenant_metadata_changes_nothing(
    sessiond_server: RunningServer, victim: Victim
) -> None:
    _, token = await sessiond_server.new_tenant("attacker")
    forged = (
        ("x-tenant-id", victim.tenant_id),
        ("tenant", victim.tenant_id),
        ("x-sessiond-tenant", victim.tenant_id),
    )
    async with AsyncClient(sessiond_server.target, token=token) as attacker:
        md = (*attacker.metadata, *forged)
        with pytest.raises(NotFound) as err:
            await call(
                attacker.sessions.GetSession,
                sessions_pb2.GetSessionRequest(session_id=victim.session_id),
                metadata=md,
            )
        assert_reveals_nothing(err.value, victim)
        listed = await call(
            attacker.sessions.ListSessions, sessions_pb2.ListSessionsRequest(), metadata=md
        )
        assert not listed.sessions
        with pytest.raises(NotFound):
            await drain(
                stream(
                    attacker.transcripts.Load(
                        transcripts_pb2.LoadRequest(key=victim.key()), metadata=md
                    )
                )
            )
        created = await call(
            attacker.sessions.CreateSession, sessions_pb2.CreateSessionRequest(), metadata=md
        )
    # The session landed in the attacker's tenant, not the victim's.
    assert created.session_id not in [
        s.session_id for s in (await victim.client.list_sessions()).sessions
    ]
    # Without credentials the forged tenant gets nowhere at all.
    async with AsyncClient(sessiond_server.target) as anonymous:
        with pytest.raises(Unauthenticated):
            await call(
                anonymous.sessions.ListSessions,
                sessions_pb2.ListSessionsRequest(),
                metadata=forged,
            )
    await victim_intact(victim)


# -- API keys -------------------------------------------------------------------------


async def test_expired_key_is_unauthenticated(sessiond_server: RunningServer) -> None:
    # The auth cache (5 s here) never outlives a key's expiry.
    tenant_id, _ = await sessiond_server.new_tenant()
    issued = await Tenants(sessiond_server.meta).issue_key(
        tenant_id, expires_in=timedelta(seconds=1.5)
    )
    issued_at = time.monotonic()
    async with AsyncClient(sessiond_server.target, token=issued.token) as client:
        await client.list_sessions()  # verified and cached

        async def expired() -> None:
            assert "expired" in await refused(client.list_sessions())

        await assert_eventually(expired, timeout=10)
    # Refused right after expiry, not when the 5 s cache entry would lapse.
    assert time.monotonic() - issued_at < 4.0


async def test_revoked_key_is_unauthenticated_within_the_cache_interval(
    metadata_url: str, tmp_path: Path
) -> None:
    async with run_server(tmp_path / "srv", metadata_url, auth_cache_seconds=0.5) as server:
        tenant_id, _ = await server.new_tenant()
        tenants = Tenants(server.meta)
        issued = await tenants.issue_key(tenant_id)
        async with AsyncClient(server.target, token=issued.token) as client:
            await client.list_sessions()  # now cached
            await tenants.revoke_key(tenant_id, issued.record.key_id)

            async def revoked() -> None:
                assert "revoked" in await refused(client.list_sessions())

            started = time.monotonic()
            await assert_eventually(revoked, timeout=5)
            assert time.monotonic() - started < 3


async def test_without_cache_revocation_is_immediate(metadata_url: str, tmp_path: Path) -> None:
    async with run_server(tmp_path / "srv", metadata_url, auth_cache_seconds=0) as server:
        tenant_id, _ = await server.new_tenant()
        tenants = Tenants(server.meta)
        issued = await tenants.issue_key(tenant_id)
        async with AsyncClient(server.target, token=issued.token) as client:
            await client.list_sessions()
            await tenants.revoke_key(tenant_id, issued.record.key_id)
            with pytest.raises(Unauthenticated, match="revoked"):
                await client.list_sessions()


# -- sandbox tokens -----------------------------------------------------------------


class SandboxWorld:
    """One tenant, sessions A and B with conversations in one project, and a
    way to mint sandbox tokens with the server's own key."""

    def __init__(self, server: RunningServer) -> None:
        self.server = server

    async def setup(self) -> SandboxWorld:
        self.tenant_id, token = await self.server.new_tenant("sbx")
        self.owner = await self.server.client(token)
        self.a = (await self.owner.create_session()).session_id
        self.b = (await self.owner.create_session()).session_id
        self.sdk_a, _ = await give_conversation(
            self.server, self.owner, self.tenant_id, self.a, "alpha"
        )
        self.sdk_b, _ = await give_conversation(
            self.server, self.owner, self.tenant_id, self.b, "beta"
        )
        self.key = await self.server.server.stores.meta.server_key("sandbox-token-hmac")
        return self

    def token(
        self,
        session_id: str | None = None,
        sdk: str | None = None,
        *,
        tenant_id: str | None = None,
        expires_in: float = 600,
        key: bytes | None = None,
    ) -> str:
        return sandbox_tokens.issue(
            key or self.key,
            sandbox_tokens.SandboxClaims(
                tenant_id=tenant_id or self.tenant_id,
                session_id=session_id or self.a,
                sdk_session_id=sdk or self.sdk_a,
                expires_at=time.time() + expires_in,
            ),
        )

    async def client(self, token: str) -> AsyncClient:
        return await self.server.client(token)


@pytest.fixture
async def world(sessiond_server: RunningServer) -> SandboxWorld:
    return await SandboxWorld(sessiond_server).setup()


def tkey(sdk: str, subpath: str = "") -> transcripts_pb2.SessionKey:
    return transcripts_pb2.SessionKey(project_key="proj", session_id=sdk, subpath=subpath)


async def test_sandbox_token_works_for_its_own_session(world: SandboxWorld) -> None:
    sbx = await world.client(world.token())
    info = await unary(
        sbx, sbx.workspace.GetWorkspace, workspace_pb2.GetWorkspaceRequest(session_id=world.a)
    )
    assert info.session_id == world.a
    pages = await drain(sbx.load_entries(tkey(world.sdk_a)))
    assert sum(len(p) for p in pages) == 4
    await sbx.append_entries(tkey(world.sdk_a, "subagents/agent-9"), ['{"type": "user"}'])


async def test_sandbox_token_for_another_session_is_denied(world: SandboxWorld) -> None:
    sbx = await world.client(world.token())
    ws = sbx.workspace
    b = world.b
    denied: list[Awaitable[Any]] = [
        unary(sbx, ws.GetWorkspace, workspace_pb2.GetWorkspaceRequest(session_id=b)),
        unary(sbx, ws.MissingChunks, workspace_pb2.MissingChunksRequest(session_id=b)),
        unary(sbx, ws.PutManifest, workspace_pb2.PutManifestRequest(session_id=b)),
        unary(sbx, ws.GetManifest, workspace_pb2.GetManifestRequest(session_id=b, snapshot_id="s")),
        unary(
            sbx,
            ws.CommitSnapshot,
            workspace_pb2.CommitSnapshotRequest(
                session_id=b, manifest_id="m", trigger=common_pb2.SNAPSHOT_TRIGGER_MANUAL
            ),
        ),
        drain(
            stream(
                ws.GetChunks(workspace_pb2.GetChunksRequest(session_id=b), metadata=sbx.metadata)
            )
        ),
    ]
    for attempt in denied:
        with pytest.raises(PermissionDenied):
            await attempt


async def test_sandbox_token_reads_manifests_only_through_its_snapshots(
    world: SandboxWorld,
) -> None:
    # Manifests are indexed per tenant: by id, session A's sandbox could read
    # B's tree. It must go through a snapshot, which must be A's.
    from tests.security.scenario import give_snapshot

    _, uuids = await give_conversation(
        world.server, world.owner, world.tenant_id, world.b, "beta-2", project_key="proj-b"
    )
    manifest_b, snapshot_b = await give_snapshot(
        world.server, world.tenant_id, world.b, uuids[-1], 1
    )
    sbx = await world.client(world.token())
    ws = sbx.workspace
    with pytest.raises(PermissionDenied):
        await unary(
            sbx,
            ws.GetManifest,
            workspace_pb2.GetManifestRequest(session_id=world.a, manifest_id=manifest_b),
        )
    with pytest.raises(NotFound):
        await unary(
            sbx,
            ws.GetManifest,
            workspace_pb2.GetManifestRequest(session_id=world.a, snapshot_id=snapshot_b),
        )


@pytest.mark.parametrize(
    "rpc",
    ["create", "delete", "get", "list", "query", "fork", "transcript_delete", "suspend"],
)
async def test_sandbox_token_cannot_call_non_hydrator_rpcs(world: SandboxWorld, rpc: str) -> None:
    sbx = await world.client(world.token())
    attempts: dict[str, Callable[[], Awaitable[Any]]] = {
        "create": lambda: sbx.create_session(),
        "delete": lambda: sbx.delete_session(world.a),
        "get": lambda: sbx.get_session(world.a),
        "list": lambda: sbx.list_sessions(),
        "query": lambda: drain(sbx.query(world.a, "hi")),
        "fork": lambda: sbx.fork(world.a),
        "transcript_delete": lambda: sbx.delete_transcript(tkey(world.sdk_a)),
        "suspend": lambda: sbx.suspend(world.a),
    }
    with pytest.raises(PermissionDenied):
        await attempts[rpc]()
    # And nothing happened.
    assert (await world.owner.get_session(world.a)).state != common_pb2.SESSION_STATE_DELETED
    assert len((await world.owner.list_sessions()).sessions) == 2


async def test_sandbox_token_for_another_transcript_is_denied(world: SandboxWorld) -> None:
    sbx = await world.client(world.token())
    with pytest.raises(PermissionDenied):
        await drain(sbx.load_entries(tkey(world.sdk_b)))
    with pytest.raises(PermissionDenied):
        await sbx.append_entries(tkey(world.sdk_b), ['{"type": "user"}'])
    with pytest.raises(PermissionDenied):
        await sbx.append_entries(tkey(world.sdk_b, "subagents/agent-1"), ['{"type": "user"}'])
    with pytest.raises(PermissionDenied):
        await sbx.list_subkeys("proj", world.sdk_b)
    pages = await drain(world.owner.load_entries(tkey(world.sdk_b)))
    assert sum(len(p) for p in pages) == 4


async def test_sandbox_token_lists_only_its_own_transcript(world: SandboxWorld) -> None:
    owner_view = {s.session_id for s in await world.owner.list_transcript_sessions("proj")}
    assert owner_view == {world.sdk_a, world.sdk_b}
    sbx = await world.client(world.token())
    assert [s.session_id for s in await sbx.list_transcript_sessions("proj")] == [world.sdk_a]
    assert [s.session_id for s in await sbx.list_session_summaries("proj")] == [world.sdk_a]


async def test_expired_sandbox_token_is_unauthenticated(world: SandboxWorld) -> None:
    sbx = await world.client(world.token(expires_in=-1))
    with pytest.raises(Unauthenticated, match="expired"):
        await drain(sbx.load_entries(tkey(world.sdk_a)))
    # A token that expires while in use stops working.
    short = await world.client(world.token(expires_in=1.2))
    await drain(short.load_entries(tkey(world.sdk_a)))

    async def expired() -> None:
        assert "expired" in await refused(drain(short.load_entries(tkey(world.sdk_a))))

    await assert_eventually(expired, timeout=10)


def _tamper_payload(token: str, **changes: Any) -> str:
    head, payload, mac = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data.update(changes)
    new = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    return f"{head}.{new}.{mac}"


async def test_tampered_sandbox_tokens_are_unauthenticated(world: SandboxWorld) -> None:
    good = world.token()
    forged = [
        _tamper_payload(good, s=world.b),  # another session, same MAC
        _tamper_payload(good, a=world.sdk_b),  # another transcript
        _tamper_payload(good, t="someone-else"),  # another tenant
        _tamper_payload(good, e=int(time.time()) + 10**6),  # longer life
        good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"),  # MAC flipped
        good.rsplit(".", 1)[0] + ".",  # MAC removed
        world.token(key=b"k" * 32),  # signed with another key
        "sbx1.garbage",
    ]
    for token in forged:
        sbx = await world.client(token)
        with pytest.raises(Unauthenticated):
            await drain(sbx.load_entries(tkey(world.sdk_a)))
        with pytest.raises(Unauthenticated):
            await unary(
                sbx,
                sbx.workspace.GetWorkspace,
                workspace_pb2.GetWorkspaceRequest(session_id=world.b),
            )


async def test_sandbox_token_of_an_unknown_tenant_is_unauthenticated(world: SandboxWorld) -> None:
    # Validly signed (the key is the server's), but the tenant does not exist
    # (deleted tenants are gone to authentication the same way).
    sbx = await world.client(world.token(tenant_id="ghost"))
    with pytest.raises(Unauthenticated, match="unknown tenant"):
        await drain(sbx.load_entries(tkey(world.sdk_a)))
