"""``sessiond admin``: tenants and API keys, straight on the metadata store.

    sessiond admin tenants create ID [--name NAME]   prints the first API key
    sessiond admin tenants rm ID [--blob-url URL]    crypto-shreds, then deletes everything
    sessiond admin tenants set ID [--keep-last N] [--expire-suspended-days D]
                                         retention, applied by `sessiond gc` (0: no limit)
    sessiond admin keys create TENANT [--expires-in SECONDS]
    sessiond admin keys ls TENANT
    sessiond admin keys revoke TENANT KEY_ID

Tokens are printed once and never stored; only their hash is.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sessiond.client.errors import SessiondError

from ..core.tenants import Tenants
from ..storage.blob import BlobStore
from ..storage.blob_url import open_blob_store
from ..storage.metadata_url import open_metadata_store
from .options import add_blob_url_flag, add_store_flags, blob_url, database_url


def add_parser(sub: Any) -> None:
    admin: argparse.ArgumentParser = sub.add_parser(
        "admin",
        help="manage tenants and API keys",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_store_flags(admin)
    groups = admin.add_subparsers(dest="group", required=True, metavar="GROUP")

    tenants = groups.add_parser("tenants", help="tenants")
    tsub = tenants.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = tsub.add_parser("create", help="create a tenant and print its first API key")
    create.add_argument("tenant_id")
    create.add_argument("--name", default="")
    create.set_defaults(run=_run(_tenant_create))
    rm = tsub.add_parser(
        "rm",
        help="delete a tenant: destroy its data key (its stored data is unreadable from then"
        " on), then its objects and rows; re-run to finish an interrupted deletion",
    )
    rm.add_argument("tenant_id")
    add_blob_url_flag(rm)
    rm.set_defaults(run=_run(_tenant_rm, blobs=True))
    tset = tsub.add_parser(
        "set",
        help="set a tenant's retention (applied by `sessiond gc`) and quotas; 0 removes a limit",
    )
    tset.add_argument("tenant_id")
    tset.add_argument(
        "--keep-last",
        type=int,
        default=None,
        metavar="N",
        help="keep the newest N snapshots of each session (its latest always stays)",
    )
    tset.add_argument(
        "--expire-suspended-days",
        type=int,
        default=None,
        metavar="D",
        help="delete sessions that stayed suspended for D days",
    )
    tset.add_argument(
        "--quota-bytes", type=int, default=None, metavar="N", help="stored bytes quota"
    )
    tset.add_argument(
        "--quota-sessions", type=int, default=None, metavar="N", help="live sessions quota"
    )
    tset.set_defaults(run=_run(_tenant_set))

    keys = groups.add_parser("keys", help="API keys")
    ksub = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    kcreate = ksub.add_parser("create", help="issue another API key")
    kcreate.add_argument("tenant_id")
    kcreate.add_argument("--expires-in", type=float, default=None, metavar="SECONDS")
    kcreate.set_defaults(run=_run(_key_create))
    kls = ksub.add_parser("ls", help="list a tenant's keys")
    kls.add_argument("tenant_id")
    kls.set_defaults(run=_run(_key_list))
    krevoke = ksub.add_parser("revoke", help="revoke a key")
    krevoke.add_argument("tenant_id")
    krevoke.add_argument("key_id")
    krevoke.set_defaults(run=_run(_key_revoke))


Action = Callable[[Tenants, argparse.Namespace], Awaitable[None]]


def _run(action: Action, *, blobs: bool = False) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        async def go() -> None:
            meta = await open_metadata_store(database_url(args))
            store: BlobStore | None = None
            try:
                if blobs:
                    store = await open_blob_store(blob_url(args), data_dir=Path(args.data_dir))
                await action(Tenants(meta, store), args)
            finally:
                if store is not None:
                    await store.close()
                await meta.close()

        try:
            asyncio.run(go())
        except SessiondError as exc:
            print(f"sessiond: error: {exc}", file=sys.stderr)
            return 1
        return 0

    return run


async def _tenant_create(tenants: Tenants, args: argparse.Namespace) -> None:
    tenant, key = await tenants.create(args.tenant_id, args.name)
    print(f"tenant  {tenant.tenant_id}")
    print(f"key_id  {key.record.key_id}")
    print(f"api_key {key.token}")


async def _tenant_rm(tenants: Tenants, args: argparse.Namespace) -> None:
    done = await tenants.delete(args.tenant_id)
    print(f"deleted tenant {done.tenant_id} ({done.objects} objects, {done.bytes} bytes)")


async def _tenant_set(tenants: Tenants, args: argparse.Namespace) -> None:
    if args.quota_bytes is not None or args.quota_sessions is not None:
        u = await tenants.set_quota(
            args.tenant_id, quota_bytes=args.quota_bytes, quota_sessions=args.quota_sessions
        )
        print(
            f"tenant {args.tenant_id}: {u.stored_bytes} of {u.quota_bytes or 'unlimited'} bytes,"
            f" {u.live_sessions} of {u.quota_sessions or 'unlimited'} sessions"
        )
    r = await tenants.set_retention(
        args.tenant_id,
        keep_last_snapshots=args.keep_last,
        expire_suspended_days=args.expire_suspended_days,
    )
    keep = r.keep_last_snapshots or "all"
    days = r.expire_suspended_days or "never"
    print(f"tenant {r.tenant_id}: keep last {keep} snapshots, expire suspended after {days} days")


async def _key_create(tenants: Tenants, args: argparse.Namespace) -> None:
    expires = None if args.expires_in is None else timedelta(seconds=args.expires_in)
    key = await tenants.issue_key(args.tenant_id, expires)
    print(f"key_id  {key.record.key_id}")
    print(f"api_key {key.token}")


async def _key_list(tenants: Tenants, args: argparse.Namespace) -> None:
    for rec in await tenants.keys(args.tenant_id):
        status = "revoked" if rec.revoked_at else "active"
        expires = rec.expires_at.isoformat() if rec.expires_at else "never"
        print(f"{rec.key_id}  {status:8} created {rec.created_at.isoformat()} expires {expires}")


async def _key_revoke(tenants: Tenants, args: argparse.Namespace) -> None:
    rec = await tenants.revoke_key(args.tenant_id, args.key_id)
    print(f"revoked {rec.key_id}")
