"""Append benchmark (issue #3): sessiond's transcript append path against the
same inserts done directly with asyncpg, in one run.

    python -m bench.bench_append [--database-url URL] [--seconds N] [--sessions 64]
                                 [--server-process] [--profile DIR]

``--sessions`` concurrent sessions each append batches of 10–50
Claude-Code-shaped transcript entries of 1–4 KB (seeded, generated before
any timing) as fast as they get answers ("saturation"), then again at a
fixed offered load ("paced": by default half of what the direct inserts
reached, i.e. exactly the throughput target, so the latency target is
checked at the load the throughput target names). Configurations:

``direct``     the limit: one statement per batch on a pool of 20 asyncpg
               connections (key-row upsert + ``INSERT … SELECT FROM unnest``
               of the entries, autocommit: one round trip, one transaction),
               into sessiond's own tables; no gRPC, no validation, no summary.
``direct-tx``  diagnostic: the same, in sessiond's transaction shape (BEGIN,
               the upsert+insert, read summary, write summary, COMMIT).
``process``    ``sessiond serve --auth api-key`` in its own process; clients
               are ``SessiondSessionStore.append`` (what the SDK calls) in 1
               and in 2 client processes (``--client-procs``).
``inprocess``  server and clients in one event loop.

Each configuration gets a fresh schema ``bench_<random>_<config>`` (dropped
CASCADE afterwards) so none inherits another's table sizes, and a CHECKPOINT
before it starts. Every run ends with a check that the stored rows are
exactly the acknowledged entries: same count, no duplicate, byte-identical
for sampled sessions. Results: a markdown table on stdout and
``bench/results/append-<date>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import multiprocessing as mp
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
import uuid as uuidlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import asyncpg

from .common import (
    RESULTS_DIR,
    CpuProbe,
    PidSource,
    ServerProcess,
    checkpoint,
    child_pids,
    create_tenant,
    default_database_url,
    describe_machine,
    fmt,
    fresh_schema,
    inprocess_server,
    machine_info,
    markdown_table,
    new_schema_name,
    percentile,
    postmaster_pid,
    ratio,
    server_rpc_durations,
    sleep_until,
    write_json,
)

PROJECT_KEY = "-home-user-project"
CWD = "/home/user/project"
TENANT = "bench"
APPEND_METHOD = "/sessiond.v1.TranscriptService/Append"
ALL_CONFIGS = ("direct", "direct-tx", "process", "inprocess")
TARGET_RATIO = 0.5
TARGET_P99_MS = 50.0
# A Python process whose event loop is busy this share of a core or more is
# the bottleneck of whatever it drives.
CPU_BOUND = 0.85


# --- the workload ----------------------------------------------------------------

_VOCABULARY = (
    "the of and to in is that for it with as on be this are by file function return "
    "value error test import from class def self async await const let var if else "
    "for while try except raise None True False print config server client session "
    "store append load transcript entry batch json key path string list dict int "
    "PostgreSQL index query insert update select where order limit commit rollback "
    "tool_use tool_result assistant user message content text input output result "
    "src/app.py tests/test_app.py README.md package.json Cargo.toml main.rs lib.rs "
    "npm pytest cargo build run check lint format git diff status commit push branch "
    "0 1 2 3 42 100 404 500 1024 2048 {} [] () => -> :: == != <= >= && || += ; : , ."
)


def _dumps(entry: dict[str, Any]) -> str:
    # Exactly what SessiondSessionStore.append sends, so stored rows can be
    # compared byte for byte with the corpus.
    return json.dumps(entry, ensure_ascii=False, separators=(",", ":"))


@dataclass
class Corpus:
    """A seeded conversation cut into batches. ``entries[i]`` are the SDK
    dicts of batch ``i``, ``texts[i]`` their JSON, ``uuids[i]`` their uuids."""

    entries: list[list[dict[str, Any]]]
    texts: list[list[str]]
    uuids: list[list[str]]

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def mean_batch(self) -> float:
        return sum(len(b) for b in self.entries) / len(self.entries)

    @property
    def mean_entry_bytes(self) -> float:
        n = sum(len(b) for b in self.texts)
        return sum(len(t.encode()) for b in self.texts for t in b) / n


def build_corpus(seed: int, n_batches: int) -> Corpus:
    """``n_batches`` batches of 10–50 entries shaped like Claude Code
    transcript lines (user prompt, assistant text + tool_use, user
    tool_result, chained by ``parentUuid``), each 1–4 KB of JSON
    (uniform), deterministic for a seed."""
    rng = random.Random(seed)

    def uid() -> str:
        return str(uuidlib.UUID(int=rng.getrandbits(128), version=4))

    blob = " ".join(rng.choices(_VOCABULARY.split(), k=400_000))
    session_id = uid()
    when = datetime(2025, 11, 3, 9, 30, tzinfo=UTC)
    parent: str | None = None
    tool_id = ""
    entries: list[list[dict[str, Any]]] = []
    texts: list[list[str]] = []
    uuids: list[list[str]] = []
    k = 0
    for _ in range(n_batches):
        batch: list[dict[str, Any]] = []
        for _ in range(rng.randint(10, 50)):
            when += timedelta(milliseconds=rng.randint(50, 4000))
            entry_uuid = uid()
            message: dict[str, Any]
            if k % 24 == 0:
                kind, message = "user", {"role": "user", "content": [{"type": "text", "text": ""}]}
            elif k % 2 == 1:
                tool_id = "toolu_" + uid().replace("-", "")[:24]
                kind = "assistant"
                message = {
                    "id": "msg_" + uid().replace("-", "")[:24],
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-sonnet-4-5-20250929",
                    "content": [
                        {"type": "text", "text": ""},
                        {
                            "type": "tool_use",
                            "id": tool_id,
                            "name": rng.choice(["Read", "Edit", "Bash", "Grep"]),
                            "input": {"file_path": f"{CWD}/src/app.py"},
                        },
                    ],
                    "stop_reason": "tool_use",
                    "usage": {
                        "input_tokens": rng.randint(100, 9000),
                        "output_tokens": rng.randint(10, 900),
                    },
                }
            else:
                kind = "user"
                message = {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": tool_id, "content": ""}],
                }
            entry: dict[str, Any] = {
                "parentUuid": parent,
                "isSidechain": False,
                "userType": "external",
                "cwd": CWD,
                "sessionId": session_id,
                "version": "2.1.30",
                "gitBranch": "main",
                "type": kind,
                "message": message,
                "uuid": entry_uuid,
                "timestamp": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            }
            # Fill the first content block up to a size uniform in 1–4 KB
            # (the blob is ASCII without characters JSON escapes).
            target = rng.randint(1024, 4096)
            block = message["content"][0]
            field_name = "content" if block["type"] == "tool_result" else "text"
            fill = max(0, target - len(_dumps(entry).encode()))
            start = rng.randrange(0, len(blob) - fill)
            block[field_name] = blob[start : start + fill]
            batch.append(entry)
            parent = entry_uuid
            k += 1
        entries.append(batch)
        texts.append([_dumps(e) for e in batch])
        uuids.append([e["uuid"] for e in batch])
    return Corpus(entries=entries, texts=texts, uuids=uuids)


# --- driving the load ---------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Monotonic-clock times (shared by all processes of the machine):
    sessions run from ``start`` to ``end``; only completions from
    ``measure_from`` on are measured. ``interval`` > 0 paces each session
    to one batch per interval; 0 means back to back."""

    start: float
    measure_from: float
    end: float
    interval: float

    @classmethod
    def after(cls, delay: float, warmup: float, seconds: float, interval: float) -> Plan:
        start = time.monotonic() + delay
        return cls(start, start + warmup, start + warmup + seconds, interval)


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)  # seconds, measured batches
    window_entries: int = 0
    window_batches: int = 0
    acked_entries: int = 0  # every acknowledged entry, warm-up and tail included
    batches_done: dict[int, int] = field(default_factory=dict)  # slot → batches

    def merge(self, other: Stats) -> None:
        self.latencies += other.latencies
        self.window_entries += other.window_entries
        self.window_batches += other.window_batches
        self.acked_entries += other.acked_entries
        self.batches_done.update(other.batches_done)


