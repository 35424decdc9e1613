"""Shared helpers for the benchmarks: PostgreSQL schemas, a sessiond server in
a subprocess or in-process, CPU accounting from ``/proc``, percentiles, the
machine description and a markdown table with ratios.

Every service is started on 127.0.0.1 only and stopped by its own PID; every
schema a benchmark creates is dropped CASCADE on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import platform
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

ENV_DATABASE_URL = "SESSIOND_BENCH_DATABASE_URL"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- PostgreSQL schemas ------------------------------------------------------


def default_database_url() -> str:
    return os.environ.get(ENV_DATABASE_URL) or DEFAULT_DATABASE_URL


def with_search_path(url: str, schema: str | None) -> str:
    """``url`` with its ``search_path`` parameter set to ``schema`` (removed
    when ``schema`` is None). asyncpg passes unknown URL parameters as server
    settings, so everything sessiond creates lands in that schema."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "search_path"]
    if schema is not None:
        query.append(("search_path", schema))
    return urlunsplit(parts._replace(query=urlencode(query)))


def new_schema_name(prefix: str = "bench") -> str:
    return f"{prefix}_{secrets.token_hex(4)}"


async def admin_execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(with_search_path(url, None))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def fresh_schema(url: str, name: str) -> AsyncIterator[str]:
    """Create schema ``name``; yield ``url`` pointing into it; drop it CASCADE."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise ValueError(f"unsafe schema name {name!r}")
    await admin_execute(url, f"CREATE SCHEMA {name}")
    try:
        yield with_search_path(url, name)
    finally:
        try:
            await admin_execute(url, f"DROP SCHEMA IF EXISTS {name} CASCADE")
        except Exception as exc:
            print(f"warning: could not drop schema {name}: {exc}", file=sys.stderr)


async def checkpoint(url: str) -> None:
    """Flush dirty buffers so that one configuration's writes are not paid
    for by the next one's measurement window (needs a superuser; skipped
    otherwise)."""
    with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
        await admin_execute(url, "CHECKPOINT")


# --- sessiond server ---------------------------------------------------------

_READY = re.compile(rb"sessiond ready on port (\d+)")
_API_KEY = re.compile(r"^api_key\s+(\S+)\s*$", re.MULTILINE)


def sessiond_command() -> list[str]:
    """``sessiond`` of this interpreter (``python -m sessiond.server`` is the
    same entry point as the ``sessiond`` script)."""
    return [sys.executable, "-m", "sessiond.server"]


def create_tenant(database_url: str, tenant_id: str) -> str:
    """``sessiond admin tenants create``; returns the printed API key. Also
    applies the schema migrations to ``database_url``."""
    admin = [*sessiond_command(), "admin", "--database-url", database_url]
    out = subprocess.run(
        [*admin, "tenants", "create", tenant_id],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = _API_KEY.search(out.stdout)
    if match is None:
        raise RuntimeError(f"no api_key in `sessiond admin tenants create` output: {out.stdout!r}")
    return match.group(1)


@dataclass
class ServerProcess:
    """``sessiond serve --auth api-key`` in a child process on 127.0.0.1."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @classmethod
    def start(
        cls,
        database_url: str,
        workdir: Path,
        *,
        log_level: str = "INFO",
        timeout: float = 30.0,
    ) -> ServerProcess:
        """Start on a free loopback port (``--listen 127.0.0.1:0``; the bound
        port is read from the ready line in the log, so there is no race)."""
        workdir.mkdir(parents=True, exist_ok=True)
        log_path = workdir / "server.log"
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                [
                    *sessiond_command(),
                    "serve",
                    "--auth",
                    "api-key",
                    "--listen",
                    "127.0.0.1:0",
                    "--database-url",
                    database_url,
                    "--data-dir",
                    str(workdir / "data"),
                    "--log-level",
                    log_level,
                    "--drain-seconds",
                    "5",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # server_rpc_durations reads the text format's RPC lines.
                env={**os.environ, "SESSIOND_LOG_FORMAT": "text"},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = _READY.search(log_path.read_bytes())
            if match:
                return cls(proc=proc, port=int(match.group(1)), log_path=log_path)
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        server = cls(proc=proc, port=0, log_path=log_path)
        server.stop()
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"sessiond serve did not become ready:\n{tail}")

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM by PID, then SIGKILL by PID if it does not exit in time."""
        if self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


_RPC_LINE = re.compile(rb"rpc (\S+) code=(\w+) .*?duration_ms=([0-9.]+)")


def server_rpc_durations(log_path: Path, start: int, end: int, method: str) -> list[float]:
    """``duration_ms`` of the server's one-line-per-RPC log records for
    ``method`` written between byte offsets ``start`` and ``end``."""
    with log_path.open("rb") as f:
        f.seek(start)
        chunk = f.read(max(0, end - start))
    out: list[float] = []
    for match in _RPC_LINE.finditer(chunk):
        if match.group(1).endswith(method.encode()) and match.group(2) == b"OK":
            out.append(float(match.group(3)))
    return out


@contextlib.asynccontextmanager
async def inprocess_server(
    database_url: str, workdir: Path, tenant_id: str, *, log_level: str = "INFO"
) -> AsyncIterator[tuple[str, str]]:
    """A sessiond server in this event loop with API-key auth, logging its
    per-RPC lines to ``workdir/server.log`` like the CLI would. Yields
    ``(target, api_key)`` for a fresh tenant."""
    from sessiond.server.app import SessiondServer, Stores
    from sessiond.server.auth import ApiKeyAuth
    from sessiond.server.config import ServerConfig
    from sessiond.server.core.tenants import Tenants

    _mkdir(workdir)
    handler = logging.FileHandler(workdir / "server.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("sessiond")
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(log_level)
    cfg = ServerConfig(
        data_dir=workdir / "data",
        database_url=database_url,
        blob_url=f"file://{workdir / 'data' / 'blobs'}",
        listen="127.0.0.1:0",
        auth="api-key",
        drain_seconds=5.0,
    )
    stores = await Stores.open(cfg)
    server = SessiondServer(cfg, stores, ApiKeyAuth(stores.meta))
    try:
        port = await server.start()
        _, key = await Tenants(stores.meta).create(tenant_id)
        yield f"127.0.0.1:{port}", key.token
    finally:
        await server.stop(grace=2.0)
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()


# --- CPU accounting ----------------------------------------------------------


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` (None if it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def parent_pid(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(text[text.rindex(")") + 2 :].split()[1])


def child_pids(ppid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and parent_pid(int(entry.name)) == ppid:
            out.append(int(entry.name))
    return out


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    line = Path("/proc/stat").read_text().splitlines()[0].split()
    ticks = [int(v) for v in line[1:9]]  # user nice system idle iowait irq softirq steal
    total = sum(ticks)
    return (total - ticks[3] - ticks[4]) / _CLK_TCK, total / _CLK_TCK


async def postmaster_pid(url: str) -> int | None:
    """PID of the PostgreSQL postmaster if it runs on this machine."""
    conn = await asyncpg.connect(with_search_path(url, None))
    try:
        backend: int = await conn.fetchval("SELECT pg_backend_pid()")
        ppid = parent_pid(backend)  # while the backend still exists
    finally:
        await conn.close()
    return ppid if ppid is not None and _comm(ppid).startswith("postgres") else None


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _mkdir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


def _loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


PidSource = Callable[[], Iterable[int]]


@dataclass
class CpuProbe:
    """CPU used by named groups of processes (and the machine) over a window,
    read from ``/proc``. A group is a callable returning its current PIDs."""

    groups: Mapping[str, PidSource]
    _start: dict[str, dict[int, float]] = field(default_factory=dict)
    _machine: tuple[float, float] = (0.0, 0.0)
    _wall: float = 0.0

    def _read(self) -> dict[str, dict[int, float]]:
        out: dict[str, dict[int, float]] = {}
        for name, pids in self.groups.items():
            seen: dict[int, float] = {}
            for pid in pids():
                cpu = process_cpu_seconds(pid)
                if cpu is not None:
                    seen[pid] = cpu
            out[name] = seen
        return out

    def begin(self) -> None:
        self._start = self._read()
        self._machine = machine_cpu_seconds()
        self._wall = time.monotonic()

    def end(self) -> dict[str, float]:
        """Cores used per group (CPU seconds / wall seconds) since
        :meth:`begin`, plus ``machine`` (busy cores of the whole box)."""
        now = self._read()
        busy, total = machine_cpu_seconds()
        wall = max(time.monotonic() - self._wall, 1e-9)
        cores: dict[str, float] = {}
        for name, pids in now.items():
            before = self._start.get(name, {})
            # A process that appeared in the window counts from its start.
            used = sum(cpu - before.get(pid, 0.0) for pid, cpu in pids.items())
            cores[name] = used / wall
        ncpu = os.cpu_count() or 1
        cores["machine"] = (busy - self._machine[0]) / max(total - self._machine[1], 1e-9) * ncpu
        return cores


# --- statistics ----------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of an ascending sequence;
    NaN if it is empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def ratio(value: float, base: float) -> str:
    if not base or math.isnan(value) or math.isnan(base):
        return "–"
    return f"{value / base:.2f}×"


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None or math.isnan(value):
        return "–"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table; text columns left-aligned, the rest right."""
    numeric = [
        all(re.match(r"^[–\d.,×%+-]+", row[i] or "–") for row in rows) if rows else False
        for i in range(len(headers))
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(cells, widths, numeric, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    sep = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if n else ("-" * (w + 2))
            for w, n in zip(widths, numeric, strict=True)
        )
        + "|"
    )
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


