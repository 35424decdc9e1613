"""``sessiond gc`` and ``sessiond check``: maintenance straight on the stores.

    sessiond gc [--grace SECONDS] [--dry-run] [--wait] [--json]
    sessiond check [--read-data] [--json]

Both take the stores as ``serve`` does (``--database-url``/``--data-dir``,
``--blob-url``) and the master key (``--master-key-file`` or
``$SESSIOND_MASTER_KEY``; default: ``<data dir>/master.key`` if it exists),
which they need to read sealed trees. Neither needs a running server.

Exit codes: ``gc`` 0 done (or another GC is running and ``--wait`` was not
given), 1 failed or left errors; ``check`` 0 clean, 1 damage found, 3 the
check could not run to the end; 2 for bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sessiond.client.errors import InvalidArgument, SessiondError

from ..config import ServerConfig
from ..core.check import Checker, CheckReport
from ..core.gc import DEFAULT_GRACE, GarbageCollector, GcBusy, GcReport
from ..core.keyring import Keyring
from ..core.sealing import MasterKey, read_master_key_file
from ..core.workspace import Workspaces
from ..storage.blob import BlobStore
from ..storage.blob_url import open_blob_store
from ..storage.metadata import MetadataStore
from ..storage.metadata_url import open_metadata_store
from .options import (
    ENV_MASTER_KEY,
    add_blob_url_flag,
    add_store_flags,
    blob_url,
    database_url,
    given_master_key,
)

WAIT_POLL_SECONDS = 5.0


def add_parsers(sub: Any) -> None:
    gc: argparse.ArgumentParser = sub.add_parser(
        "gc",
        help="apply retention and collect unreferenced workspace data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _store_flags(gc)
    gc.add_argument(
        "--grace",
        type=float,
        default=DEFAULT_GRACE,
        metavar="SECONDS",
        help="data younger than this is never marked, and marked data is deleted only this"
        " long after it was marked; must exceed the longest snapshot upload (default %(default)s)",
    )
    gc.add_argument("--dry-run", action="store_true", help="count, change nothing")
    gc.add_argument(
        "--wait", action="store_true", help="if another GC is running, wait for it to finish"
    )
    gc.add_argument("--json", action="store_true", help="print the report as JSON")
    gc.set_defaults(run=_run_gc)

    check: argparse.ArgumentParser = sub.add_parser(
        "check",
        help="verify that every committed snapshot's data is stored intact",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _store_flags(check)
    check.add_argument(
        "--read-data",
        action="store_true",
        help="also read and re-hash every reachable chunk (reads all stored data)",
    )
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(run=_run_check)


def _store_flags(p: argparse.ArgumentParser) -> None:
    add_store_flags(p)
    add_blob_url_flag(p)
    p.add_argument(
        "--master-key-file",
        default=os.environ.get("SESSIOND_MASTER_KEY_FILE", ""),
        metavar="PATH",
        help=f"the servers' master key (or ${ENV_MASTER_KEY}); default <data dir>/master.key",
    )


@dataclass
class _Stores:
    meta: MetadataStore
    blobs: BlobStore
    workspaces: Workspaces

    async def close(self) -> None:
        await self.blobs.close()
        await self.meta.close()


def _master_key(args: argparse.Namespace) -> MasterKey | None:
    given = given_master_key(args)
    if given is not None:
        return given
    path = ServerConfig.default_master_key_file(Path(args.data_dir))
    return read_master_key_file(path) if path.exists() else None


async def _open(args: argparse.Namespace) -> _Stores:
    master = _master_key(args)
    meta = await open_metadata_store(database_url(args))
    try:
        blobs = await open_blob_store(blob_url(args), data_dir=Path(args.data_dir))
        await blobs.ping()
    except BaseException:
        await meta.close()
        raise
    # Read-only use: never creates a data key (encrypt=False).
    keyring = Keyring(meta.tenants, master, encrypt=False)
    return _Stores(meta, blobs, Workspaces(meta, blobs, keyring=keyring))


def _fail(exc: SessiondError) -> int:
    print(f"sessiond: error: {exc}", file=sys.stderr)
    return 2 if isinstance(exc, InvalidArgument) else 1


# -- gc -------------------------------------------------------------------------


def _run_gc(args: argparse.Namespace) -> int:
    if not 0 <= args.grace <= 366 * 86400:
        print("sessiond: error: --grace must be between 0 and one year", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_gc(args))
    except SessiondError as exc:
        return _fail(exc)


async def _gc(args: argparse.Namespace) -> int:
    stores = await _open(args)
    owner = f"gc@{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
    try:
        while True:
            collector = GarbageCollector(
                stores.meta,
                stores.blobs,
                stores.workspaces,
                args.grace,
                owner,
                dry_run=args.dry_run,
            )
            try:
                report = await collector.run()
                break
            except GcBusy as exc:
                if not args.wait:
                    print(f"sessiond gc: {exc}; not starting another", file=sys.stderr)
                    return 0
                await asyncio.sleep(WAIT_POLL_SECONDS)
    finally:
        await stores.close()
    _print_gc(report, args.json)
    return 1 if report.errors else 0


def _print_gc(report: GcReport, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
        return
    verb = "would" if report.dry_run else "did"
    print(f"gc ({verb}, {report.tenants} tenants, {report.seconds:.1f} s):")
    for name, value in report.to_dict().items():
        if name not in ("dry_run", "tenants", "seconds", "errors"):
            print(f"  {name.replace('_', ' ')}: {value}")
    for line in report.errors:
        print(f"  error: {line}")


# -- check ----------------------------------------------------------------------


def _run_check(args: argparse.Namespace) -> int:
    try:
        report = asyncio.run(_check(args))
    except InvalidArgument as exc:
        return _fail(exc)
    except SessiondError as exc:
        print(f"sessiond check: could not finish: {exc}", file=sys.stderr)
        return 3
    _print_check(report, args.json)
    return 0 if report.ok else 1


async def _check(args: argparse.Namespace) -> CheckReport:
    stores = await _open(args)
    try:
        return await Checker(stores.meta, stores.blobs, stores.workspaces).run(args.read_data)
    finally:
        await stores.close()


def _print_check(report: CheckReport, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
        return
    read = f", {report.bytes_read} bytes read and re-hashed" if report.read_data else ""
    print(
        f"checked {report.tenants} tenants: {report.manifests} manifests, {report.trees} trees,"
        f" {report.chunks} chunks in {report.packs} packs{read} ({report.seconds:.1f} s)"
    )
    o = report.orphans
    print(
        f"orphans (garbage, not damage): {o.pack_objects} pack objects and"
        f" {o.manifest_objects} manifest objects without rows, {o.chunk_rows} unreferenced"
        f" chunks, {o.pack_rows} empty packs, {o.manifest_rows} uncommitted manifests,"
        f" {o.marked_chunks} chunks marked by GC"
    )
    if report.ok:
        print("no damage found")
        return
    print(f"DAMAGE: {len(report.damage)} problems")
    for d in report.damage:
        print(f"  {d.line()}")