# append(slot, lap, batch index) → entries the server confirmed
AppendFn = Callable[[int, int, int], Awaitable[int]]


def session_id(tag: str, slot: int, lap: int) -> str:
    return f"{tag}-{slot:03d}-{lap}"


def start_index(slot: int, sessions: int, n_batches: int) -> int:
    return slot * n_batches // sessions


async def drive(
    slots: Sequence[int], sessions: int, n_batches: int, append: AppendFn, plan: Plan
) -> Stats:
    """Run one coroutine per slot. Slot ``s`` walks the corpus from its own
    offset; after a full lap it continues as a new session (uuids are unique
    per transcript, so nothing is ever a duplicate)."""
    stats = Stats()

    async def one(slot: int) -> None:
        first = start_index(slot, sessions, n_batches)
        done = 0
        next_at = plan.start + (slot / sessions) * plan.interval
        await sleep_until(plan.start)
        while True:
            if plan.interval:
                await sleep_until(next_at)
                next_at += plan.interval
            t0 = time.monotonic()
            if t0 >= plan.end:
                break
            count = await append(slot, done // n_batches, (first + done) % n_batches)
            t1 = time.monotonic()
            done += 1
            stats.acked_entries += count
            if plan.measure_from <= t1 <= plan.end:
                stats.latencies.append(t1 - t0)
                stats.window_entries += count
                stats.window_batches += 1
        stats.batches_done[slot] = done

    await asyncio.gather(*(one(s) for s in slots))
    return stats


def store_append(
    target: str, token: str, tag: str, corpus: Corpus, slots: Sequence[int]
) -> tuple[AppendFn, Callable[[], Awaitable[None]]]:
    """Appends through ``SessiondSessionStore`` (one store per session, as
    every sandbox has its own), and a closer."""
    from sessiond.client import SessiondSessionStore

    stores = {s: SessiondSessionStore(target, token=token, timeout=60.0) for s in slots}

    async def append(slot: int, lap: int, index: int) -> int:
        batch = corpus.entries[index]
        key = {"project_key": PROJECT_KEY, "session_id": session_id(tag, slot, lap)}
        await stores[slot].append(key, batch)  # type: ignore[arg-type]
        return len(batch)

    async def close() -> None:
        for store in stores.values():
            await store.close()

    return append, close


def raw_append(
    target: str, token: str, tag: str, corpus: Corpus, slots: Sequence[int]
) -> tuple[AppendFn, Callable[[], Awaitable[None]]]:
    """Appends through ``AsyncClient.append_entries`` with pre-serialized
    JSON (skips the store's per-entry ``json.dumps``)."""
    from sessiond.api.v1 import transcripts_pb2
    from sessiond.client import AsyncClient

    client = AsyncClient(target, token=token, timeout=60.0)

    async def append(slot: int, lap: int, index: int) -> int:
        key = transcripts_pb2.SessionKey(
            project_key=PROJECT_KEY, session_id=session_id(tag, slot, lap)
        )
        resp = await client.append_entries(key, corpus.texts[index])
        if resp.duplicates:
            raise AssertionError(f"{resp.duplicates} duplicates reported")
        return int(resp.appended)

    return append, client.close


_NOW_MS = "floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint"

# The minimum the schema needs: the key-row upsert (lock, seq allocation,
# mtime) and the entries from unnest, one statement, one round trip.
_DIRECT = f"""
WITH k AS (
    INSERT INTO transcript_keys AS t
        (tenant_id, project_key, session_id, subpath, next_seq, mtime_ms)
    VALUES ($1, $2, $3, '', $4, {_NOW_MS})
    ON CONFLICT (tenant_id, project_key, session_id, subpath) DO UPDATE
        SET next_seq = t.next_seq + EXCLUDED.next_seq,
            mtime_ms = GREATEST(t.mtime_ms + 1, EXCLUDED.mtime_ms)
    RETURNING t.key_id, t.next_seq - $4 AS base
)
INSERT INTO transcript_entries (tenant_id, key_id, seq, uuid, entry)
SELECT $1, k.key_id, k.base + u.ord, u.uuid, u.entry
FROM k, unnest($5::text[], $6::text[]) WITH ORDINALITY AS u(uuid, entry, ord)
ON CONFLICT (key_id, uuid) WHERE uuid IS NOT NULL DO NOTHING
"""

_DIRECT_RETURNING = _DIRECT + " RETURNING seq"

_SUMMARY_READ = (
    "SELECT mtime_ms, data FROM transcript_summaries"
    " WHERE tenant_id = $1 AND project_key = $2 AND session_id = $3"
)
_SUMMARY_WRITE = """
INSERT INTO transcript_summaries (tenant_id, project_key, session_id, mtime_ms, data)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (tenant_id, project_key, session_id) DO UPDATE
    SET mtime_ms = EXCLUDED.mtime_ms, data = EXCLUDED.data
"""
_SUMMARY = json.dumps(
    {"is_sidechain": False, "created_at": 1762162200000, "cwd": CWD, "git_branch": "main"}
    | {"first_prompt": "x" * 200, "first_prompt_locked": True}
)


def direct_append(
    pool: asyncpg.Pool, tag: str, corpus: Corpus, *, sessiond_shape: bool
) -> AppendFn:
    async def one_statement(slot: int, lap: int, index: int) -> int:
        sid = session_id(tag, slot, lap)
        texts = corpus.texts[index]
        async with pool.acquire() as conn:
            status: str = await conn.execute(
                _DIRECT, TENANT, PROJECT_KEY, sid, len(texts), corpus.uuids[index], texts
            )
        inserted = int(status.rsplit(" ", 1)[1])
        if inserted != len(texts):
            raise AssertionError(f"{sid}: inserted {inserted} of {len(texts)}")
        return inserted

    async def transaction(slot: int, lap: int, index: int) -> int:
        sid = session_id(tag, slot, lap)
        texts = corpus.texts[index]
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                _DIRECT_RETURNING, TENANT, PROJECT_KEY, sid, len(texts), corpus.uuids[index], texts
            )
            await conn.fetchrow(_SUMMARY_READ, TENANT, PROJECT_KEY, sid)
            await conn.execute(_SUMMARY_WRITE, TENANT, PROJECT_KEY, sid, 0, _SUMMARY)
        return len(rows)

    return transaction if sessiond_shape else one_statement


