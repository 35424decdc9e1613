"""The ``sessiond`` command line.

``sessiond serve`` runs the server (needs the ``server`` extra); the other
subcommands talk to a running server over gRPC.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import client, serve


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sessiond",
        description="Session persistence and resumption for Claude Agent SDK agents.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve.add_parser(sub)
    client.add_parsers(sub)
    _add_admin(sub)
    _add_maintenance(sub)
    return parser


def _add_admin(sub: object) -> None:
    # admin talks to the database directly and needs the server extra.
    try:
        from . import admin
    except ImportError:
        return
    admin.add_parser(sub)


def _add_maintenance(sub: object) -> None:
    # gc and check work on the stores directly and need the server extra.
    try:
        from . import maintenance
    except ImportError:
        return
    maintenance.add_parsers(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    status: int = args.run(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
