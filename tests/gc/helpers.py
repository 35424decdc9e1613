"""Helpers for the GC and check tests: workspaces written, snapshotted through
the real hydrator and restored back, GC and check run in-process against the
server's own stores, and the few backdoors a test needs (backdating a row,
overwriting a stored object behind sessiond's back)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sessiond.client import AsyncClient
from sessiond.client import workspace_format as fmt
from sessiond.hydrator.remote import WorkspaceRemote
from sessiond.hydrator.restore import restore
from sessiond.hydrator.snapshot import snapshot
from sessiond.server.core.check import Checker, CheckReport
from sessiond.server.core.gc import GarbageCollector, GcReport
from tests.fixtures.server import RunningServer


@dataclass
class Session:
    client: AsyncClient
    remote: WorkspaceRemote
    session_id: str
    cwd: Path
    chunk_key: bytes


async def new_session(server: RunningServer, client: AsyncClient, tmp: Path, name: str) -> Session:
    created = await client.create_session()
    remote = WorkspaceRemote(client, created.session_id)
    cwd = tmp / name
    cwd.mkdir(parents=True)
    ws = await remote.workspace()
    return Session(client, remote, created.session_id, cwd, bytes(ws.chunk_key))


def write(cwd: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = cwd / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


async def snap(session: Session, files: dict[str, bytes] | None = None) -> str:
    if files:
        write(session.cwd, files)
    return str((await snapshot(session.remote, session.cwd)).snapshot_id)


async def restored(
    session: Session, dest: Path, snapshot_id: str | None = None
) -> dict[str, bytes]:
    """Restore into a fresh ``dest``; the files found there (state dir excluded)."""
    await restore(session.remote, dest, snapshot_id=snapshot_id)
    out: dict[str, bytes] = {}
    for root, dirs, names in os.walk(dest):
        dirs[:] = [d for d in dirs if d != ".sessiond"]
        for n in names:
            p = Path(root) / n
            out[str(p.relative_to(dest))] = p.read_bytes()
    return out


def chunk_id(session: Session, data: bytes) -> bytes:
    """The chunk id of a file small enough to be one chunk."""
    return fmt.chunk_id(session.chunk_key, data)


def collector(
    server: RunningServer, grace: float = 0.0, owner: str = "gc-test", **kw: Any
) -> GarbageCollector:
    s = server.server
    return GarbageCollector(s.stores.meta, s.stores.blobs, s.workspaces, grace, owner, **kw)


async def gc(server: RunningServer, grace: float = 0.0, **kw: Any) -> GcReport:
    report = await collector(server, grace, **kw).run()
    assert not report.errors, report.errors
    return report


async def check(server: RunningServer, read_data: bool = True) -> CheckReport:
    s = server.server
    return await Checker(s.stores.meta, s.stores.blobs, s.workspaces).run(read_data)


async def backdate(server: RunningServer, tenant: str, session_id: str, days: int) -> None:
    """Move a session's ``updated_at`` ``days`` into the past (no API does)."""
    meta = server.meta
    if hasattr(meta, "_pool"):
        async with meta._pool.acquire() as conn:
            await conn.execute(
                "UPDATE sessions SET updated_at = updated_at - make_interval(days => $3)"
                " WHERE tenant_id = $1 AND session_id = $2",
                tenant,
                session_id,
                days,
            )
        return

    def tx(conn: Any) -> None:
        conn.execute(
            "UPDATE sessions SET updated_at = updated_at - ?"
            " WHERE tenant_id = ? AND session_id = ?",
            (days * 86_400_000_000, tenant, session_id),
        )

    await meta._db.call("backdate", tx)


async def corrupt(server: RunningServer, blob_key: str, offset: int) -> None:
    """Flip one byte of a stored object, as a disk or a bucket might."""
    blobs = server.server.stores.blobs
    data = bytearray(await blobs.get(blob_key))
    data[offset] ^= 0xFF
    await blobs.put(blob_key, bytes(data))