# --- machine description -----------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    try:
        return importlib_metadata.version(dist)
    except importlib_metadata.PackageNotFoundError:
        return "-"


async def machine_info(database_url: str) -> dict[str, Any]:
    """Date, CPUs, CPU model, memory, load, PostgreSQL version and the
    settings that decide insert throughput, library versions."""
    conn = await asyncpg.connect(with_search_path(database_url, None))
    try:
        pg_version: str = await conn.fetchval("SHOW server_version")
        settings = {
            name: await conn.fetchval(f"SHOW {name}")
            for name in (
                "fsync",
                "synchronous_commit",
                "full_page_writes",
                "shared_buffers",
                "wal_level",
                "max_connections",
            )
        }
    finally:
        await conn.close()
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "memory_gib": round(mem_gib, 1),
        "loadavg_before": _loadavg(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": pg_version,
        "postgresql_settings": settings,
        "postgresql_target": urlsplit(database_url).netloc.rpartition("@")[2],
        "versions": {d: _version(d) for d in ("grpcio", "protobuf", "asyncpg", "claude-agent-sdk")},
    }


def describe_machine(info: Mapping[str, Any]) -> str:
    s = info["postgresql_settings"]
    return "\n".join(
        [
            f"- date: {info['date']}",
            f"- nproc: {info['nproc']}; CPU: {info['cpu_model']}; RAM {info['memory_gib']} GiB;"
            f" load average before: {' '.join(info['loadavg_before'])}",
            f"- PostgreSQL {info['postgresql']} at {info['postgresql_target']} (fsync={s['fsync']},"
            f" synchronous_commit={s['synchronous_commit']},"
            f" shared_buffers={s['shared_buffers']})",
            f"- Python {info['python']}; "
            + ", ".join(f"{k} {v}" for k, v in info["versions"].items()),
        ]
    )


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path


