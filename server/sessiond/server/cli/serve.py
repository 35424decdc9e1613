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
    p.add_argument(
        "--data-dir",
        default=env("SESSIOND_DATA_DIR", ".sessiond"),
        help="directory of the embedded stores (env SESSIOND_DATA_DIR; default %(default)s)",
    )
    p.add_argument(
        "--database-url",
        default=env("SESSIOND_DATABASE_URL", ""),
        help="postgresql://… or sqlite:///… (env SESSIOND_DATABASE_URL; "
        "default: SQLite in the data dir)",
    )
    p.add_argument(
        "--blob-url",
        default=env("SESSIOND_BLOB_URL", ""),
        help="s3://bucket/prefix?endpoint=…&region=… or file:///dir (env SESSIOND_BLOB_URL; "
        "default: a directory in the data dir)",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=float(env("SESSIOND_IDLE_TIMEOUT", str(DEFAULT_IDLE_TIMEOUT))),
        help="seconds of inactivity before a session is suspended (default %(default)s)",
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
    if not is_loopback(host):
        # Auth arrives with tenants and API keys; until then refuse to expose
        # an unauthenticated server beyond this machine.
        raise InvalidArgument(
            f"--listen {args.listen}: auth is off, so sessiond only listens on loopback"
        )
    return ServerConfig(
        data_dir=data_dir,
        database_url=args.database_url or db_default,
        blob_url=args.blob_url or blob_default,
        listen=args.listen,
        idle_timeout=args.idle_timeout,
        drain_seconds=args.drain_seconds,
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

    try:
        stores = await Stores.open(config)
    except StoreOpenError as exc:
        flag = "--database-url" if exc.store == "database" else "--blob-url"
        print(f"sessiond: error: {flag}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc.cause, InvalidArgument) else 1

    server = SessiondServer(config, stores)
    try:
        port = await server.start()
    except (SessiondError, RuntimeError) as exc:
        await stores.close()
        print(f"sessiond: error: cannot start on {config.listen}: {exc}", file=sys.stderr)
        return 1
    embedded = not args.database_url and not args.blob_url
    log.info(
        "sessiond ready on port %d (%s); auth is off: loopback only",
        port,
        f"embedded default in {config.data_dir.resolve()}" if embedded else "external stores",
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
