"""Flags shared by several subcommands (each with its environment variable)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from sessiond.client.errors import InvalidArgument

from ..config import ServerConfig
from ..core.sealing import MasterKey, read_master_key_file

ENV_MASTER_KEY = "SESSIOND_MASTER_KEY"


def add_store_flags(p: argparse.ArgumentParser) -> None:
    env = os.environ.get
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


def database_url(args: argparse.Namespace) -> str:
    if args.database_url:
        return str(args.database_url)
    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    return ServerConfig.embedded(data_dir)[0]


def add_blob_url_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--blob-url",
        default=os.environ.get("SESSIOND_BLOB_URL", ""),
        help="s3://bucket/prefix?endpoint=…&region=… or file:///dir (env SESSIOND_BLOB_URL;"
        " default: the blob directory in the data dir)",
    )


def blob_url(args: argparse.Namespace) -> str:
    """``--blob-url``, else the embedded blob directory of ``--data-dir``."""
    return str(args.blob_url or ServerConfig.embedded(Path(args.data_dir))[1])


def given_master_key(args: argparse.Namespace) -> MasterKey | None:
    """The master key from ``--master-key-file`` or ``$SESSIOND_MASTER_KEY``
    (never both); None when neither is given. ``InvalidArgument`` naming the
    flag or variable, never the key."""
    text = os.environ.get(ENV_MASTER_KEY, "")
    if args.master_key_file and text:
        raise InvalidArgument(f"--master-key-file and ${ENV_MASTER_KEY} are both set: give one")
    if args.master_key_file:
        try:
            return read_master_key_file(Path(args.master_key_file))
        except InvalidArgument as exc:
            raise InvalidArgument(f"--master-key-file {exc}") from None
    if text:
        try:
            return MasterKey.parse(text)
        except InvalidArgument as exc:
            raise InvalidArgument(f"${ENV_MASTER_KEY}: {exc}") from None
    return None