async def sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


# --- profiling and background load ---------------------------------------------


def profiler_command(profiler: str, pid: int, seconds: int, out: Path) -> list[str]:
    """py-spy (Python frames of the GIL holder), py-spy-native (all active
    threads with C frames; pauses the process per sample) or perf (on-CPU
    samples incl. kernel and C; Python 3.11 frames are opaque to it)."""
    if profiler == "perf":
        where = ["-p", str(pid), "-o", str(out)]
        return ["perf", "record", "-F", "499", "-g", *where, "--", "sleep", str(seconds)]
    # --gil keeps only samples of the thread holding the GIL: Python CPU work,
    # not threads waiting in a syscall or preempted after a wakeup.
    mode = ["--native", "--rate", "100"] if profiler == "py-spy-native" else []
    mode += ["--gil", "--nonblocking"] if profiler == "py-spy" else []
    where = ["--pid", str(pid), "--duration", str(seconds), "-o", str(out)]
    return ["py-spy", "record", *where, *mode, "--format", "raw"]


async def background_load(seconds: float = 2.0) -> float:
    """Busy cores of the machine before the benchmark starts (the box may be
    shared; this is reported next to the figures)."""
    probe = CpuProbe({})
    probe.begin()
    await asyncio.sleep(seconds)
    return probe.end()["machine"]