# --- client processes ---------------------------------------------------------


@dataclass(frozen=True)
class ClientSpec:
    target: str
    token: str
    tag: str
    slots: tuple[int, ...]
    sessions: int
    seed: int
    corpus_batches: int
    client: str  # "store" | "raw"


def _client_main(conn: Connection, spec: ClientSpec) -> None:
    """Entry point of a spawned client process: build the corpus, report
    ready, receive the plan, drive, send back the stats."""
    try:
        asyncio.run(_client_async(conn, spec))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        raise
    finally:
        conn.close()


async def _client_async(conn: Connection, spec: ClientSpec) -> None:
    corpus = build_corpus(spec.seed, spec.corpus_batches)
    factory = store_append if spec.client == "store" else raw_append
    append, close = factory(spec.target, spec.token, spec.tag, corpus, spec.slots)
    conn.send(("ready", os.getpid()))
    plan: Plan = await asyncio.to_thread(conn.recv)
    try:
        stats = await drive(spec.slots, spec.sessions, len(corpus), append, plan)
    finally:
        await close()
    conn.send(("stats", stats))


async def drive_in_processes(
    specs: Sequence[ClientSpec],
    make_plan: Callable[[], Plan],
    on_plan: Callable[[Plan, list[int]], Awaitable[dict[str, Any]]],
) -> tuple[Stats, dict[str, Any]]:
    """Run each spec in a spawned process (spawn, not fork: grpc must not be
    forked), start them together on one plan, merge their stats.
    ``on_plan(plan, pids)`` runs in this process alongside (the probes)."""
    ctx = mp.get_context("spawn")
    links: list[tuple[Connection, Any]] = []
    for spec in specs:
        parent_end, child_end = ctx.Pipe()
        proc = ctx.Process(target=_client_main, args=(child_end, spec), daemon=True)
        proc.start()
        child_end.close()
        links.append((parent_end, proc))
    try:
        for conn, _ in links:
            kind, value = await asyncio.to_thread(conn.recv)
            if kind != "ready":
                raise RuntimeError(f"client process failed:\n{value}")
        plan = make_plan()
        for conn, _ in links:
            conn.send(plan)

        async def collect() -> Stats:
            stats = Stats()
            for conn, _ in links:
                kind, value = await asyncio.to_thread(conn.recv)
                if kind != "stats":
                    raise RuntimeError(f"client process failed:\n{value}")
                stats.merge(value)
            return stats

        stats, observed = await asyncio.gather(collect(), on_plan(plan, [p.pid for _, p in links]))
        for _, proc in links:
            await asyncio.to_thread(proc.join, 10)
        return stats, observed
    finally:
        for conn, proc in links:
            conn.close()
            if proc.is_alive():
                proc.kill()  # by PID: our own child
                proc.join(5)


