"""Bad input to TranscriptService: precise codes, messages that name the
problem, and nothing partial stored from a rejected batch."""

from __future__ import annotations

import json

import pytest

from sessiond.api.v1 import transcripts_pb2
from sessiond.client import (
    AsyncClient,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
)
from tests.fixtures.server import RunningServer, run_server

GOOD = {"project_key": "proj", "session_id": "sess"}


def key(**kw: str) -> transcripts_pb2.SessionKey:
    return transcripts_pb2.SessionKey(**{**GOOD, **kw})


def entry(n: int, **extra: object) -> str:
    return json.dumps({"type": "user", "uuid": f"u{n}", "n": n, **extra})


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ({"project_key": ""}, "project_key is empty"),
        ({"session_id": ""}, "session_id is empty"),
        ({"project_key": "p" * 257}, "project_key is 257 bytes"),
        ({"session_id": "é" * 129}, "session_id is 258 bytes"),
        ({"session_id": "a\nb"}, "session_id contains control characters"),
        ({"project_key": "a\x00b"}, "project_key contains control characters"),
        ({"session_id": "../etc"}, "session_id '../etc' must not contain '/'"),
        ({"session_id": ".."}, "session_id must not be '..'"),
        ({"project_key": "a/b"}, "project_key 'a/b' must not contain '/'"),
        ({"subpath": "subagents/../x"}, "subpath"),
        ({"subpath": "/abs"}, "subpath"),
    ],
)
async def test_bad_keys_are_invalid_argument(
    sessiond_server: RunningServer, bad: dict[str, str], words: str
) -> None:
    client = await sessiond_server.client()
    with pytest.raises(InvalidArgument) as err:
        await client.append_entries(key(**bad), [entry(1)])
    assert words in str(err.value)
    with pytest.raises(InvalidArgument):
        async for _ in client.load_entries(key(**bad)):
            pass


async def test_opaque_session_ids_are_accepted(sessiond_server: RunningServer) -> None:
    # The SDK's own suite uses ids like "sess"; they need not be UUIDs.
    client = await sessiond_server.client()
    for sid in ("sess", "a b", "ünïcødé", "x" * 256):
        await client.append_entries(key(session_id=sid), [entry(1)])
        pages = [p async for p in client.load_entries(key(session_id=sid))]
        assert [json.loads(e)["n"] for p in pages for e in p] == [1]


@pytest.mark.parametrize(
    ("bad_entry", "words"),
    [
        ("[1, 2]", "entries[1] is a JSON list, not an object"),
        ('"text"', "entries[1] is a JSON str, not an object"),
        ("{not json", "entries[1] is not valid JSON"),
        ("null", "entries[1] is a JSON NoneType, not an object"),
    ],
)
async def test_non_object_entry_rejects_whole_batch(
    sessiond_server: RunningServer, bad_entry: str, words: str
) -> None:
    client = await sessiond_server.client()
    with pytest.raises(InvalidArgument) as err:
        await client.append_entries(key(), [entry(1), bad_entry, entry(2)])
    assert words in str(err.value)
    # Nothing of the rejected batch was stored.
    with pytest.raises(NotFound):
        async for _ in client.load_entries(key()):
            pass


async def test_oversized_entry_is_rejected_and_nothing_stored(
    metadata_url: str, tmp_path: object
) -> None:
    from pathlib import Path

    async with run_server(Path(str(tmp_path)) / "srv", metadata_url) as running:
        running.server.transcripts.max_entry_bytes = 4096
        client = await running.client()
        await client.append_entries(key(), [entry(0)])
        with pytest.raises(InvalidArgument) as err:
            await client.append_entries(key(), [entry(1), entry(2, blob="x" * 5000)])
        assert "entries[1] is" in str(err.value) and "over the limit of 4096" in str(err.value)
        pages = [p async for p in client.load_entries(key())]
        assert [json.loads(e)["n"] for p in pages for e in p] == [0]


async def test_batch_over_entry_count_limit(sessiond_server: RunningServer) -> None:
    sessiond_server.server.transcripts.max_batch_entries = 10
    client = await sessiond_server.client()
    with pytest.raises(ResourceExhausted) as err:
        await client.append_entries(key(), [entry(i) for i in range(11)])
    assert "over the limit of 10" in str(err.value)


@pytest.mark.parametrize(
    "token",
    [
        None,
        "not-a-key",
        "ssd_0123456789abcdef_" + "0" * 64,  # well-formed, unknown
    ],
)
async def test_unknown_tenant_is_unauthenticated(
    sessiond_server: RunningServer, token: str | None
) -> None:
    async with AsyncClient(sessiond_server.target, token=token) as client:
        with pytest.raises(Unauthenticated):
            await client.append_entries(key(), [entry(1)])
        with pytest.raises(Unauthenticated):
            await client.list_transcript_sessions("proj")


async def test_wrong_secret_and_revoked_key(sessiond_server: RunningServer) -> None:
    from sessiond.server.core.tenants import Tenants

    tenant_id, token = await sessiond_server.new_tenant()
    forged = token[:-4] + ("0000" if not token.endswith("0000") else "1111")
    async with AsyncClient(sessiond_server.target, token=forged) as client:
        with pytest.raises(Unauthenticated):
            await client.list_transcript_sessions("proj")
    tenants = Tenants(sessiond_server.meta)
    issued = await tenants.issue_key(tenant_id)
    await tenants.revoke_key(tenant_id, issued.record.key_id)
    async with AsyncClient(sessiond_server.target, token=issued.token) as client:
        with pytest.raises(Unauthenticated) as err:
            await client.list_transcript_sessions("proj")
        assert "revoked" in str(err.value)


async def test_tenants_are_isolated(sessiond_server: RunningServer) -> None:
    a = await sessiond_server.client()
    b = await sessiond_server.client()
    await a.append_entries(key(), [entry(1)])
    with pytest.raises(NotFound):
        async for _ in b.load_entries(key()):
            pass
    assert await b.list_transcript_sessions("proj") == []
    await b.delete_transcript(key())  # deleting "another tenant's" key is a no-op
    assert len([p async for p in a.load_entries(key())]) == 1
