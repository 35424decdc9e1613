"""SessiondSessionStore: the Claude Agent SDK ``SessionStore`` backed by a
sessiond server.

Pass it to ``ClaudeAgentOptions(session_store=SessiondSessionStore(...))``: the
SDK mirrors every transcript entry to sessiond, and a later
``resume=<session id>`` in any container — with no local transcript at all —
loads it back. All six protocol methods are implemented.

The gRPC channel is created lazily in the event loop that first uses the store
and re-created if the store is later used from another loop (the SDK may run
the store from its own loop).
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from sessiond.api.v1 import transcripts_pb2

from .aio import AsyncClient
from .errors import NotFound

if TYPE_CHECKING:
    from claude_agent_sdk.types import (
        SessionKey,
        SessionListSubkeysKey,
        SessionStoreEntry,
        SessionStoreListEntry,
        SessionSummaryEntry,
    )


def _pb_key(key: SessionKey) -> transcripts_pb2.SessionKey:
    return transcripts_pb2.SessionKey(
        project_key=key["project_key"],
        session_id=key["session_id"],
        subpath=key.get("subpath") or "",
    )


class SessiondSessionStore:
    """A ``claude_agent_sdk`` SessionStore on a sessiond server.

    ``target`` is ``host:port``; ``token`` is a tenant API key or the sandbox
    token sessiond issued (sent as a bearer token). Appends are idempotent on
    entry ``uuid`` server-side, so the SDK's batch retries never duplicate.
    """

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.target = target
        self._token = token
        self._tls = tls
        self._roots = root_certificates
        self._timeout = timeout
        self._client: AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _rpc(self) -> AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            # A grpc.aio channel belongs to the loop that created it.
            self._client = AsyncClient(
                self.target,
                token=self._token,
                tls=self._tls,
                root_certificates=self._roots,
                timeout=self._timeout,
            )
            self._loop = loop
        return self._client

    async def close(self) -> None:
        if self._client is not None and self._loop is asyncio.get_running_loop():
            await self._client.close()
        self._client = None
        self._loop = None

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        if not entries:
            return
        texts = [json.dumps(e, ensure_ascii=False, separators=(",", ":")) for e in entries]
        await self._rpc().append_entries(_pb_key(key), texts)

    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        out: list[Any] = []
        try:
            async for page in self._rpc().load_entries(_pb_key(key)):
                out.extend(json.loads(text) for text in page)
        except NotFound:
            return None
        return out

    async def list_sessions(self, project_key: str) -> list[SessionStoreListEntry]:
        found = await self._rpc().list_transcript_sessions(project_key)
        return [{"session_id": s.session_id, "mtime": s.mtime} for s in found]

    async def list_session_summaries(self, project_key: str) -> list[SessionSummaryEntry]:
        found = await self._rpc().list_session_summaries(project_key)
        return [
            {"session_id": s.session_id, "mtime": s.mtime, "data": json.loads(s.data)}
            for s in found
        ]

    async def delete(self, key: SessionKey) -> None:
        await self._rpc().delete_transcript(_pb_key(key))

    async def list_subkeys(self, key: SessionListSubkeysKey) -> list[str]:
        return await self._rpc().list_subkeys(key["project_key"], key["session_id"])
