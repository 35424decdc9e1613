"""``check``: a ``restic check``-style verifier of the workspace store.
Read-only (it writes only its own temporary reachable set); imports no grpc.

Per tenant:

* every manifest a snapshot references has a row and an object that opens
  (unsealed) to bytes whose keyed hash is the manifest id and that name the
  row's trees;
* every tree and chunk those manifests reach is indexed; every tree opens
  and parses; every pack holding a reachable chunk has its object, of the
  row's size, covering every chunk range;
* with ``read_data``, every reachable data chunk is read, unsealed,
  decompressed and re-hashed (keyed BLAKE3) as well.

Each problem is a :class:`Damage` naming the tenant, the object, its pack
and the snapshots that reach it. Orphans — pack and manifest objects without
a row, chunk rows no snapshot reaches, pack rows without chunks, manifest
rows without snapshots, marked chunks — are garbage for GC, counted but not
damage (uploads in flight produce them too).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from sessiond.client import workspace_format as fmt
from sessiond.client.errors import DataLoss, InvalidArgument, NotFound, SessiondError

from ..storage.blob import BlobStore
from ..storage.metadata import GcReach, MetadataStore
from ..storage.records import ChunkLocation, ManifestRecord, PackUsage
from .packs import manifest_key, pack_key
from .reachability import ReadFailure, read_each, walk
from .workspace import Workspaces

log = logging.getLogger(__name__)

PAGE = 500
#: Damage entries whose affected snapshots are looked up, per tenant.
MAX_NAMED = 200
#: Stored bytes read at once with ``read_data``.
WINDOW_BYTES = 16 << 20


@dataclass
class Damage:
    tenant_id: str
    # "manifest", "tree", "chunk" or "pack".
    kind: str
    # The manifest id, chunk id (hex) or pack id.
    object_id: str
    message: str
    pack_id: str = ""
    snapshots: list[str] = field(default_factory=list)

    def line(self) -> str:
        where = f" in pack {self.pack_id}" if self.pack_id and self.kind != "pack" else ""
        snaps = f"; snapshots: {', '.join(self.snapshots)}" if self.snapshots else ""
        return (
            f"tenant {self.tenant_id}: {self.kind} {self.object_id}{where}: {self.message}{snaps}"
        )


@dataclass
class Orphans:
    pack_objects: int = 0
    manifest_objects: int = 0
    chunk_rows: int = 0
    pack_rows: int = 0
    manifest_rows: int = 0
    marked_chunks: int = 0


@dataclass
class CheckReport:
    read_data: bool = False
    tenants: int = 0
    manifests: int = 0
    trees: int = 0
    chunks: int = 0
    packs: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    damage: list[Damage] = field(default_factory=list)
    orphans: Orphans = field(default_factory=Orphans)

    @property
    def ok(self) -> bool:
        return not self.damage

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


class Checker:
    def __init__(self, meta: MetadataStore, blobs: BlobStore, workspaces: Workspaces) -> None:
        self._meta = meta
        self._blobs = blobs
        self._ws = workspaces

    async def run(self, read_data: bool = False) -> CheckReport:
        """Check every tenant (not deleted). Damage is reported, never
        raised; errors reaching the stores (``Unavailable``) are raised."""
        started = time.monotonic()
        report = CheckReport(read_data=read_data)
        for settings in await self._meta.gc.retention():
            await _TenantCheck(self._meta, self._blobs, self._ws, settings.tenant_id, report).run()
            report.tenants += 1
        report.seconds = time.monotonic() - started
        log.info(
            "check done: tenants=%d manifests=%d trees=%d chunks=%d packs=%d damage=%d",
            report.tenants,
            report.manifests,
            report.trees,
            report.chunks,
            report.packs,
            len(report.damage),
        )
        return report


class _TenantCheck:
    def __init__(
        self,
        meta: MetadataStore,
        blobs: BlobStore,
        ws: Workspaces,
        tenant_id: str,
        report: CheckReport,
    ) -> None:
        self.meta, self.blobs, self.ws, self.tenant = meta, blobs, ws, tenant_id
        self.report = report
        self.found: list[Damage] = []
        # Damage entry → a chunk id it stands for (to name the snapshots).
        self.witness: dict[int, bytes] = {}

    def damage(
        self, kind: str, object_id: str, message: str, *, pack: str = "", chunk: bytes = b""
    ) -> None:
        self.found.append(Damage(self.tenant, kind, object_id, message, pack))
        if chunk:
            self.witness[len(self.found) - 1] = chunk

    async def run(self) -> None:
        key = (await self.meta.tenants.get(self.tenant)).chunk_key
        await self._manifests(key)
        async with self.meta.gc.reach(self.tenant, edges=True) as reach:
            await reach.add_roots(committed_only=True)

            async def on_tree(tid: bytes, loc: ChunkLocation | None, why: str) -> None:
                self.damage("tree", tid.hex(), why, pack=loc.pack_id if loc else "", chunk=tid)

            walked = await walk(self.meta, self.ws, self.tenant, reach, on_damage=on_tree)
            self.report.trees += walked.trees
            await self._unindexed(reach)
            await self._packs(reach)
            await self._name_snapshots(reach)
            stats = await reach.stats()
        self.report.chunks += stats.reachable
        orphans = self.report.orphans
        orphans.chunk_rows += stats.unreferenced_chunks
        orphans.pack_rows += stats.empty_packs
        orphans.manifest_rows += stats.unreferenced_manifests
        orphans.marked_chunks += stats.marked_chunks
        orphans.pack_objects += await self._orphan_objects(
            pack_key(self.tenant, "00").rsplit("/", 2)[0] + "/", self.meta.gc.known_packs
        )
        orphans.manifest_objects += await self._orphan_objects(
            manifest_key(self.tenant, ""), self.meta.gc.known_manifests
        )
        self.report.damage.extend(self.found)

    async def _manifests(self, key: bytes) -> None:
        after = ""
        while page := await self.meta.gc.snapshot_manifests(self.tenant, after, PAGE):
            for mid, record in page:
                self.report.manifests += 1
                if record is None:
                    self.damage("manifest", mid, "a snapshot references it but it has no row")
                else:
                    await self._manifest(key, record)
            after = page[-1][0]

    async def _manifest(self, key: bytes, record: ManifestRecord) -> None:
        mid = record.manifest_id
        try:
            stored = await self.blobs.get(record.blob_key)
        except NotFound:
            self.damage("manifest", mid, f"object {record.blob_key} is missing")
            return
        try:
            sealer = await self.ws.sealer(self.tenant)
            data = sealer.open_manifest(mid, stored)
            if fmt.manifest_id(key, data) != mid:
                raise DataLoss("its bytes do not match its id")
            manifest = fmt.parse_manifest(data)
        except (DataLoss, InvalidArgument) as exc:
            self.damage("manifest", mid, f"does not open: {exc}")
            return
        trees = (bytes(manifest.root_tree_id), bytes(manifest.config_tree_id))
        if trees != (record.root_tree_id, record.config_tree_id):
            self.damage("manifest", mid, "names other trees than its row")

    async def _unindexed(self, reach: GcReach) -> None:
        after = b""
        while page := await reach.unindexed(after, PAGE):
            for cid, is_tree in page:
                what = "tree" if is_tree else "chunk"
                self.damage(what, cid.hex(), "is not in the chunk index", chunk=cid)
            after = page[-1][0]

    async def _packs(self, reach: GcReach) -> None:
        after = ""
        while page := await reach.packs(after, PAGE):
            for usage in page:
                self.report.packs += 1
                if await self._pack_ok(reach, usage) and self.report.read_data:
                    await self._read_pack(reach, usage.pack_id)
            after = page[-1].pack_id

    async def _pack_ok(self, reach: GcReach, usage: PackUsage) -> bool:
        pid = usage.pack_id
        if usage.blob_key is None or usage.size is None:
            self.damage("pack", pid, f"{usage.chunks} reachable chunks name it but it has no row")
            return False
        try:
            size = (await self.blobs.stat(usage.blob_key)).size
        except NotFound:
            await self._pack_damage(reach, pid, f"object is missing ({usage.chunks} chunks lost)")
            return False
        if size != usage.size:
            await self._pack_damage(
                reach, pid, f"object is {size} bytes, its row says {usage.size}"
            )
            return False
        if usage.end > size:
            await self._pack_damage(reach, pid, f"chunks end at byte {usage.end}, past its end")
            return False
        return True

    async def _pack_damage(self, reach: GcReach, pid: str, message: str) -> None:
        first = await reach.locations(pid, data_only=False)
        self.damage("pack", pid, message, pack=pid, chunk=first[0].chunk_id if first else b"")

    async def _read_pack(self, reach: GcReach, pid: str) -> None:
        locations = await reach.locations(pid, data_only=True)
        window: list[ChunkLocation] = []
        size = 0
        for loc in [*locations, None]:
            if loc is not None:
                window.append(loc)
                size += loc.length
            if window and (loc is None or size >= WINDOW_BYTES):
                for item in await read_each(self.ws, window):
                    await self._verify(item)
                window, size = [], 0

    async def _verify(self, item: Any) -> None:
        loc: ChunkLocation = item.location
        if isinstance(item, ReadFailure):
            self.damage("chunk", loc.chunk_id.hex(), item.why, pack=loc.pack_id, chunk=loc.chunk_id)
            return
        self.report.bytes_read += loc.length
        try:
            await self.ws.open_stored_chunk(self.tenant, loc, item.frame)
        except DataLoss as exc:
            self.damage(
                "chunk",
                loc.chunk_id.hex(),
                f"does not verify: {exc}",
                pack=loc.pack_id,
                chunk=loc.chunk_id,
            )

    async def _name_snapshots(self, reach: GcReach) -> None:
        named = list(self.witness.items())[:MAX_NAMED]
        if not named:
            return
        found = await reach.snapshots_reaching(list(dict.fromkeys(c for _, c in named)))
        for index, cid in named:
            self.found[index].snapshots = found.get(cid, [])

    async def _orphan_objects(self, prefix: str, known: Any) -> int:
        """Objects under ``prefix`` whose id (the last key component) has no row."""
        count = 0
        batch: dict[str, str] = {}

        async def flush() -> int:
            have: set[str] = await known(self.tenant, list(batch))
            return sum(1 for oid in batch if oid not in have)

        try:
            async for info in self.blobs.list(prefix):
                batch[info.key.rsplit("/", 1)[-1]] = info.key
                if len(batch) >= PAGE:
                    count += await flush()
                    batch.clear()
            if batch:
                count += await flush()
        except SessiondError as exc:
            log.warning("check: cannot list %s: %s", prefix, exc)
        return count
