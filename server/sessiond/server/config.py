"""Server configuration: parsed only at the edge (the CLI), passed explicitly."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from sessiond.client.errors import InvalidArgument

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_IDLE_TIMEOUT = 900.0
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20
MASTER_KEY_FILE = "master.key"


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """PEM material of the listener (read by the CLI, never paths here)."""

    cert_chain: bytes
    private_key: bytes
    # When set, clients must present a certificate signed by one of these
    # CAs (mTLS); API keys are still required on top with --auth api-key.
    client_ca: bytes | None = None


@dataclass(frozen=True, slots=True)
class ServerConfig:
    data_dir: Path
    database_url: str
    blob_url: str
    listen: str = DEFAULT_LISTEN
    # "none" (embedded default, loopback only) or "api-key".
    auth: str = "none"
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    # Seconds in-flight RPCs get to finish after SIGTERM.
    drain_seconds: float = 30.0
    # Seconds between health probes of the stores.
    health_interval: float = 2.0
    # "local", "docker[:IMAGE]" or "e2b://?…" (see sandboxes/registry.py).
    sandbox_provider: str = "local"
    # gRPC target sandboxes use to reach the server; "" = the bound address.
    # May list several replicas: "ipv4:10.0.0.1:50051,10.0.0.2:50051".
    advertise_address: str = ""
    # Seconds a session lease lasts without renewal (a dead replica's
    # sessions are taken over after this).
    lease_ttl: float = 30.0
    # Glob patterns of server environment variables passed into sandboxes.
    env_allowlist: tuple[str, ...] = ("ANTHROPIC_*", "CLAUDE_CODE_*")
    # TLS on the gRPC listener; None = plaintext.
    tls: TlsConfig | None = None
    # HOST:PORT of the Prometheus endpoint; "" = no endpoint.
    metrics_listen: str = ""
    # Seconds a verified API key is trusted without a database lookup: a
    # revoked key keeps working on a replica for up to this long.
    auth_cache_seconds: float = 5.0
    # Seal stored chunks and manifests with per-tenant data keys. Off: new
    # objects are stored as-is (objects sealed earlier stay readable while
    # a master key is available).
    encryption: bool = True
    # The master key's 32 bytes (never logged: repr=False). None: the
    # embedded default, <data_dir>/master.key, generated on first start
    # (with encryption off it is read if present, never generated).
    master_key: bytes | None = field(default=None, repr=False)
    extra: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def embedded(data_dir: Path) -> tuple[str, str]:
        """The embedded default's database and blob URLs under ``data_dir``."""
        root = data_dir.resolve()
        return f"sqlite:///{root / 'metadata.db'}", f"file://{root / 'blobs'}"

    @staticmethod
    def default_master_key_file(data_dir: Path) -> Path:
        return data_dir / MASTER_KEY_FILE


def parse_listen(value: str, flag: str = "--listen") -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) → (host, port); InvalidArgument
    naming the flag otherwise."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise InvalidArgument(f"{flag} {value!r}: expected HOST:PORT")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise InvalidArgument(f"{flag} {value!r}: port out of range")
    return host.strip("[]"), port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
