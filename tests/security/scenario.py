"""A tenant with something worth stealing, for the security tests.

:func:`make_victim` gives a tenant one session that has a conversation (SDK
session id, project key, transcript entries carrying a recognisable secret,
a subagent transcript), a label carrying the secret, a manifest row and a
committed snapshot — everything another tenant might try to read, change or
delete. The conversation is written through the real TranscriptService; the
session's pointers and the snapshot rows go straight into the metadata store
(no sandbox, no CLI: these tests are about who may touch what).
"""

from __future__ import annotations

import json
import os
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sessiond.api.v1 import transcripts_pb2
from sessiond.client import AsyncClient
from sessiond.server.storage.records import (
    ManifestRecord,
    NewSnapshot,
    SessionChanges,
    TranscriptKey,
)
from tests.fixtures.server import RunningServer


@dataclass
class Victim:
    tenant_id: str
    token: str
    client: AsyncClient
    session_id: str
    sdk_session_id: str
    project_key: str
    manifest_id: str
    snapshot_id: str
    message_uuids: list[str]
    secret: str
    # Strings that must never reach another tenant.
    private: list[str] = field(default_factory=list)

    def key(self, subpath: str = "") -> transcripts_pb2.SessionKey:
        return transcripts_pb2.SessionKey(
            project_key=self.project_key, session_id=self.sdk_session_id, subpath=subpath
        )


def conversation(sdk_session_id: str, secret: str, turns: int = 2) -> tuple[list[str], list[str]]:
    """(entries as JSON text, their uuids): a minimal SDK transcript, user and
    assistant alternating, each chained to the previous by ``parentUuid``."""
    entries: list[str] = []
    uuids: list[str] = []
    parent: str | None = None
    for i in range(turns * 2):
        uid = str(uuid.uuid4())
        role = "user" if i % 2 == 0 else "assistant"
        entries.append(
            json.dumps(
                {
                    "type": role,
                    "uuid": uid,
                    "parentUuid": parent,
                    "sessionId": sdk_session_id,
                    "timestamp": f"2025-01-01T00:00:0{i}.000Z",
                    "message": {"role": role, "content": f"turn {i}: {secret}"},
                }
            )
        )
        uuids.append(uid)
        parent = uid
    return entries, uuids


async def give_conversation(
    server: RunningServer,
    client: AsyncClient,
    tenant_id: str,
    session_id: str,
    secret: str,
    *,
    project_key: str = "proj",
) -> tuple[str, list[str]]:
    """Append a conversation for ``session_id`` and point the session at it:
    (sdk session id, message uuids)."""
    sdk = str(uuid.uuid4())
    entries, uuids = conversation(sdk, secret)
    key = transcripts_pb2.SessionKey(project_key=project_key, session_id=sdk)
    await client.append_entries(key, entries)
    meta = server.meta
    record = await meta.sessions.get(tenant_id, session_id)
    await meta.sessions.update_fenced(
        tenant_id,
        session_id,
        record.epoch,
        SessionChanges(sdk_session_id=sdk, project_key=project_key),
    )
    return sdk, uuids


async def give_snapshot(
    server: RunningServer, tenant_id: str, session_id: str, at_uuid: str, seq: int
) -> tuple[str, str]:
    """A manifest row and a committed snapshot pinned to a message:
    (manifest id, snapshot id). The manifest blob itself is not stored."""
    meta = server.meta
    manifest_id = "man-" + secrets.token_hex(8)
    await meta.snapshots.put_manifest(
        tenant_id,
        ManifestRecord(
            manifest_id=manifest_id,
            blob_key=f"manifests/{manifest_id}",
            root_tree_id=os.urandom(32),
            config_tree_id=b"",
            size=1,
            created_at=datetime.now(UTC),
        ),
    )
    record = await meta.sessions.get(tenant_id, session_id)
    snap = await meta.snapshots.commit(
        NewSnapshot(
            tenant_id=tenant_id,
            snapshot_id="snap_" + secrets.token_hex(12),
            session_id=session_id,
            parent_snapshot_id=None,
            manifest_id=manifest_id,
            trigger="manual",
            transcript_uuid=at_uuid,
            transcript_seq=seq,
        ),
        expected_epoch=record.epoch,
    )
    return manifest_id, snap.snapshot_id


async def make_victim(server: RunningServer, secret: str | None = None) -> Victim:
    secret = secret or "SECRET-" + secrets.token_hex(8)
    tenant_id, token = await server.new_tenant("victim")
    client = await server.client(token)
    session = await client.create_session(labels={"owner": "victim", "note": secret[-16:]})
    sdk, uuids = await give_conversation(
        server, client, tenant_id, session.session_id, secret, project_key="proj-victim"
    )
    await client.append_entries(
        transcripts_pb2.SessionKey(
            project_key="proj-victim", session_id=sdk, subpath="subagents/agent-1"
        ),
        [json.dumps({"type": "user", "uuid": str(uuid.uuid4()), "text": secret})],
    )
    seq = await server.meta.transcripts.position(
        tenant_id, TranscriptKey("proj-victim", sdk), uuids[-1]
    )
    manifest_id, snapshot_id = await give_snapshot(
        server, tenant_id, session.session_id, uuids[-1], seq
    )
    return Victim(
        tenant_id=tenant_id,
        token=token,
        client=client,
        session_id=session.session_id,
        sdk_session_id=sdk,
        project_key="proj-victim",
        manifest_id=manifest_id,
        snapshot_id=snapshot_id,
        message_uuids=uuids,
        secret=secret,
        private=[tenant_id, sdk, "proj-victim", secret, secret[-16:], manifest_id, *uuids],
    )
