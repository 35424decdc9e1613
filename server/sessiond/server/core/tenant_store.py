"""The SDK's SessionStore protocol over this server's own transcript table,
for one tenant, so the SDK's store helpers (``fork_session_via_store``) run
server-side without a gRPC round trip.

The SDK helpers derive project keys from directories; a sessiond session
already knows its project key, so this adapter pins it and ignores the
``project_key`` the helpers compute.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from sessiond.client.errors import NotFound

from ..storage.records import TranscriptKey
from .transcripts import Transcripts

if TYPE_CHECKING:
    from claude_agent_sdk.types import SessionKey, SessionListSubkeysKey


class TenantTranscriptStore:
    def __init__(self, transcripts: Transcripts, tenant_id: str, project_key: str) -> None:
        self._t = transcripts
        self._tenant = tenant_id
        self._project = project_key

    def _key(self, key: SessionKey) -> TranscriptKey:
        return TranscriptKey(self._project, key["session_id"], key.get("subpath") or "")

    async def append(self, key: SessionKey, entries: list[Any]) -> None:
        texts = [json.dumps(e, ensure_ascii=False, separators=(",", ":")) for e in entries]
        await self._t.append(self._tenant, self._key(key), texts)

    async def load(self, key: SessionKey) -> list[Any] | None:
        out: list[Any] = []
        try:
            async for page in self._t.load(self._tenant, self._key(key)):
                out.extend(json.loads(text) for text in page)
        except NotFound:
            return None
        return out

    async def list_subkeys(self, key: SessionListSubkeysKey) -> list[str]:
        return await self._t.list_subkeys(self._tenant, self._project, key["session_id"])