# --- one measured run --------------------------------------------------------------


@dataclass
class Result:
    config: str
    label: str
    load: str  # "saturation" | "paced"
    client_procs: int
    client: str
    seconds: float
    offered_entries_s: float | None
    entries_s: float
    batches_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    server_p50_ms: float | None = None
    server_p99_ms: float | None = None
    round: int = 1
    # Busy cores of the machine just before the run (other tenants of the box).
    background_cores: float = 0.0
    cpu_cores: dict[str, float] = field(default_factory=dict)
    cpu_us_per_entry: dict[str, float] = field(default_factory=dict)
    verify: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class Ctx:
    args: argparse.Namespace
    corpus: Corpus
    postmaster: int | None
    workdir: Path
    results: list[Result] = field(default_factory=list)
    # Entries/s the paced runs offer: fixed by the first direct run.
    offered: float = 0.0
    round: int = 1
    background: float = 0.0

    async def settle(self) -> None:
        """Wait (at most ``--quiet-wait`` s) until the rest of the machine
        uses fewer than ``--quiet-cores``; remember what it used."""
        deadline = time.monotonic() + self.args.quiet_wait
        while True:
            self.background = await background_load(1.0)
            if self.background <= self.args.quiet_cores or time.monotonic() >= deadline:
                return

    def plan(self, interval: float) -> Plan:
        return Plan.after(0.3, self.args.warmup, self.args.seconds, interval)

    def loads(self) -> Iterator[tuple[str, float, float | None]]:
        """(load name, per-session interval, offered entries/s) to run: the
        saturation run, then (lazily, once the first direct saturation run
        has set ``offered``) the paced run."""
        yield "saturation", 0.0, None
        if self.args.paced_fraction > 0 and self.offered > 0:
            interval = self.args.sessions * self.corpus.mean_batch / self.offered
            yield "paced", interval, self.offered

    def pg_pids(self) -> list[int]:
        if self.postmaster is None:
            return []
        return [self.postmaster, *child_pids(self.postmaster)]


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


