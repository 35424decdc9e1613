"""Flags shared by several subcommands (each with its environment variable)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..config import ServerConfig


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
