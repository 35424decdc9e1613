"""Append benchmark (issue #3): sessiond's transcript append path against the
same inserts done directly with asyncpg, in one run.

    python -m bench.bench_append [--database-url URL] [--seconds N] [--sessions 64]
                                 [--server-process] [--repeat N] [--profile DIR]

``--sessions`` concurrent sessions each append batches of 10–50
Claude-Code-shaped transcript entries of 1–4 KB (seeded, generated before
any timing) as fast as they get answers ("saturation"), then at fixed
offered loads ("paced": by default 50 % of what the direct inserts reached —
the throughput target, so the latency target is checked at the load the
throughput target names — and 20 %). Configurations:

``direct``     the limit: one statement per batch on a pool of 20 asyncpg
               connections (key-row upsert + ``INSERT … SELECT FROM unnest``
               of the entries, autocommit: one round trip, one transaction,
               no reset query on release), into sessiond's own tables; no
               gRPC, no validation, no summary.
``direct-tx``  diagnostic: the same, in sessiond's transaction shape (BEGIN,
               the upsert+insert, read summary, write summary, COMMIT, and
               asyncpg's reset query on release: 6 round trips).
``process``    ``sessiond serve --auth api-key`` in its own process; clients
               are ``SessiondSessionStore.append`` (what the SDK calls) in 1
               and in 2 client processes (``--client-procs``).
``inprocess``  server and clients in one event loop.

Each configuration gets a fresh schema ``bench_<random>_r<round>_<config>``
(dropped CASCADE afterwards) so none inherits another's table sizes, and a
CHECKPOINT before it starts. Every run ends with a check that the stored
rows are exactly the acknowledged entries: same count, no duplicate,
byte-identical for sampled sessions. Results: markdown tables on stdout and
``bench/results/append-<date>-<time>.json``. The workload and load drivers
are in :mod:`bench.append_workload`, the tables in :mod:`bench.append_report`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from .append_report import (
    TARGET_RATIO,
    Result,
    cpu_table,
    direct_rate,
    figures_table,
    load_name,
    medians,
    verdicts,
)
from .append_workload import (
    TENANT,
    ClientSpec,
    Corpus,
    Plan,
    Stats,
    build_corpus,
    direct_append,
    drive,
    drive_in_processes,
    raw_append,
    session_id,
    start_index,
    store_append,
)
from .common import (
    RESULTS_DIR,
    CpuProbe,
    PidSource,
    ServerProcess,
    background_load,
    checkpoint,
    child_pids,
    create_tenant,
    default_database_url,
    describe_machine,
    fmt,
    fresh_schema,
    inprocess_server,
    machine_info,
    new_schema_name,
    percentile,
    postmaster_pid,
    profiler_command,
    server_rpc_durations,
    sleep_until,
    write_json,
)

APPEND_METHOD = "/sessiond.v1.TranscriptService/Append"
ALL_CONFIGS = ("direct", "direct-tx", "process", "inprocess")
# A Python process whose event loop is busy this share of a core or more is
# the bottleneck of whatever it drives.
CPU_BOUND = 0.85


# --- one measured run --------------------------------------------------------------


@dataclass
class Ctx:
    args: argparse.Namespace
    corpus: Corpus
    postmaster: int | None
    workdir: Path
    results: list[Result] = field(default_factory=list)
    # Direct entries/s of the first round: the paced runs offer fractions of it.
    direct_base: float = 0.0
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
        """(load name, per-session interval, paced fraction) to run: the
        saturation run, then (lazily, once the first direct saturation run
        has set ``direct_base``) one paced run per ``--paced-fraction``."""
        yield "saturation", 0.0, None
        for fraction in self.args.paced_fraction:
            if self.direct_base > 0:
                offered = fraction * self.direct_base
                yield "paced", self.args.sessions * self.corpus.mean_batch / offered, fraction

    def pg_pids(self) -> list[int]:
        if self.postmaster is None:
            return []
        return [self.postmaster, *child_pids(self.postmaster)]


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
    fraction: float | None,
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
        paced_fraction=fraction,
        offered_entries_s=None if fraction is None else fraction * ctx.direct_base,
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
    offered = result.offered_entries_s
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


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset hook that sends nothing to the server."""


