"""Assembles a sessiond server: stores, core services, servicers, interceptor,
health and reflection. Knows nothing of flags or environment variables."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from sessiond.api.v1 import (
    sessions_pb2,
    sessions_pb2_grpc,
    transcripts_pb2,
    transcripts_pb2_grpc,
    workspace_pb2,
    workspace_pb2_grpc,
)
from sessiond.client.errors import SessiondError

from .auth import AnonymousAuth
from .config import ServerConfig, parse_listen
from .core.sessions import Sessions
from .core.transcripts import Transcripts
from .core.workspace import Workspaces
from .health import HealthMonitor
from .interceptors import Authenticator, ServerInterceptor
from .servicers.sessions import SessionServicer
from .servicers.transcripts import TranscriptServicer
from .servicers.workspace import WorkspaceServicer
from .storage.blob import BlobStore
from .storage.blob_url import open_blob_store
from .storage.metadata import DEFAULT_TENANT, MetadataStore
from .storage.metadata_url import open_metadata_store

log = logging.getLogger(__name__)

SERVICE_NAMES = [
    sessions_pb2.DESCRIPTOR.services_by_name["SessionService"].full_name,
    transcripts_pb2.DESCRIPTOR.services_by_name["TranscriptService"].full_name,
    workspace_pb2.DESCRIPTOR.services_by_name["WorkspaceService"].full_name,
]


class StoreOpenError(Exception):
    def __init__(self, store: str, cause: SessiondError) -> None:
        super().__init__(str(cause))
        self.store = store
        self.cause = cause


@dataclass
class Stores:
    meta: MetadataStore
    blobs: BlobStore

    @classmethod
    async def open(cls, config: ServerConfig) -> Stores:
        """Open and probe both stores. Raises :class:`StoreOpenError` naming
        which one failed (wrapping ``InvalidArgument`` for a malformed URL or
        ``Unavailable`` for an unreachable service)."""
        try:
            meta = await open_metadata_store(config.database_url)
        except SessiondError as exc:
            raise StoreOpenError("database", exc) from exc
        try:
            blobs = await open_blob_store(config.blob_url, data_dir=config.data_dir)
            await blobs.ping()
        except SessiondError as exc:
            await meta.close()
            raise StoreOpenError("blobs", exc) from exc
        return cls(meta=meta, blobs=blobs)

    async def close(self) -> None:
        await self.blobs.close()
        await self.meta.close()


class SessiondServer:
    """A running gRPC server over opened stores. ``start`` → ``stop``."""

    def __init__(
        self,
        config: ServerConfig,
        stores: Stores,
        authenticator: Authenticator | None = None,
    ) -> None:
        self.config = config
        self.stores = stores
        self._auth = authenticator or AnonymousAuth(DEFAULT_TENANT)
        self.port = 0
        options = [
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        self._server = grpc.aio.server(
            interceptors=[ServerInterceptor(self._auth)], options=options
        )
        self._health = HealthServicer()
        self._monitor = HealthMonitor(
            self._health,
            SERVICE_NAMES,
            {"metadata": stores.meta.ping, "blobs": stores.blobs.ping},
            config.health_interval,
        )
        self.sessions = Sessions(stores.meta)
        sessions_pb2_grpc.add_SessionServiceServicer_to_server(
            SessionServicer(self.sessions), self._server
        )
        self.workspaces = Workspaces(stores.meta, stores.blobs)
        workspace_pb2_grpc.add_WorkspaceServiceServicer_to_server(
            WorkspaceServicer(self.workspaces), self._server
        )
        self.transcripts = Transcripts(stores.meta)
        transcripts_pb2_grpc.add_TranscriptServiceServicer_to_server(
            TranscriptServicer(self.transcripts), self._server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            [
                *SERVICE_NAMES,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            self._server,
        )

    async def start(self) -> int:
        """Bind, probe the stores once, start serving. Returns the bound port."""
        await self.stores.meta.tenants.ensure(DEFAULT_TENANT, "default")
        host, port = parse_listen(self.config.listen)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.port = self._server.add_insecure_port(address)
        await self._monitor.check_once()
        await self._server.start()
        self._monitor.start()
        log.info("sessiond listening on %s:%d", host, self.port)
        return self.port

    async def wait(self) -> None:
        await self._server.wait_for_termination()

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting RPCs, let in-flight ones finish within ``grace``
        seconds, then close the stores."""
        await self._monitor.stop()
        await self._server.stop(self.config.drain_seconds if grace is None else grace)
        await self.stores.close()
