"""``sessiond admin``: tenants and API keys, straight on the metadata store.

    sessiond admin tenants create ID [--name NAME]   prints the first API key
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
from typing import Any

from sessiond.client.errors import SessiondError

from ..core.tenants import Tenants
from ..storage.metadata_url import open_metadata_store
from .options import add_store_flags, database_url


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


def _run(action: Action) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        async def go() -> None:
            meta = await open_metadata_store(database_url(args))
            try:
                await action(Tenants(meta), args)
            finally:
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
