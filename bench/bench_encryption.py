"""Encryption-at-rest benchmark (issue #6 item 3): the cost of sealing on the
snapshot and hydrate paths, encrypted against unencrypted, in one run.

    python -m bench.bench_encryption [--repeat 3] [--seed 1] [--mb 100] [--files 3000]

One seeded workspace (~100 MB: half compressible text, half random bytes,
a few thousand files plus two multi-MiB files that FastCDC splits) is
generated before any timing. Each round runs, for ``--encryption on`` and
``--encryption off`` in alternating order, a fresh ``sessiond serve`` process
on the embedded default (SQLite + a blob directory + the generated master
key, in a fresh data dir, so every snapshot uploads everything), then

* **snapshot**: ``sessiond.hydrator.snapshot.snapshot`` of the workspace
  (chunk, hash, compress, MissingChunks, PutPack, PutManifest, Commit) with
  a fresh hydrator state dir, so nothing is skipped;
* **hydrate**: ``sessiond.hydrator.restore.restore`` of that snapshot into a
  fresh directory (GetManifest, GetChunks, verify, write).

The hydrator runs in this process, the server in its own; the server's CPU
seconds per phase are read from ``/proc``, since that is where sealing and
unsealing happen. On a shared machine wall times swing far more than the
cost being measured, so a second table times the server's own pipeline in
isolation on the same workspace (best of ``--repeat``): verify + seal of
every pack (``seal_pack``) and unsealing of every stored frame, on and off.
End-to-end figures are medians over ``--repeat`` rounds; the ratio is
encrypted / unencrypted, target ≤ 1.15×. Restored trees are checked
against the workspace (file count and bytes) and deleted only at the end
(file creation right after a large ``rm -rf`` is slow on some disks).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from sessiond.client import AsyncClient
from sessiond.client import workspace_format as wf
from sessiond.hydrator.remote import WorkspaceRemote
from sessiond.hydrator.restore import restore
from sessiond.hydrator.snapshot import snapshot
from sessiond.server.core.chunk_reader import StoredChunk
from sessiond.server.core.packs import ChunkSpec, SealedPack, seal_pack
from sessiond.server.core.sealing import Sealer, new_dek
from sessiond.server.core.workspace import _open_frames
from sessiond.server.storage.records import ChunkLocation

from .common import markdown_table, process_cpu_seconds, ratio

TARGET_RATIO = 1.15
_READY = re.compile(rb"sessiond ready on port (\d+)")
# A vocabulary for the text half (split at import: the list is long).
_VOCABULARY = (
    "session snapshot hydrate sandbox agent transcript manifest chunk pack tenant lease"
    " epoch restore suspend resume workspace directory file bytes server def return"
    " import class self async await yield with open read write for the a of to and is"
    " that it on as be by this are from or have an not"
)


# --- the workspace -----------------------------------------------------------


def generate_workspace(root: Path, *, seed: int, total_mb: int, files: int) -> tuple[int, int]:
    """Half text (lines of words, compresses ~3-4× with zstd -1), half random
    bytes; ``files`` files of log-uniform sizes in nested directories, plus
    two random files of 6 MiB. Returns (files, bytes)."""
    rng = random.Random(seed)
    words = _VOCABULARY.split()
    pool = [
        " ".join(rng.choices(words, k=rng.randint(4, 14))) + f" {rng.randint(0, 10**6)}\n"
        for _ in range(4000)
    ]
    big = 2 * (6 << 20)
    budget = {"text": total_mb * (1 << 20) // 2, "bin": total_mb * (1 << 20) // 2 - big}
    n_text = files * 4 // 5
    plan = [("text", i) for i in range(n_text)] + [("bin", i) for i in range(files - n_text)]
    weights = [rng.lognormvariate(0, 1.2) for _ in plan]
    totals = {
        k: sum(w for (kind, _), w in zip(plan, weights, strict=True) if kind == k) for k in budget
    }
    count = size = 0
    for (kind, i), w in zip(plan, weights, strict=True):
        n = max(1, int(budget[kind] * w / totals[kind]))
        d = root / f"d{i % 23:02}" / f"e{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        if kind == "text":
            lines: list[str] = []
            length = 0
            while length < n:
                line = rng.choice(pool)
                lines.append(line)
                length += len(line)
            (d / f"t{i:05}.py").write_text("".join(lines)[:n])
        else:
            (d / f"b{i:05}.bin").write_bytes(rng.randbytes(n))
        count += 1
        size += n
    for name in ("model-a.bin", "model-b.bin"):
        (root / name).write_bytes(rng.randbytes(6 << 20))
        count += 1
        size += 6 << 20
    return count, size


def tree_size(root: Path) -> tuple[int, int]:
    files = nbytes = 0
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == str(root) and ".sessiond" in dirnames:
            dirnames.remove(".sessiond")
        for name in filenames:
            files += 1
            nbytes += os.lstat(os.path.join(dirpath, name)).st_size
    return files, nbytes


# --- the server ----------------------------------------------------------------


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    data_dir: Path

    @classmethod
    def start(cls, data_dir: Path, encryption: bool, timeout: float = 60.0) -> Server:
        """``sessiond serve`` on the embedded default in ``data_dir``, auth off,
        on a free loopback port read from its ready line."""
        data_dir.mkdir(parents=True)
        log_path = data_dir.parent / f"{data_dir.name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIOND_")}
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "sessiond.server", "serve"),
                    *("--listen", "127.0.0.1:0", "--data-dir", str(data_dir)),
                    *("--encryption", "on" if encryption else "off"),
                    *("--idle-timeout", "3600", "--log-level", "INFO", "--drain-seconds", "5"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = _READY.search(log_path.read_bytes())
            if match:
                return cls(proc, int(match.group(1)), data_dir)
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        proc.kill()
        proc.wait()
        raise RuntimeError(f"sessiond serve did not start:\n{log_path.read_text()[-2000:]}")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cpu(self) -> float:
        return process_cpu_seconds(self.proc.pid) or 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def stored_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.data_dir / "blobs").rglob("*") if p.is_file())


# --- one round -------------------------------------------------------------------


@dataclass
class Run:
    encryption: bool
    snapshot_s: float
    hydrate_s: float
    server_cpu_snapshot_s: float
    server_cpu_hydrate_s: float
    # Server + this process (the hydrator side): the work of the whole
    # path, which on a shared machine is steadier than wall time.
    cpu_snapshot_s: float
    cpu_hydrate_s: float
    stored_bytes: int


@dataclass
class Results:
    runs: list[Run] = field(default_factory=list)

    def median(self, encryption: bool, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.runs if r.encryption == encryption)


async def one_run(ws: Path, work: Path, encryption: bool, expect: tuple[int, int]) -> Run:
    server = Server.start(work / "data", encryption)
    try:
        async with AsyncClient(server.target) as client:
            session = await client.create_session()
            remote = WorkspaceRemote(client, session.session_id)
            cpu0, own0 = server.cpu(), time.process_time()
            t0 = time.perf_counter()
            await snapshot(remote, ws, state_dir=work / "state")
            t1 = time.perf_counter()
            cpu1, own1 = server.cpu(), time.process_time()
            out = work / "restored"
            await restore(remote, out, state_dir=work / "restore-state")
            t2 = time.perf_counter()
            cpu2, own2 = server.cpu(), time.process_time()
        got = tree_size(out)
        if got != expect:
            raise RuntimeError(f"restored {got} (files, bytes), expected {expect}")
        return Run(
            encryption,
            snapshot_s=t1 - t0,
            hydrate_s=t2 - t1,
            server_cpu_snapshot_s=cpu1 - cpu0,
            server_cpu_hydrate_s=cpu2 - cpu1,
            cpu_snapshot_s=(cpu1 - cpu0) + (own1 - own0),
            cpu_hydrate_s=(cpu2 - cpu1) + (own2 - own1),
            stored_bytes=server.stored_bytes(),
        )
    finally:
        server.stop()


# --- the server pipeline alone ------------------------------------------------------

PACK_BYTES = 16 << 20
PIECE_BYTES = 1 << 20


def build_packs(ws: Path) -> tuple[bytes, list[tuple[list[ChunkSpec], bytes]]]:
    """The workspace as uploaded packs of zstd frames (1 MiB pieces, ~16 MiB
    packs), as a hydrator would send them."""
    key = os.urandom(32)
    packs: list[tuple[list[ChunkSpec], bytes]] = []
    specs: list[ChunkSpec] = []
    buf = bytearray()
    for path in sorted(p for p in ws.rglob("*") if p.is_file()):
        data = path.read_bytes()
        for at in range(0, max(len(data), 1), PIECE_BYTES):
            piece = data[at : at + PIECE_BYTES]
            frame = wf.compress(piece)
            specs.append(ChunkSpec(wf.chunk_id(key, piece), "data", len(frame), len(piece)))
            buf += frame
            if len(buf) >= PACK_BYTES:
                packs.append((specs, bytes(buf)))
                specs, buf = [], bytearray()
    if specs:
        packs.append((specs, bytes(buf)))
    return key, packs


def time_pipeline(
    key: bytes, packs: list[tuple[list[ChunkSpec], bytes]], encryption: bool
) -> tuple[float, float]:
    """Seconds to verify + seal every pack, and to unseal every stored frame."""
    sealer = Sealer(new_dek(), encrypt=encryption)
    sealed: list[tuple[list[ChunkSpec], SealedPack]] = []
    seal_s = 0.0
    for specs, data in packs:
        upload = bytearray(data)  # seal_pack consumes it
        t = time.perf_counter()
        sealed.append((specs, seal_pack(key, sealer, specs, upload)))
        seal_s += time.perf_counter() - t
    open_s = 0.0
    for specs, pack in sealed:
        stored = []
        offset = 0
        for c, length in zip(specs, pack.lengths, strict=True):
            loc = ChunkLocation(c.chunk_id, pack.pack_id, "k", offset, length, c.raw_length, "data")
            stored.append(StoredChunk(loc, pack.data[offset : offset + length]))
            offset += length
        t = time.perf_counter()
        _open_frames(sealer, stored)
        open_s += time.perf_counter() - t
    return seal_s, open_s


def pipeline_table(ws: Path, rounds: int) -> str:
    key, packs = build_packs(ws)
    frames = sum(len(d) for _, d in packs)
    best: dict[bool, list[float]] = {}
    for _ in range(rounds):
        for encryption in (True, False):
            seal_s, open_s = time_pipeline(key, packs, encryption)
            old = best.get(encryption, [float("inf"), float("inf")])
            best[encryption] = [min(old[0], seal_s), min(old[1], open_s)]
    on, off = best[True], best[False]
    rows = [
        ["off", f"{off[0]:.3f}", f"{off[1]:.3f}"],
        ["on", f"{on[0]:.3f}", f"{on[1]:.3f}"],
        ["added by sealing", f"{on[0] - off[0]:+.3f}", f"{on[1] - off[1]:+.3f}"],
        ["ratio on/off", ratio(on[0], off[0]), ratio(on[1], off[1])],
    ]
    return "\n".join(
        [
            f"Server pipeline alone ({len(packs)} packs, {frames / 2**20:.1f} MiB of frames;"
            f" best of {rounds}):",
            "",
            markdown_table(["encryption", "PutPack verify + seal s", "GetChunks unseal s"], rows),
        ]
    )


# --- report ------------------------------------------------------------------------


_COLUMNS = {
    "snapshot_s": "snapshot s",
    "hydrate_s": "hydrate s",
    "cpu_snapshot_s": "CPU s snapshot (all)",
    "cpu_hydrate_s": "CPU s hydrate (all)",
    "server_cpu_snapshot_s": "CPU s snapshot (server)",
    "server_cpu_hydrate_s": "CPU s hydrate (server)",
}


def report(results: Results, files: int, nbytes: int, rounds: int) -> tuple[str, bool]:
    rows = []
    for encryption in (False, True):
        rows.append(
            [
                "on" if encryption else "off",
                *(f"{results.median(encryption, c):.2f}" for c in _COLUMNS),
                f"{results.median(encryption, 'stored_bytes') / 2**20:.1f}",
            ]
        )
    ratios = {c: results.median(True, c) / results.median(False, c) for c in _COLUMNS}
    rows.append(
        [
            "ratio on/off",
            *(ratio(results.median(True, c), results.median(False, c)) for c in _COLUMNS),
            ratio(results.median(True, "stored_bytes"), results.median(False, "stored_bytes")),
        ]
    )
    table = markdown_table(["encryption", *_COLUMNS.values(), "stored MiB"], rows)
    ok = ratios["snapshot_s"] <= TARGET_RATIO and ratios["hydrate_s"] <= TARGET_RATIO
    lines = [
        f"Workspace: {files} files, {nbytes / 2**20:.1f} MiB (half text, half random);"
        f" median of {rounds} rounds, on/off interleaved.",
        "",
        table,
        "",
        f"Target ≤ {TARGET_RATIO:.2f}× slower: snapshot {ratios['snapshot_s']:.2f}×,"
        f" hydrate {ratios['hydrate_s']:.2f}× — {'met' if ok else 'NOT met'}"
        f" (CPU of the whole path: {ratios['cpu_snapshot_s']:.2f}× /"
        f" {ratios['cpu_hydrate_s']:.2f}×).",
        f"Load average at the end: {_loadavg()} on {os.cpu_count()} CPUs.",
    ]
    return "\n".join(lines), ok


async def main_async(args: argparse.Namespace) -> int:
    base = Path(tempfile.mkdtemp(prefix="sessiond-bench-enc-", dir=args.tmp))
    try:
        ws = base / "ws"
        t = time.perf_counter()
        files, nbytes = generate_workspace(ws, seed=args.seed, total_mb=args.mb, files=args.files)
        print(
            f"generated {files} files, {nbytes / 2**20:.1f} MiB in {time.perf_counter() - t:.1f}s;"
            f" load average {_loadavg()}",
            file=sys.stderr,
        )
        expect = tree_size(ws)
        # Unmeasured: first-use costs (imports, page cache of the workspace,
        # the interpreter's allocator) would otherwise land on one mode.
        for w in range(args.warmup):
            for encryption in (True, False):
                await one_run(ws, base / f"warmup{w}-{int(encryption)}", encryption, expect)
        results = Results()
        for r in range(args.repeat):
            # Alternate which mode goes first, so drift in background load
            # does not always favour the same one.
            order = (True, False) if r % 2 == 0 else (False, True)
            for encryption in order:
                run = await one_run(ws, base / f"r{r}-{int(encryption)}", encryption, expect)
                results.runs.append(run)
                print(
                    f"round {r + 1} encryption={'on' if encryption else 'off'}:"
                    f" snapshot {run.snapshot_s:.2f}s hydrate {run.hydrate_s:.2f}s"
                    f" (server CPU {run.server_cpu_snapshot_s:.2f}s"
                    f" / {run.server_cpu_hydrate_s:.2f}s)",
                    file=sys.stderr,
                )
        text, ok = report(results, files, nbytes, args.repeat)
        print(text)
        print()
        print(pipeline_table(ws, args.repeat))
        return 0 if ok or not args.strict else 1
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--repeat", type=int, default=3, help="rounds per mode (default %(default)s)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured rounds (default %(default)s)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--mb", type=int, default=100, help="workspace size (default %(default)s)")
    p.add_argument("--files", type=int, default=3000, help="file count (default %(default)s)")
    p.add_argument("--tmp", default=None, help="parent of the working directory")
    p.add_argument("--strict", action="store_true", help="exit 1 if the target is missed")
    args = p.parse_args()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
