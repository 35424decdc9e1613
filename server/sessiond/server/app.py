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
from sessiond.client.errors import DataLoss, FailedPrecondition, SessiondError, Unavailable

from .auth import AnonymousAuth, SandboxTokenAuth
from .config import ServerConfig, parse_listen
from .core.branching import Branching
from .core.idempotency import Idempotency
from .core.keyring import Keyring
from .core.leases import LeaseManager
from .core.lifecycle import Lifecycle, LifecycleConfig
from .core.reaper import IdleReaper
from .core.sealing import MasterKey, load_or_create_master_key, read_master_key_file
from .core.sessions import Sessions
from .core.transcripts import Transcripts
from .core.workspace import Workspaces
from .health import HealthMonitor
from .identity import Identity
from .interceptors import Authenticator, Metadata, ServerInterceptor
from .metrics import MeteredProvider, MetricsEndpoint, ServerMetrics
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
    """A store could not be opened or used: ``store`` is ``database``,
    ``blobs`` or ``master-key`` (the master key does not open the data keys
    stored in the database)."""

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
        # Per server, never global: two servers in one process do not clash.
        self.metrics = ServerMetrics()
        self.metrics_endpoint: MetricsEndpoint | None = None
        self.provider = provider or open_sandbox_provider(
            config.sandbox_provider,
            data_dir=config.data_dir,
            server_address=config.advertise_address,
        )
        options = [
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),
            # Accept the clients' keepalive pings (every 30 s while a call is
            # open, see sessiond.client): gRPC's default (5 min) answers them
            # with GOAWAY "too_many_pings" during a long quiet stream, e.g. a
            # PutPack while the hydrator reads a large file.
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ]
        self._server = grpc.aio.server(
            interceptors=[ServerInterceptor(self._auth, self.metrics)], options=options
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
        self.leases.on_conflict = self.metrics.lease_conflict
        hydrator: tuple[str, ...] = (
            (sys.executable, "-m", "sessiond.hydrator")
            if self.provider.name == "local"
            else ("sessiond-hydrator",)
        )
        self.lifecycle = Lifecycle(
            stores.meta,
            MeteredProvider(self.provider, self.metrics),
            self.leases,
            b"",
            LifecycleConfig(
                server_address=config.advertise_address,
                hydrator_command=hydrator,
                env_allowlist=config.env_allowlist,
                server_env=dict(os.environ if environ is None else environ),
            ),
        )
        self.lifecycle.observer = self.metrics
        self.reaper = IdleReaper(
            stores.meta,
            self.lifecycle,
            owner=self.replica_id,
            idle_timeout=config.idle_timeout,
            lease_ttl=config.lease_ttl,
        )
        self.master_key = master_key_of(config)
        self.keyring = Keyring(stores.meta.tenants, self.master_key, encrypt=config.encryption)
        self.workspaces = Workspaces(stores.meta, stores.blobs, keyring=self.keyring)
        workspace_pb2_grpc.add_WorkspaceServiceServicer_to_server(
            WorkspaceServicer(self.workspaces, self.metrics), self._server
        )
        self.transcripts = Transcripts(stores.meta)
        self.branching = Branching(stores.meta, self.transcripts, self.lifecycle)
        self.idempotency = Idempotency(stores.meta.idempotency)
        sessions_pb2_grpc.add_SessionServiceServicer_to_server(
            SessionServicer(
                self.sessions, self.lifecycle, self.branching, self.idempotency, self.metrics
            ),
            self._server,
        )
        transcripts_pb2_grpc.add_TranscriptServiceServicer_to_server(
            TranscriptServicer(self.transcripts, self.metrics), self._server
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
        try:
            # Fail fast on a wrong master key: the default tenant always
            # exists, and gets a data key here (with encryption on) that every
            # later start must be able to unwrap.
            await self.keyring.sealer(DEFAULT_TENANT)
        except (FailedPrecondition, DataLoss) as exc:
            raise StoreOpenError("master-key", exc) from exc
        token_key = await self.stores.meta.server_key("sandbox-token-hmac")
        self._auth.target = SandboxTokenAuth(
            token_key,
            self._base_auth,
            self.stores.meta.tenants,
            cache_seconds=self.config.auth_cache_seconds,
        )
        host, port = parse_listen(self.config.listen)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.port = self._bind(address)
        advertise = self.config.advertise_address or f"{_connect_host(host)}:{self.port}"
        self.lifecycle.configure(token_key=token_key, server_address=advertise)
        await self._monitor.check_once()
        if self.config.metrics_listen:
            self._serve_metrics(self.config.metrics_listen)
        await self._server.start()
        self._monitor.start()
        self.reaper.start()
        log.info(
            "sessiond listening on %s:%d (replica %s, sandboxes: %s, encryption at rest: %s)",
            host,
            self.port,
            self.replica_id,
            self.provider.name,
            f"on, master key {self.master_key.key_id}"
            if self.master_key is not None and self.config.encryption
            else "off",
        )
        return self.port

    def _bind(self, address: str) -> int:
        """Add the listening port: TLS (client certificates required when a
        client CA is configured) or plaintext. RuntimeError if it cannot
        be bound."""
        tls = self.config.tls
        if tls is None:
            return int(self._server.add_insecure_port(address))
        creds = grpc.ssl_server_credentials(
            [(tls.private_key, tls.cert_chain)],
            root_certificates=tls.client_ca,
            require_client_auth=tls.client_ca is not None,
        )
        return int(self._server.add_secure_port(address, creds))

    def _serve_metrics(self, listen: str) -> None:
        host, port = parse_listen(listen, "--metrics-listen")
        try:
            self.metrics_endpoint = self.metrics.serve(host, port)
        except OSError as exc:
            raise Unavailable(f"--metrics-listen {listen}: {exc.strerror or exc}") from exc
        log.info("metrics on http://%s:%d/metrics", host, self.metrics_endpoint.port)

    async def wait(self) -> None:
        await self._server.wait_for_termination()

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting RPCs, let in-flight ones finish within ``grace``
        seconds, then close the stores."""
        await self.reaper.stop()
        await self._monitor.stop()
        await self._server.stop(self.config.drain_seconds if grace is None else grace)
        await self.idempotency.close(grace=10.0)
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()
            self.metrics_endpoint = None
        await self.provider.close()
        await self.stores.close()


class _DeferredAuth:
    """The interceptor's authenticator, whose target is set at start (the
    sandbox-token key lives in the database)."""

    def __init__(self, target: Authenticator) -> None:
        self.target = target

    async def authenticate(self, metadata: Metadata, method: str) -> Identity:
        return await self.target.authenticate(metadata, method)


def master_key_of(config: ServerConfig) -> MasterKey | None:
    """The configured master key; without one, the embedded default in the
    data dir — generated on first start when encryption is on, read if it
    exists when off. ``InvalidArgument`` for a malformed or unreadable key."""
    if config.master_key is not None:
        return MasterKey.from_bytes(config.master_key)
    path = ServerConfig.default_master_key_file(config.data_dir)
    if not config.encryption:
        return read_master_key_file(path) if path.exists() else None
    key, created = load_or_create_master_key(path)
    if created:
        log.warning(
            "generated master key %s in %s (mode 0600): back it up and give every replica"
            " the same key; without it no encrypted data can be read",
            key.key_id,
            path.resolve(),
        )
    return key


def _connect_host(host: str) -> str:
    """An address sandboxes on this host can dial for a listen host."""
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
