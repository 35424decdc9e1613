"""``sessiond serve``: run the server.

With no flags it runs the embedded default: SQLite metadata and a local blob
directory under ``./.sessiond`` (or ``$SESSIOND_DATA_DIR``), auth off,
listening on 127.0.0.1:50051, stored data encrypted under a master key
generated into ``<data dir>/master.key``. Every flag has an environment
variable; the master key itself can be given as ``$SESSIOND_MASTER_KEY``
(base64 or hex of 32 bytes), which keeps it off the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from sessiond.client.errors import InvalidArgument, SessiondError

from .. import logformat
from ..config import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_LISTEN,
    ServerConfig,
    TlsConfig,
    is_loopback,
    parse_listen,
)
from ..core.sandbox_env import parse_allowlist
from .options import ENV_MASTER_KEY, add_blob_url_flag, add_store_flags, given_master_key

log = logging.getLogger("sessiond.server")

# Where a problem with each store is reported (StoreOpenError.store → flag).
_STORE_FLAGS = {
    "database": "--database-url",
    "blobs": "--blob-url",
    "master-key": "--master-key-file",
}


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "serve", help="run the sessiond server", description=__doc__
    )
    env = os.environ.get
    p.add_argument(
        "--listen",
        default=env("SESSIOND_LISTEN", DEFAULT_LISTEN),
        help="HOST:PORT to listen on (env SESSIOND_LISTEN; default %(default)s)",
    )
    add_store_flags(p)
    add_blob_url_flag(p)
    p.add_argument(
        "--auth",
        default=env("SESSIOND_AUTH", "none"),
        choices=["none", "api-key"],
        help="'none': every caller is the default tenant (loopback only); 'api-key': "
        "tenant API keys as bearer tokens (env SESSIOND_AUTH; default %(default)s)",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=float(env("SESSIOND_IDLE_TIMEOUT", str(DEFAULT_IDLE_TIMEOUT))),
        help="seconds of inactivity before a session is suspended (default %(default)s)",
    )
    p.add_argument(
        "--sandbox-provider",
        default=env("SESSIOND_SANDBOX_PROVIDER", "local"),
        help="local | docker[:IMAGE] | e2b://?template=…  (env SESSIOND_SANDBOX_PROVIDER; "
        "default %(default)s)",
    )
    p.add_argument(
        "--advertise-address",
        default=env("SESSIOND_ADVERTISE_ADDRESS", ""),
        help="gRPC target sandboxes use to reach this server; may list every replica, "
        "e.g. ipv4:10.0.0.1:50051,10.0.0.2:50051 (default: the listen address)",
    )
    p.add_argument(
        "--lease-ttl",
        type=float,
        default=float(env("SESSIOND_LEASE_TTL", "30")),
        help="seconds before a dead replica's sessions may be taken over (default %(default)s)",
    )
    p.add_argument(
        "--env-allowlist",
        default=env("SESSIOND_ENV_ALLOWLIST", "ANTHROPIC_*,CLAUDE_CODE_*"),
        help="comma-separated globs of server environment variables passed into sandboxes "
        "(default %(default)s)",
    )
    p.add_argument(
        "--drain-seconds",
        type=float,
        default=float(env("SESSIOND_DRAIN_SECONDS", "30")),
        help="grace period for in-flight RPCs on SIGTERM (default %(default)s)",
    )
    p.add_argument(
        "--encryption",
        default=env("SESSIOND_ENCRYPTION", "on"),
        choices=["on", "off"],
        help="seal stored chunks and manifests with per-tenant keys; 'off' stores new data"
        " as-is, data sealed earlier stays readable (env SESSIOND_ENCRYPTION; default %(default)s)",
    )
    p.add_argument(
        "--master-key-file",
        default=env("SESSIOND_MASTER_KEY_FILE", ""),
        metavar="PATH",
        help="file holding the master key (base64 or hex of 32 bytes, or the raw bytes)"
        f" that wraps tenants' data keys; or set ${ENV_MASTER_KEY} to the key itself"
        " (env SESSIOND_MASTER_KEY_FILE; default: <data dir>/master.key, generated on first"
        " start — every replica needs the same key)",
    )
    p.add_argument(
        "--log-level",
        default=env("SESSIOND_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
    )
    p.add_argument(
        "--log-format",
        default=env("SESSIOND_LOG_FORMAT", "text"),
        choices=list(logformat.FORMATS),
        help="'text' lines or 'json' objects (ts, level, logger, msg and each RPC's fields)"
        " on stderr (env SESSIOND_LOG_FORMAT; default %(default)s)",
    )
    p.add_argument(
        "--tls-cert",
        default=env("SESSIOND_TLS_CERT", ""),
        metavar="PEM",
        help="serve TLS with this certificate chain (env SESSIOND_TLS_CERT; needs --tls-key)",
    )
    p.add_argument(
        "--tls-key",
        default=env("SESSIOND_TLS_KEY", ""),
        metavar="PEM",
        help="private key of --tls-cert (env SESSIOND_TLS_KEY)",
    )
    p.add_argument(
        "--tls-client-ca",
        default=env("SESSIOND_TLS_CLIENT_CA", ""),
        metavar="PEM",
        help="require client certificates signed by these CAs: mTLS (env SESSIOND_TLS_CLIENT_CA;"
        " needs --tls-cert). Sandboxes reach the server with tokens, not certificates: a"
        " managed sandbox provider cannot call back through an mTLS listener",
    )
    p.add_argument(
        "--metrics-listen",
        default=env("SESSIOND_METRICS_LISTEN", ""),
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (env SESSIOND_METRICS_LISTEN;"
        " default: off)",
    )
    p.add_argument(
        "--auth-cache-seconds",
        type=float,
        default=float(env("SESSIOND_AUTH_CACHE_SECONDS", "5")),
        help="seconds a verified API key is trusted without a database lookup; a revoked key"
        " keeps working on a replica for up to this long (0: no cache; env"
        " SESSIOND_AUTH_CACHE_SECONDS; default %(default)s)",
    )
    p.set_defaults(run=run)


def _config(args: argparse.Namespace) -> ServerConfig:
    data_dir = Path(args.data_dir)
    db_default, blob_default = ServerConfig.embedded(data_dir)
    host, _ = parse_listen(args.listen)
    if args.idle_timeout <= 0:
        raise InvalidArgument("--idle-timeout must be positive")
    if args.lease_ttl <= 0:
        raise InvalidArgument("--lease-ttl must be positive")
    if args.auth == "none" and not is_loopback(host):
        raise InvalidArgument(
            f"--listen {args.listen}: with --auth none sessiond only listens on loopback;"
            " use --auth api-key"
        )
    if args.metrics_listen:
        parse_listen(args.metrics_listen, "--metrics-listen")
    if args.auth_cache_seconds < 0:
        raise InvalidArgument("--auth-cache-seconds must not be negative")
    return ServerConfig(
        data_dir=data_dir,
        database_url=args.database_url or db_default,
        blob_url=args.blob_url or blob_default,
        listen=args.listen,
        auth=args.auth,
        idle_timeout=args.idle_timeout,
        drain_seconds=args.drain_seconds,
        sandbox_provider=args.sandbox_provider,
        advertise_address=args.advertise_address,
        lease_ttl=args.lease_ttl,
        env_allowlist=parse_allowlist(args.env_allowlist),
        encryption=args.encryption == "on",
        tls=_tls(args),
        metrics_listen=args.metrics_listen,
        auth_cache_seconds=args.auth_cache_seconds,
    )


def _tls(args: argparse.Namespace) -> TlsConfig | None:
    """The listener's TLS material from the flags (read here, at the edge);
    ``InvalidArgument`` naming the flag for a missing pair or a file that
    cannot be read or holds no PEM."""
    if not args.tls_cert and not args.tls_key:
        if args.tls_client_ca:
            raise InvalidArgument("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not args.tls_cert or not args.tls_key:
        missing = "--tls-key" if args.tls_cert else "--tls-cert"
        raise InvalidArgument(f"{missing} is required with TLS (give --tls-cert and --tls-key)")
    return TlsConfig(
        cert_chain=_pem("--tls-cert", args.tls_cert),
        private_key=_pem("--tls-key", args.tls_key),
        client_ca=_pem("--tls-client-ca", args.tls_client_ca) if args.tls_client_ca else None,
    )


def _pem(flag: str, path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"{flag} {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise InvalidArgument(f"{flag} {path}: not a PEM file")
    return data


def run(args: argparse.Namespace) -> int:
    logformat.configure(args.log_level, args.log_format, sys.stderr)
    try:
        config = _config(args)
        given = given_master_key(args)  # None: the embedded default, left to the server
        config = dataclasses.replace(config, master_key=given.key if given else None)
        if not args.database_url or not args.blob_url:
            config.data_dir.mkdir(parents=True, exist_ok=True)
    except (InvalidArgument, OSError) as exc:
        print(f"sessiond: error: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(config, args))
    except KeyboardInterrupt:
        return 0


async def _serve(config: ServerConfig, args: argparse.Namespace) -> int:
    from ..app import SessiondServer, StoreOpenError, Stores, master_key_of
    from ..auth import AnonymousAuth, ApiKeyAuth
    from ..storage.metadata import DEFAULT_TENANT

    try:
        stores = await Stores.open(config)
    except StoreOpenError as exc:
        print(f"sessiond: error: {_STORE_FLAGS[exc.store]}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc.cause, InvalidArgument) else 1

    authenticator = (
        ApiKeyAuth(stores.meta, config.auth_cache_seconds)
        if config.auth == "api-key"
        else AnonymousAuth(DEFAULT_TENANT)
    )
    try:
        master = master_key_of(config)
    except InvalidArgument as exc:
        await stores.close()
        print(f"sessiond: error: --master-key-file: {exc}", file=sys.stderr)
        return 2
    if master is not None and config.master_key is None:
        config = dataclasses.replace(config, master_key=master.key)
    explicit_key = args.master_key_file or os.environ.get(ENV_MASTER_KEY)
    if config.encryption and args.database_url and not explicit_key:
        log.warning(
            "encryption at rest uses the master key in %s; replicas sharing this"
            " database need the same key (--master-key-file or $%s)",
            ServerConfig.default_master_key_file(config.data_dir),
            ENV_MASTER_KEY,
        )
    try:
        server = SessiondServer(config, stores, authenticator)
    except SessiondError as exc:
        await stores.close()
        print(f"sessiond: error: --sandbox-provider: {exc}", file=sys.stderr)
        return 2
    try:
        port = await server.start()
    except StoreOpenError as exc:
        await stores.close()
        print(f"sessiond: error: {_STORE_FLAGS[exc.store]}: {exc}", file=sys.stderr)
        return 1
    except (SessiondError, RuntimeError) as exc:
        await stores.close()
        print(f"sessiond: error: cannot start on {config.listen}: {exc}", file=sys.stderr)
        return 1
    embedded = not args.database_url and not args.blob_url
    log.info(
        "sessiond ready on port %d (%s); %s",
        port,
        f"embedded default in {config.data_dir.resolve()}" if embedded else "external stores",
        "auth: tenant API keys"
        if config.auth == "api-key"
        else "auth is OFF (every caller is tenant 'default'): loopback only",
    )
    if config.tls is not None:
        log.info("TLS on%s", " (client certificates required)" if config.tls.client_ca else "")
    elif not is_loopback(parse_listen(config.listen)[0]):
        log.warning(
            "listening beyond loopback without TLS: API keys travel in plaintext;"
            " use --tls-cert/--tls-key"
        )

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    log.info("shutting down: draining in-flight RPCs (up to %.0fs)", config.drain_seconds)
    await server.stop()
    log.info("stopped")
    return 0