def run_tag(config: str, load: str, fraction: float | None) -> str:
    """Prefix of the session ids of one run (verification counts by it)."""
    return f"{config}-{load}" if fraction is None else f"{config}-{load}{fraction * 100:.0f}"


def own_pid() -> list[int]:
    return [os.getpid()]


async def run_direct(ctx: Ctx, *, sessiond_shape: bool) -> None:
    config = "direct-tx" if sessiond_shape else "direct"
    label = (
        "direct asyncpg, sessiond's 6 round trips"
        if sessiond_shape
        else "direct asyncpg, 1 statement (the limit)"
    )
    base = ctx.args.database_url
    schema = f"{ctx.args.schema_prefix}_r{ctx.round}_{config.replace('-', '_')}"
    async with fresh_schema(base, schema) as url:
        await asyncio.to_thread(create_tenant, url, TENANT)
        await checkpoint(base)
        # The limit skips asyncpg's reset query on release (one more round
        # trip the schema does not need); direct-tx keeps it, like sessiond.
        reset = None if sessiond_shape else _keep_session
        pool = await asyncpg.create_pool(url, min_size=20, max_size=20, reset=reset)
        try:
            for load, interval, fraction in ctx.loads():
                tag = run_tag(config, load, fraction)
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
                    ctx, config, label, load, 1, "asyncpg", fraction, stats, await watch
                )
                result.verify = await verify(
                    url, tag, stats, ctx.corpus, ctx.args.sessions, sessiond_shape
                )
                report(ctx, result)
                if config == "direct" and load == "saturation" and not ctx.direct_base:
                    ctx.direct_base = result.entries_s
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
                for load, interval, fraction in ctx.loads():
                    tag = run_tag(f"process{procs}", load, fraction)
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
                            batch_entries=ctx.args.batch_entries,
                            entry_bytes=ctx.args.entry_bytes,
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
                        ctx, config, label, load, procs, ctx.args.client, fraction, stats, observed
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
        for load, interval, fraction in ctx.loads():
            tag = run_tag("inprocess", load, fraction)
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
                fraction,
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
        f"  {result.label} [{load_name(result)}]: {result.entries_s:,.0f} entries/s,"
        f" p50 {fmt(result.p50_ms)} ms, p99 {fmt(result.p99_ms)} ms;"
        f" verify {status} ({v.get('stored_entries')}/{v.get('acknowledged_entries')} rows)",
        flush=True,
    )
    for note in result.notes:
        print(f"    note: {note}", flush=True)


# --- main ---------------------------------------------------------------------------


def _fractions(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected fractions like 0.5,0.2, got {text!r}") from None
    return tuple(v for v in values if v > 0)


def _range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    try:
        bounds = (int(low), int(high or low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN-MAX, got {text!r}") from None
    if not 0 < bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"expected 0 < MIN <= MAX, got {text!r}")
    return bounds


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
        type=_fractions,
        default=(TARGET_RATIO, 0.2),
        metavar="F[,F…]",
        help="one paced run per fraction of the direct throughput; 0 disables"
        f" (default {TARGET_RATIO},0.2: the target's load, and a lighter one)",
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
    p.add_argument(
        "--batch-entries",
        type=_range,
        default=(10, 50),
        metavar="MIN-MAX",
        help="entries per batch, uniform (default 10-50: the SDK's batches)",
    )
    p.add_argument(
        "--entry-bytes",
        type=_range,
        default=(1024, 4096),
        metavar="MIN-MAX",
        help="JSON bytes per entry, uniform (default 1024-4096)",
    )
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
    corpus = build_corpus(args.seed, args.corpus_batches, args.batch_entries, args.entry_bytes)
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
            print(f"- {r.label} [{load_name(r)}]: {note}")
    failed = [r for r in ctx.results if not r.verify.get("ok")]
    for r in failed:
        print(f"- VERIFY FAILED {r.label} [{load_name(r)}] round {r.round}: {r.verify}")
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


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so that servers are
    # stopped and schemas dropped on the way out.
    signal.signal(signal.SIGTERM, _interrupt)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(main_async(args))
    return 130


if __name__ == "__main__":
    sys.exit(main())