async def watch_window(
    plan: Plan,
    groups: dict[str, PidSource],
    server: ServerProcess | None = None,
    profile: tuple[str, Path] | None = None,
) -> dict[str, Any]:
    """At the measurement window's start and end: CPU per group, server log
    offsets; optionally a profile of the server over the window."""
    probe = CpuProbe(groups)
    await sleep_until(plan.measure_from)
    probe.begin()
    log_from = server.log_size() if server else 0
    prof: asyncio.subprocess.Process | None = None
    if profile is not None and server is not None:
        seconds = round(plan.end - plan.measure_from)
        prof = await asyncio.create_subprocess_exec(
            *profiler_command(profile[0], server.pid, seconds, profile[1]),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
    await sleep_until(plan.end)
    cores = probe.end()
    out: dict[str, Any] = {"cores": cores}
    if server is not None:
        out["server_ms"] = sorted(
            server_rpc_durations(server.log_path, log_from, server.log_size(), APPEND_METHOD)
        )
    if prof is not None and profile is not None:
        _, err = await prof.communicate()
        ok = prof.returncode == 0
        out["profile"] = f"{profile[0]}: " + (str(profile[1]) if ok else err.decode()[-500:])
    return out


def summarize(
    ctx: Ctx,
    config: str,
    label: str,
    load: str,
    procs: int,
    client: str,
    offered: float | None,
    stats: Stats,
    observed: dict[str, Any],
) -> Result:
    seconds = ctx.args.seconds
    lat = sorted(x * 1000 for x in stats.latencies)
    cores: dict[str, float] = observed["cores"]
    server_ms: list[float] | None = observed.get("server_ms")
    result = Result(
        config=config,
        label=label,
        load=load,
        client_procs=procs,
        client=client,
        seconds=seconds,
        offered_entries_s=offered,
        entries_s=stats.window_entries / seconds,
        batches_s=stats.window_batches / seconds,
        p50_ms=percentile(lat, 50),
        p95_ms=percentile(lat, 95),
        p99_ms=percentile(lat, 99),
        max_ms=lat[-1] if lat else float("nan"),
        server_p50_ms=percentile(server_ms, 50) if server_ms else None,
        server_p99_ms=percentile(server_ms, 99) if server_ms else None,
        round=ctx.round,
        background_cores=round(ctx.background, 3),
    )
    own = sum(v for k, v in cores.items() if k != "machine")
    cores = {**cores, "other": max(0.0, cores.get("machine", 0.0) - own)}
    result.cpu_cores = {k: round(v, 3) for k, v in cores.items()}
    if result.entries_s:
        result.cpu_us_per_entry = {
            k: round(v * 1e6 / result.entries_s, 1) for k, v in cores.items() if k != "other"
        }
    per_client = cores.get("client", 0.0) / max(procs, 1)
    if per_client >= CPU_BOUND:
        result.notes.append(
            f"client-bound: each client process used {per_client:.2f} cores"
            " (one Python event loop saturates near 1.0)"
        )
    if cores.get("server", 0.0) >= CPU_BOUND:
        result.notes.append(f"server event loop CPU-bound: {cores['server']:.2f} cores")
    ncpu = os.cpu_count() or 1
    if cores.get("machine", 0.0) >= 0.9 * ncpu:
        result.notes.append(
            f"machine CPU-bound: {cores['machine']:.2f} of {ncpu} cores busy"
            " (clients, server and PostgreSQL share them)"
        )
    if ctx.background > ctx.args.quiet_cores:
        result.notes.append(
            f"the machine was busy with other work before this run ({ctx.background:.2f} cores)"
        )
    if offered and result.entries_s < 0.95 * offered:
        result.notes.append(
            f"overloaded: reached {result.entries_s:,.0f} of {offered:,.0f} offered entries/s"
        )
    return result


async def verify(
    url: str, tag: str, stats: Stats, corpus: Corpus, sessions: int, summaries: bool
) -> dict[str, Any]:
    """Stored rows == acknowledged entries, no duplicate, and the sampled
    transcripts hold byte-identical entries in append order."""
    n = len(corpus)
    expected_keys = sum(-(-done // n) for done in stats.batches_done.values() if done)
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            """
            SELECT count(*) AS rows,
                   count(DISTINCT (e.key_id, e.uuid)) AS distinct_uuids,
                   count(DISTINCT e.key_id) AS keys
            FROM transcript_keys k JOIN transcript_entries e ON e.key_id = k.key_id
            WHERE k.tenant_id = $1 AND left(k.session_id, length($2)) = $2
            """,
            TENANT,
            tag + "-",
        )
        n_summaries = await conn.fetchval(
            "SELECT count(*) FROM transcript_summaries"
            " WHERE tenant_id = $1 AND left(session_id, length($2)) = $2",
            TENANT,
            tag + "-",
        )
        mismatched: list[str] = []
        sample = sorted(stats.batches_done)[:: max(1, len(stats.batches_done) // 4)]
        for slot in sample:
            done = min(stats.batches_done[slot], n)
            first = start_index(slot, sessions, n)
            want = [t for i in range(done) for t in corpus.texts[(first + i) % n]]
            got = await conn.fetch(
                "SELECT e.entry FROM transcript_keys k JOIN transcript_entries e"
                " ON e.key_id = k.key_id WHERE k.tenant_id = $1 AND k.session_id = $2"
                " ORDER BY e.seq",
                TENANT,
                session_id(tag, slot, 0),
            )
            if [r["entry"] for r in got] != want:
                mismatched.append(session_id(tag, slot, 0))
    finally:
        await conn.close()
    ok = (
        row["rows"] == stats.acked_entries
        and row["distinct_uuids"] == row["rows"]
        and row["keys"] == expected_keys
        and not mismatched
        and (not summaries or n_summaries == expected_keys)
    )
    return {
        "ok": ok,
        "acknowledged_entries": stats.acked_entries,
        "stored_entries": row["rows"],
        "distinct_uuids": row["distinct_uuids"],
        "transcripts": row["keys"],
        "expected_transcripts": expected_keys,
        "summaries": n_summaries,
        "content_checked_sessions": len(sample),
        "content_mismatches": mismatched,
    }


# --- configurations ---------------------------------------------------------------


def own_pid() -> list[int]:
    return [os.getpid()]


async def run_direct(ctx: Ctx, *, sessiond_shape: bool) -> None:
    config = "direct-tx" if sessiond_shape else "direct"
    label = (
        "direct asyncpg, sessiond's 5 round trips"
        if sessiond_shape
        else "direct asyncpg, 1 statement (the limit)"
    )
    base = ctx.args.database_url
    schema = f"{ctx.args.schema_prefix}_r{ctx.round}_{config.replace('-', '_')}"
    async with fresh_schema(base, schema) as url:
        await asyncio.to_thread(create_tenant, url, TENANT)
        await checkpoint(base)
        pool = await asyncpg.create_pool(url, min_size=20, max_size=20)
        try:
            for load, interval, offered in ctx.loads():
                tag = f"{config}-{load}"
                append = direct_append(pool, tag, ctx.corpus, sessiond_shape=sessiond_shape)
                await ctx.settle()
                plan = ctx.plan(interval)
                groups: dict[str, PidSource] = {
                    "client": lambda: [os.getpid()],
                    "postgres": ctx.pg_pids,
                }
                watch = asyncio.create_task(watch_window(plan, groups))
                stats = await drive(
                    range(ctx.args.sessions), ctx.args.sessions, len(ctx.corpus), append, plan
                )
                result = summarize(
                    ctx, config, label, load, 1, "asyncpg", offered, stats, await watch
                )
                result.verify = await verify(
                    url, tag, stats, ctx.corpus, ctx.args.sessions, sessiond_shape
                )
                report(ctx, result)
                if config == "direct" and load == "saturation" and not ctx.offered:
                    ctx.offered = ctx.args.paced_fraction * result.entries_s
        finally:
            await pool.close()


async def run_process(ctx: Ctx) -> None:
    base = ctx.args.database_url
    for procs in ctx.args.client_procs:
        config = "process"
        label = f"sessiond, server process, {procs} client proc{'s' if procs > 1 else ''}"
        schema = f"{ctx.args.schema_prefix}_r{ctx.round}_process{procs}"
        async with fresh_schema(base, schema) as url:
            token = await asyncio.to_thread(create_tenant, url, TENANT)
            server = await asyncio.to_thread(
                ServerProcess.start, url, ctx.workdir / schema, log_level=ctx.args.server_log_level
            )
            try:
                await checkpoint(base)
                for load, interval, offered in ctx.loads():
                    tag = f"process{procs}-{load}"
                    slots = list(range(ctx.args.sessions))
                    specs = [
                        ClientSpec(
                            target=server.target,
                            token=token,
                            tag=tag,
                            slots=tuple(slots[i::procs]),
                            sessions=ctx.args.sessions,
                            seed=ctx.args.seed,
                            corpus_batches=ctx.args.corpus_batches,
                            client=ctx.args.client,
                        )
                        for i in range(procs)
                    ]
                    profile = None
                    if ctx.args.profile and load == "saturation":
                        ctx.args.profile.mkdir(parents=True, exist_ok=True)
                        ext = "perf.data" if ctx.args.profiler == "perf" else "txt"
                        out = ctx.args.profile / f"server-r{ctx.round}-{tag}.{ext}"
                        profile = (ctx.args.profiler, out)

                    async def on_plan(
                        plan: Plan,
                        pids: list[int],
                        profile: tuple[str, Path] | None = profile,
                        server: ServerProcess = server,
                    ) -> dict[str, Any]:
                        groups: dict[str, PidSource] = {
                            "client": lambda: pids,
                            "server": lambda: [server.pid],
                            "postgres": ctx.pg_pids,
                        }
                        return await watch_window(plan, groups, server, profile)

                    await ctx.settle()
                    stats, observed = await drive_in_processes(
                        specs, functools.partial(ctx.plan, interval), on_plan
                    )
                    result = summarize(
                        ctx, config, label, load, procs, ctx.args.client, offered, stats, observed
                    )
                    if "profile" in observed:
                        result.notes.append(f"profiled with {observed['profile']}")
                    result.verify = await verify(
                        url, tag, stats, ctx.corpus, ctx.args.sessions, True
                    )
                    report(ctx, result)
            finally:
                await asyncio.to_thread(server.stop)


async def run_inprocess(ctx: Ctx) -> None:
    base = ctx.args.database_url
    schema = f"{ctx.args.schema_prefix}_r{ctx.round}_inprocess"
    async with (
        fresh_schema(base, schema) as url,
        inprocess_server(
            url, ctx.workdir / schema, TENANT, log_level=ctx.args.server_log_level
        ) as (target, token),
    ):
        await checkpoint(base)
        for load, interval, offered in ctx.loads():
            tag = f"inprocess-{load}"
            slots = range(ctx.args.sessions)
            factory = store_append if ctx.args.client == "store" else raw_append
            append, close = factory(target, token, tag, ctx.corpus, slots)
            await ctx.settle()
            plan = ctx.plan(interval)
            groups: dict[str, PidSource] = {
                "client": lambda: [os.getpid()],
                "postgres": ctx.pg_pids,
            }
            watch = asyncio.create_task(watch_window(plan, groups))
            try:
                stats = await drive(slots, ctx.args.sessions, len(ctx.corpus), append, plan)
            finally:
                await close()
            result = summarize(
                ctx,
                "inprocess",
                "sessiond in-process (server + clients, one loop)",
                load,
                1,
                ctx.args.client,
                offered,
                stats,
                await watch,
            )
            result.notes.append("client CPU includes the server (same process)")
            result.verify = await verify(url, tag, stats, ctx.corpus, ctx.args.sessions, True)
            report(ctx, result)


# --- reporting ---------------------------------------------------------------------


def report(ctx: Ctx, result: Result) -> None:
    ctx.results.append(result)
    v = result.verify
    status = "ok" if v.get("ok") else "FAILED"
    print(
        f"  {result.label} [{result.load}]: {result.entries_s:,.0f} entries/s,"
        f" p50 {fmt(result.p50_ms)} ms, p99 {fmt(result.p99_ms)} ms;"
        f" verify {status} ({v.get('stored_entries')}/{v.get('acknowledged_entries')} rows)",
        flush=True,
    )
    for note in result.notes:
        print(f"    note: {note}", flush=True)


def medians(results: Sequence[Result]) -> list[Result]:
    """Per (configuration, load): the run with the median entries/s (the
    lower one for an even count), so each row's figures stay one run's."""
    groups: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        groups.setdefault((r.label, r.load), []).append(r)
    out = []
    for runs in groups.values():
        ranked = sorted(runs, key=lambda r: r.entries_s)
        out.append(ranked[(len(ranked) - 1) // 2])
    return out


def direct_rate(rows: Sequence[Result]) -> float:
    for r in rows:
        if r.config == "direct" and r.load == "saturation":
            return r.entries_s
    return 0.0


def _load(r: Result) -> str:
    return r.load if r.offered_entries_s is None else f"paced {r.offered_entries_s:,.0f}/s"


def figures_table(rows: Sequence[Result], runs: int) -> str:
    base = direct_rate(rows)
    headers = ["configuration", "load", "entries/s", "batches/s", "p50 ms", "p95 ms"]
    headers += ["p99 ms", "server p99 ms", "vs direct"]
    body = [
        [
            r.label,
            _load(r),
            fmt(r.entries_s),
            fmt(r.batches_s),
            fmt(r.p50_ms),
            fmt(r.p95_ms),
            fmt(r.p99_ms),
            fmt(r.server_p99_ms),
            ratio(r.entries_s, base),
        ]
        for r in rows
    ]
    note = f"(median of {runs} runs each)" if runs > 1 else ""
    return markdown_table(headers, body) + (f"\n\n{note}" if note else "")


def service_us(r: Result) -> float:
    """CPU per entry on the service side: what would still run on this box
    if the callers ran elsewhere (sessiond: server + PostgreSQL; direct:
    the asyncpg caller + PostgreSQL, since it does the server's part)."""
    c = r.cpu_us_per_entry
    if r.config == "process":
        return c.get("server", 0.0) + c.get("postgres", 0.0)
    return c.get("client", 0.0) + c.get("postgres", 0.0)


def cpu_table(rows: Sequence[Result]) -> str:
    ncpu = os.cpu_count() or 1
    saturated = [r for r in rows if r.load == "saturation"]
    base = next((r for r in saturated if r.config == "direct"), None)
    base_est = ncpu * 1e6 / service_us(base) if base and service_us(base) else 0.0
    headers = ["configuration", "cores: client", "server", "PG", "other", "box"]
    headers += ["µs/entry: client", "server", "PG", "est. entries/s, clients off-box"]
    body = []
    for r in saturated:
        c, u = r.cpu_cores, r.cpu_us_per_entry
        svc = service_us(r)
        est = ncpu * 1e6 / svc if svc and r.config != "inprocess" else float("nan")
        body.append(
            [
                r.label,
                fmt(c.get("client"), 2),
                fmt(c.get("server"), 2),
                fmt(c.get("postgres"), 2),
                fmt(c.get("other"), 2),
                fmt(c.get("machine"), 2),
                fmt(u.get("client")),
                fmt(u.get("server")),
                fmt(u.get("postgres")),
                f"{fmt(est)} ({ratio(est, base_est)})" if est == est else "–",
            ]
        )
    return markdown_table(headers, body)


def verdicts(rows: Sequence[Result]) -> list[str]:
    base = direct_rate(rows)
    out = []
    for r in rows:
        if r.config != "process":
            continue
        if r.load == "saturation":
            if not base:
                continue
            share = r.entries_s / base
            out.append(
                f"{r.label}: throughput {share:.0%} of direct (target ≥ {TARGET_RATIO:.0%}):"
                f" {'PASS' if share >= TARGET_RATIO else 'MISS'}; p99 at saturation"
                f" {fmt(r.p99_ms)} ms"
            )
        else:
            met = r.p99_ms <= TARGET_P99_MS and not any(n.startswith("overloaded") for n in r.notes)
            out.append(
                f"{r.label}: p99 {fmt(r.p99_ms)} ms at {fmt(r.offered_entries_s)} entries/s"
                f" offered (target ≤ {TARGET_P99_MS:.0f} ms): {'PASS' if met else 'MISS'}"
            )
    return out


async def background_load(seconds: float = 2.0) -> float:
    """Busy cores of the machine before the benchmark starts (the box may be
    shared; this is reported next to the figures)."""
    probe = CpuProbe({})
    probe.begin()
    await asyncio.sleep(seconds)
    return probe.end()["machine"]


# --- main --------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.bench_append",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--database-url",
        default=default_database_url(),
        help="PostgreSQL server (env SESSIOND_BENCH_DATABASE_URL; default %(default)s)",
    )
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before")
    p.add_argument("--sessions", type=int, default=64, help="concurrent sessions")
    p.add_argument(
        "--server-process",
        action="store_true",
        help="only the limit and sessiond in a server process (skip direct-tx, in-process)",
    )
    p.add_argument(
        "--configs",
        default=",".join(ALL_CONFIGS),
        help="comma-separated subset of %(default)s",
    )
    p.add_argument(
        "--client-procs",
        default="1,2",
        help="client process counts to try against the server process (default %(default)s)",
    )
    p.add_argument(
        "--client",
        choices=["store", "raw"],
        default="store",
        help="store: SessiondSessionStore.append (the SDK's path, serializes each entry);"
        " raw: AsyncClient.append_entries with pre-serialized JSON",
    )
    p.add_argument(
        "--paced-fraction",
        type=float,
        default=TARGET_RATIO,
        help="paced runs offer this fraction of the direct throughput; 0 disables"
        " (default %(default)s)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run the whole sequence N times (interleaved) and report medians",
    )
    p.add_argument(
        "--quiet-cores",
        type=float,
        default=0.25,
        help="before each run, wait until the rest of the machine uses fewer cores"
        " than this (default %(default)s)",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="longest wait for that, in seconds; the run then goes ahead with a note"
        " (default %(default)s)",
    )
    p.add_argument("--corpus-batches", type=int, default=1024)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--server-log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="profile the server process during each of its saturation windows into DIR;"
        " this perturbs the figures, so profile in a separate run",
    )
    p.add_argument(
        "--profiler",
        choices=["py-spy", "py-spy-native", "perf"],
        default="py-spy",
        help="py-spy: collapsed Python stacks of the GIL holder; py-spy-native: with C"
        " frames; perf: on-CPU samples with kernel and C frames (default %(default)s)",
    )
    p.add_argument("--output", type=Path, default=None, help="JSON results path")
    args = p.parse_args(argv)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    if args.server_process:
        args.configs = ["direct", "process"]
    unknown = set(args.configs) - set(ALL_CONFIGS)
    if unknown:
        p.error(f"unknown configs: {', '.join(sorted(unknown))}")
    args.client_procs = [int(x) for x in args.client_procs.split(",") if x.strip()]
    args.schema_prefix = new_schema_name()
    return args


async def main_async(args: argparse.Namespace) -> int:
    info = await machine_info(args.database_url)
    print(describe_machine(info), flush=True)
    t0 = time.monotonic()
    corpus = build_corpus(args.seed, args.corpus_batches)
    print(
        f"- workload: {args.sessions} sessions; corpus of {len(corpus)} batches,"
        f" {sum(len(b) for b in corpus.entries):,} entries, mean {corpus.mean_batch:.1f}"
        f" entries/batch, mean {corpus.mean_entry_bytes:,.0f} B/entry"
        f" (built in {time.monotonic() - t0:.1f} s, seed {args.seed});"
        f" {args.warmup:g} s warm-up + {args.seconds:g} s measured per run;"
        f" client: {args.client}",
        flush=True,
    )
    idle = await background_load()
    print(f"- background load before start: {idle:.2f} busy cores", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="sessiond-bench-"))
    postmaster = await postmaster_pid(args.database_url)
    if postmaster is None:
        print("- PostgreSQL is not on this machine: its CPU is not measured", flush=True)
    ctx = Ctx(args=args, corpus=corpus, postmaster=postmaster, workdir=workdir)
    try:
        for ctx.round in range(1, args.repeat + 1):
            if args.repeat > 1:
                print(f"round {ctx.round} of {args.repeat}", flush=True)
            for config in ALL_CONFIGS:
                if config not in args.configs:
                    continue
                if config in ("direct", "direct-tx"):
                    await run_direct(ctx, sessiond_shape=config == "direct-tx")
                elif config == "process":
                    await run_process(ctx)
                else:
                    await run_inprocess(ctx)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    rows = medians(ctx.results)
    print()
    print(figures_table(rows, args.repeat))
    print()
    print(cpu_table(rows))
    print()
    for line in verdicts(rows):
        print(f"- {line}")
    for r in rows:
        for note in r.notes:
            print(f"- {r.label} [{r.load}]: {note}")
    failed = [r for r in ctx.results if not r.verify.get("ok")]
    for r in failed:
        print(f"- VERIFY FAILED {r.label} [{r.load}] round {r.round}: {r.verify}")
    if not failed:
        print(f"- verified: all {len(ctx.results)} runs stored exactly the acknowledged entries")
    stamp = datetime.now(UTC).strftime("%Y-%m-%d-%H%M%S")
    path = args.output or RESULTS_DIR / f"append-{stamp}.json"
    payload = {
        "benchmark": "append",
        "machine": {**info, "background_busy_cores": round(idle, 3)},
        "parameters": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k != "database_url"
        },
        "workload": {
            "batches": len(corpus),
            "entries": sum(len(b) for b in corpus.entries),
            "mean_batch": corpus.mean_batch,
            "mean_entry_bytes": corpus.mean_entry_bytes,
        },
        "direct_entries_s": direct_rate(rows),
        "summary": [asdict(r) for r in rows],
        "runs": [asdict(r) for r in ctx.results],
        "verdicts": verdicts(rows),
        "tables": {"figures": figures_table(rows, args.repeat), "cpu": cpu_table(rows)},
    }
    print(f"\nresults: {write_json(path, payload)}")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(main_async(args))
    return 130


if __name__ == "__main__":
    sys.exit(main())
