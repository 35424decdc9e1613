"""Assembles a sessiond server: stores, core services, servicers, interceptor,
health and reflection. Knows nothing of flags or environment variables."""

from __future__ import annotations

import logging
import os
import secrets
import sys
from collections.abc import Mapping
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

from .auth import AnonymousAuth, SandboxTokenAuth
from .config import ServerConfig, parse_listen
from .core.branching import Branching
from .core.leases import LeaseManager
from .core.lifecycle import Lifecycle, LifecycleConfig
from .core.reaper import IdleReaper
from .core.sessions import Sessions
from .core.transcripts import Transcripts
from .core.workspace import Workspaces
from .health import HealthMonitor
from .identity import Identity
from .interceptors import Authenticator, Metadata, ServerInterceptor
from .sandboxes.provider import SandboxProvider
from .sandboxes.registry import open_sandbox_provider
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
        *,
        provider: SandboxProvider | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.stores = stores
        self._base_auth = authenticator or AnonymousAuth(DEFAULT_TENANT)
        self._auth = _DeferredAuth(self._base_auth)
        self.port = 0
        self.replica_id = "r-" + secrets.token_hex(6)
        self.provider = provider or open_sandbox_provider(
            config.sandbox_provider,
            data_dir=config.data_dir,
            server_address=config.advertise_address,
        )
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
        self.leases = LeaseManager(stores.meta, self.replica_id, ttl=config.lease_ttl)
        hydrator: tuple[str, ...] = (
            (sys.executable, "-m", "sessiond.hydrator")
            if self.provider.name == "local"
            else ("sessiond-hydrator",)
        )
        self.lifecycle = Lifecycle(
            stores.meta,
            self.provider,
            self.leases,
            b"",
            LifecycleConfig(
                server_address=config.advertise_address,
                hydrator_command=hydrator,
                env_allowlist=config.env_allowlist,
                server_env=dict(os.environ if environ is None else environ),
            ),
        )
        self.reaper = IdleReaper(
            stores.meta,
            self.lifecycle,
            owner=self.replica_id,
            idle_timeout=config.idle_timeout,
            lease_ttl=config.lease_ttl,
        )
        self.workspaces = Workspaces(stores.meta, stores.blobs)
        workspace_pb2_grpc.add_WorkspaceServiceServicer_to_server(
            WorkspaceServicer(self.workspaces), self._server
        )
        self.transcripts = Transcripts(stores.meta)
        self.branching = Branching(stores.meta, self.transcripts, self.lifecycle)
        sessions_pb2_grpc.add_SessionServiceServicer_to_server(
            SessionServicer(self.sessions, self.lifecycle, self.branching), self._server
        )
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
        token_key = await self.stores.meta.server_key("sandbox-token-hmac")
        self._auth.target = SandboxTokenAuth(token_key, self._base_auth)
        host, port = parse_listen(self.config.listen)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.port = self._server.add_insecure_port(address)
        advertise = self.config.advertise_address or f"{_connect_host(host)}:{self.port}"
        self.lifecycle.configure(token_key=token_key, server_address=advertise)
        await self._monitor.check_once()
        await self._server.start()
        self._monitor.start()
        self.reaper.start()
        log.info(
            "sessiond listening on %s:%d (replica %s, sandboxes: %s)",
            host,
            self.port,
            self.replica_id,
            self.provider.name,
        )
        return self.port

    async def wait(self) -> None:
        await self._server.wait_for_termination()

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting RPCs, let in-flight ones finish within ``grace``
        seconds, then close the stores."""
        await self.reaper.stop()
        await self._monitor.stop()
        await self._server.stop(self.config.drain_seconds if grace is None else grace)
        await self.provider.close()
        await self.stores.close()


class _DeferredAuth:
    """The interceptor's authenticator, whose target is set at start (the
    sandbox-token key lives in the database)."""

    def __init__(self, target: Authenticator) -> None:
        self.target = target

    async def authenticate(self, metadata: Metadata, method: str) -> Identity:
        return await self.target.authenticate(metadata, method)


def _connect_host(host: str) -> str:
    """An address sandboxes on this host can dial for a listen host."""
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
