"""``sessiond serve``: run the server.

With no flags it runs the embedded default: SQLite metadata and a local blob
directory under ``./.sessiond`` (or ``$SESSIOND_DATA_DIR``), auth off,
listening on 127.0.0.1:50051. Every flag has an environment variable.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from sessiond.client.errors import InvalidArgument, SessiondError

from ..config import DEFAULT_IDLE_TIMEOUT, DEFAULT_LISTEN, ServerConfig, is_loopback, parse_listen
from ..core.sandbox_env import parse_allowlist
from .options import add_store_flags

log = logging.getLogger("sessiond.server")


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
    p.add_argument(
        "--blob-url",
        default=env("SESSIOND_BLOB_URL", ""),
        help="s3://bucket/prefix?endpoint=…&region=… or file:///dir (env SESSIOND_BLOB_URL; "
        "default: a directory in the data dir)",
    )
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
        "--log-level",
        default=env("SESSIOND_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
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
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = _config(args)
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
    from ..app import SessiondServer, StoreOpenError, Stores
    from ..auth import AnonymousAuth, ApiKeyAuth
    from ..storage.metadata import DEFAULT_TENANT

    try:
        stores = await Stores.open(config)
    except StoreOpenError as exc:
        flag = "--database-url" if exc.store == "database" else "--blob-url"
        print(f"sessiond: error: {flag}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc.cause, InvalidArgument) else 1

    authenticator = (
        ApiKeyAuth(stores.meta) if config.auth == "api-key" else AnonymousAuth(DEFAULT_TENANT)
    )
    try:
        server = SessiondServer(config, stores, authenticator)
    except SessiondError as exc:
        await stores.close()
        print(f"sessiond: error: --sandbox-provider: {exc}", file=sys.stderr)
        return 2
    try:
        port = await server.start()
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

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    log.info("shutting down: draining in-flight RPCs (up to %.0fs)", config.drain_seconds)
    await server.stop()
    log.info("stopped")
    return 0
