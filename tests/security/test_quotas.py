"""Per-tenant quotas through gRPC: refused before upload, nothing partial
visible, and freed again when the limit is raised."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sessiond.client import ResourceExhausted
from sessiond.hydrator.remote import WorkspaceRemote
from sessiond.hydrator.snapshot import snapshot
from sessiond.server.core.tenants import Tenants
from tests.fixtures.server import RunningServer


async def test_storage_quota_refuses_the_upload_and_commits_nothing(
    sessiond_server: RunningServer, tmp_path: Path
) -> None:
    tenant, token = await sessiond_server.new_tenant()
    client = await sessiond_server.client(token)
    session = await client.create_session()
    remote = WorkspaceRemote(client, session.session_id)
    work = tmp_path / "work"
    work.mkdir()
    (work / "big.bin").write_bytes(os.urandom(3 << 20))
    tenants = Tenants(sessiond_server.meta)
    await tenants.set_quota(tenant, quota_bytes=512 << 10)

    with pytest.raises(ResourceExhausted) as err:
        await snapshot(remote, work, state_dir=tmp_path / "state")
    assert "quota" in str(err.value)
    usage = await sessiond_server.meta.quotas.usage(tenant)
    assert usage.reserved_bytes == 0
    assert usage.stored_bytes <= 512 << 10
    ws = await remote.workspace()
    assert not ws.HasField("latest_snapshot")

    await tenants.set_quota(tenant, quota_bytes=0)  # 0 removes the limit
    snap = await snapshot(remote, work, state_dir=tmp_path / "state")
    assert snap.snapshot_id
    assert (await sessiond_server.meta.quotas.usage(tenant)).stored_bytes >= 3 << 20


async def test_session_quota(sessiond_server: RunningServer) -> None:
    tenant, token = await sessiond_server.new_tenant()
    client = await sessiond_server.client(token)
    await Tenants(sessiond_server.meta).set_quota(tenant, quota_sessions=2)
    first = await client.create_session()
    await client.create_session()
    with pytest.raises(ResourceExhausted) as err:
        await client.create_session()
    assert "session quota of 2" in str(err.value)
    await client.delete_session(first.session_id)
    await client.create_session()
