"""Resume benchmark (issue #5): cold resume of a suspended session with a
W1-sized workspace (~30 MB / 3k files), next to the bare CLI's own time to
its first message with the workspace already in place (the limit), in one
run, against the same fake Messages API.

    python -m bench.bench_resume [--backend embedded|pg-s3] [--repeat 5] [--warmup 1]
                                 [--database-url URL] [--settle S] [--profile DIR]

Setup: a seeded W1 (:mod:`bench.workspace_gen`) packed into a tarball; the
fake Messages API (``tests.fakeapi``) in this process; a real ``sessiond
serve`` subprocess on 127.0.0.1 (``embedded``: SQLite + local blobs + local
sandboxes in a temp data dir; ``pg-s3``: a fresh PostgreSQL schema and a
SeaweedFS ``weed mini`` on free loopback ports, stopped by PID) with the
environment and allowlist of ``tests/e2e/agent_env.py``. A session runs turn
1, in which the agent's Bash tool unpacks the tarball into the sandbox's
working directory; the session is suspended (snapshot + destroy). The bare
CLI gets the same turn 1 in a directory of its own.

Then ``--warmup`` unmeasured and ``--repeat`` measured rounds, each after
``--settle`` seconds (a suspend has just deleted a sandbox, and this disk
creates files slowly for a while after a large ``rm -rf``: a user coming
back after the idle timeout never pays that) and after waiting up to
``--quiet-wait`` s for other load on the box to drop, of:

* **cold resume**: ``Query`` → first streamed ``SdkMessage`` (and → result,
  → end of stream) on the suspended session;
* **bare CLI** (the limit): ``claude_agent_sdk.query(prompt,
  ClaudeAgentOptions(cwd=<W1>, resume=<its session>, env=cli_env(…)))`` →
  first message (→ result), right after, in the same conditions;
* the hydrated workdir is checked against W1, and ``Suspend`` (snapshot +
  destroy) is timed for reference.

The target is checked on the per-round difference (cold − bare). Besides
wall time, the CPU seconds of the processes on the path to the first
message are reported: they barely move with other load on a shared box.

Phases: status events (``PHASE_HYDRATING``/``PHASE_RUNNING``) timestamped
here, the server's ``hydrated … seconds=`` log line, and the processes a turn
starts (hydrator ``restore``/``run``, the CLI) timestamped from ``/proc``
(:mod:`bench.resume_trace`). ``--profile DIR`` adds interpreter start-up
probes, ``-X importtime`` and one extra resume recorded by ``py-spy
--subprocesses``. Results: markdown on stdout and
``bench/results/resume-<date>-<time>-<backend>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fnmatch
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from claude_agent_sdk import ClaudeAgentOptions, ResultMessage, query

from sessiond.api.v1 import sessions_pb2
from sessiond.client import AsyncClient
from tests.e2e.agent_env import ALLOWLIST, server_environ
from tests.fakeapi import FakeMessagesAPI, cli_env, text, tool_use

from . import resume_trace as trace
from .common import (
    RESULTS_DIR,
    CpuProbe,
    ServerProcess,
    default_database_url,
    fresh_schema,
    new_schema_name,
    sessiond_command,
    write_json,
)
from .resume_report import Run, Sample, profile_text, report
from .workspace_gen import SPECS, Spec, diff_digests, generate, tree_digest

SETUP_PROMPT = "Unpack the workspace tarball here."
_READY = re.compile(rb"sessiond ready on port (\d+)")
_HYDRATED = re.compile(rb"hydrated session=(\S+).*?seconds[=\":\s]+([0-9.]+)")
_PHASE = sessions_pb2.QueryStatus.Phase


# --- setup -------------------------------------------------------------------------


def make_workspace(spec: Spec, root: Path, seed: int) -> tuple[Path, dict[str, str]]:
    """Generate ``spec`` under ``root/src`` and pack it into ``root/w.tar``
    (plain tar: the agent's Bash unpacks it). Returns the tarball and the
    source's digest."""
    src = root / "src"
    generate(spec, src, seed)
    tarball = root / "w.tar"
    with tarfile.open(tarball, "w") as tar:
        for entry in sorted(os.listdir(src)):
            tar.add(src / entry, arcname=entry)
    return tarball, tree_digest(src)


def check_workspace(cwd: Path, want: dict[str, str]) -> None:
    """Every W1 entry is in ``cwd`` with the same type, mode, size and bytes
    (the CLI may add entries of its own)."""
    got = tree_digest(cwd)
    missing = {k: v for k, v in want.items() if got.get(k) != v}
    if missing:
        diff = diff_digests(want, {k: got[k] for k in want if k in got})
        raise RuntimeError(f"{cwd}: {len(missing)} W1 entries differ: {diff}")


def server_env(api: FakeMessagesAPI) -> dict[str, str]:
    """This process's environment without anything that would configure
    sessiond or leak into a sandbox through the allowlist, plus the e2e
    tests' server environment (the fake API's URL and key, …)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SESSIOND_") and not any(fnmatch.fnmatchcase(k, p) for p in ALLOWLIST)
    }
    env.update(server_environ(api))
    return env


def start_server(
    workdir: Path, env: dict[str, str], database_url: str | None, blob_url: str | None
) -> ServerProcess:
    """``sessiond serve --auth none`` on a free loopback port; the embedded
    default unless URLs are given (the blob URL, which holds the S3 key, goes
    through the environment, not the command line)."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "server.log"
    env = dict(env)
    cmd = [
        *sessiond_command(),
        "serve",
        "--listen", "127.0.0.1:0",
        "--data-dir", str(workdir / "data"),
        "--auth", "none",
        "--idle-timeout", "86400",
        "--env-allowlist", ",".join(ALLOWLIST),
        "--drain-seconds", "5",
        "--log-level", "INFO",
    ]  # fmt: skip
    if database_url:
        cmd += ["--database-url", database_url]
    if blob_url:
        env["SESSIOND_BLOB_URL"] = blob_url
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        match = _READY.search(log_path.read_bytes())
        if match:
            return ServerProcess(proc=proc, port=int(match.group(1)), log_path=log_path)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    ServerProcess(proc=proc, port=0, log_path=log_path).stop()
    raise RuntimeError(f"sessiond serve did not become ready:\n{log_path.read_text()[-2000:]}")


@contextlib.asynccontextmanager
async def storage(
    backend: str, root: Path, database_url: str
) -> AsyncIterator[tuple[str | None, str | None, dict[str, Any]]]:
    """(database URL, blob URL, facts) for ``backend``: None, None for the
    embedded default; a fresh schema and a SeaweedFS bucket for pg-s3."""
    if backend == "embedded":
        yield None, None, {"metadata": "sqlite (embedded)", "blobs": "local dir (embedded)"}
        return
    from tests.fixtures.seaweedfs import SeaweedFS

    weed = SeaweedFS(root / "weed")
    took = await asyncio.to_thread(weed.start)
    try:
        bucket = f"bench-resume-{secrets.token_hex(4)}"
        weed.admin.create_bucket(Bucket=bucket)
        async with fresh_schema(database_url, new_schema_name("bench_resume")) as url:
            facts = {
                "metadata": "postgresql (" + url.rpartition("@")[2].split("?")[0] + ")",
                "blobs": f"seaweedfs weed mini (pid {weed.pid}, ready in {took:.2f}s)",
            }
            yield url, weed.url(bucket, "bench", create_bucket="1"), facts
    finally:
        weed.kill()


# --- one measured turn ------------------------------------------------------------


def _hydrated_seconds(server: ServerProcess, offset: int, session_id: str) -> float | None:
    with server.log_path.open("rb") as f:
        f.seek(offset)
        chunk = f.read()
    for m in _HYDRATED.finditer(chunk):
        if m.group(1).decode().strip('",') == session_id:
            return float(m.group(2))
    return None


async def cold_resume(
    client: AsyncClient,
    server: ServerProcess,
    tracer: trace.ProcessTracer,
    session_id: str,
    prompt: str,
) -> Sample:
    offset = server.log_size()
    probe = CpuProbe({})
    probe.begin()
    t0 = trace.now()
    first = result = None
    first_type = ""
    statuses: dict[str, float] = {}
    async for event in client.query(session_id, prompt, deadline=300):
        t = trace.now() - t0
        if event.HasField("status"):
            name = _PHASE.Name(event.status.phase).removeprefix("PHASE_").lower()
            statuses.setdefault(name, round(t, 4))
        elif event.HasField("message"):
            if first is None:
                first, first_type = t, event.message.type
            if event.message.type == "result":
                if json.loads(event.message.json).get("is_error"):
                    raise RuntimeError(f"the resumed turn failed: {event.message.json[:300]}")
                result = t
    end = trace.now() - t0
    busy = probe.end()["machine"]
    if first is None or result is None:
        raise RuntimeError(f"no first message or no result: statuses {statuses}")
    await asyncio.sleep(0.05)  # let the tracer see the last exits
    procs = tracer.started_between(t0, t0 + end)
    return Sample(
        first_message=round(first, 4),
        first_type=first_type,
        result=round(result, 4),
        end=round(end, 4),
        statuses=statuses,
        timeline=trace.resume_timeline(
            procs, next(iter(tracer.of_kind("server")), None), t0, t0 + first
        ),
        hydrated_seconds=_hydrated_seconds(server, offset, session_id),
        machine_busy_cores=round(busy, 2),
        processes=trace.as_dicts(procs, t0),
    )


async def bare_turn(
    tracer: trace.ProcessTracer, options: ClaudeAgentOptions, prompt: str
) -> tuple[Sample, str]:
    """One ``query()`` of the bare CLI; returns the sample and the session id."""
    probe = CpuProbe({})
    probe.begin()
    t0 = trace.now()
    first = result = None
    first_type = session_id = ""
    async for message in query(prompt=prompt, options=options):
        t = trace.now() - t0
        if first is None:
            first, first_type = t, type(message).__name__
        if isinstance(message, ResultMessage):
            if message.is_error:
                raise RuntimeError(f"the bare turn failed: {message.result}")
            result, session_id = t, message.session_id
    end = trace.now() - t0
    busy = probe.end()["machine"]
    if first is None or result is None:
        raise RuntimeError("the bare CLI produced no result")
    await asyncio.sleep(0.05)
    procs = tracer.started_between(t0, t0 + end)
    sample = Sample(
        first_message=round(first, 4),
        first_type=first_type,
        result=round(result, 4),
        end=round(end, 4),
        timeline=trace.bare_timeline(procs, t0, t0 + first),
        machine_busy_cores=round(busy, 2),
        processes=trace.as_dicts(procs, t0),
    )
    return sample, session_id


async def wait_quiet(max_cores: float, max_wait: float) -> float:
    """Wait (up to ``max_wait`` s) until the machine is below ``max_cores``
    busy cores over a 1 s window; returns the last reading. The box may be
    shared: the reading is reported with every round."""
    deadline = time.monotonic() + max_wait
    while True:
        probe = CpuProbe({})
        probe.begin()
        await asyncio.sleep(1.0)
        busy = probe.end()["machine"]
        if busy <= max_cores or time.monotonic() >= deadline:
            return round(busy, 2)


# --- the run ---------------------------------------------------------------------


async def run_bench(args: argparse.Namespace, root: Path) -> Run:
    spec = SPECS[args.workspace]
    run = Run(backend=args.backend)
    run.setup.update(warmup=args.warmup, settle=args.settle)
    t = time.monotonic()
    tarball, digest = await asyncio.to_thread(make_workspace, spec, root / "w", args.seed)
    run.setup["workspace"] = {
        "spec": spec.name,
        "files": sum(1 for v in digest.values() if v.startswith("f ")),
        "bytes": sum(int(v.split()[2]) for v in digest.values() if v.startswith("f ")),
        "tar_bytes": tarball.stat().st_size,
        "generate_seconds": round(time.monotonic() - t, 2),
    }
    unpack = tool_use("Bash", {"command": f"tar -xf {tarball}"})
    tracer = trace.ProcessTracer(os.getpid()).start()
    api = FakeMessagesAPI().start()
    try:
        async with storage(args.backend, root, args.database_url) as (db_url, blob_url, facts):
            run.setup["storage"] = facts
            server = await asyncio.to_thread(
                start_server, root / "server", server_env(api), db_url, blob_url
            )
            try:
                async with AsyncClient(server.target, timeout=120) as client:
                    await measure(args, run, api, client, server, tracer, unpack, digest, root)
            finally:
                await asyncio.to_thread(server.stop)
                run.setup["server_log_tail"] = server.log_path.read_text(errors="replace")[-3000:]
    finally:
        api.stop()
        tracer.stop()
    return run


async def measure(
    args: argparse.Namespace,
    run: Run,
    api: FakeMessagesAPI,
    client: AsyncClient,
    server: ServerProcess,
    tracer: trace.ProcessTracer,
    unpack: Any,
    digest: dict[str, str],
    root: Path,
) -> None:
    # sessiond: turn 1 puts W1 in place, then the session is suspended.
    session = await client.create_session(labels={"bench": "resume"})
    sid = session.session_id
    api.add_turn(unpack, text("Unpacked."))
    t = time.monotonic()
    events = [e async for e in client.query(sid, SETUP_PROMPT, deadline=600)]
    if not any(e.HasField("message") and e.message.type == "result" for e in events):
        raise RuntimeError("turn 1 on sessiond produced no result")
    run.setup["sessiond_turn1_seconds"] = round(time.monotonic() - t, 2)
    check_workspace(Path((await client.get_session(sid)).sandbox_cwd), digest)
    t = time.monotonic()
    await client.suspend(sid)
    run.setup["first_suspend_seconds"] = round(time.monotonic() - t, 2)

    # The limit: the bare CLI, same turn 1 in a directory of its own.
    bare_root = root / "bare"
    cwd = bare_root / "work"
    cwd.mkdir(parents=True)
    env = cli_env(api.base_url, bare_root)
    api.add_turn(unpack, text("Unpacked."))
    first_opts = ClaudeAgentOptions(cwd=str(cwd), env=env, permission_mode="bypassPermissions")
    _, bare_sid = await bare_turn(tracer, first_opts, SETUP_PROMPT)
    check_workspace(cwd, digest)

    for i in range(args.warmup + args.repeat):
        measured = i >= args.warmup
        tag = f"round {i - args.warmup + 1}" if measured else f"warm-up {i + 1}"
        # The suspend just deleted a sandbox: file creation on this disk is
        # slow for a while after a big rm -rf, which a user coming back
        # after the idle timeout never sees.
        await asyncio.sleep(args.settle)
        busy = await wait_quiet(args.quiet_cores, args.quiet_wait)
        cold = await cold_resume(client, server, tracer, sid, f"Resume check {i}.")
        opts = ClaudeAgentOptions(
            cwd=str(cwd), resume=bare_sid, env=env, permission_mode="bypassPermissions"
        )
        bare, bare_sid = await bare_turn(tracer, opts, f"Resume check {i}.")
        if not args.no_check:
            sandbox = Path((await client.get_session(sid)).sandbox_cwd)
            await asyncio.to_thread(check_workspace, sandbox, digest)
        t = time.monotonic()
        await client.suspend(sid)
        cold.suspend_seconds = round(time.monotonic() - t, 3)
        print(
            f"{tag}: cold resume → first message {cold.first_message:.3f}s"
            f" (hydrated {cold.hydrated_seconds}s), bare {bare.first_message:.3f}s;"
            f" other load {busy} cores",
            file=sys.stderr,
        )
        if measured:
            run.cold.append(cold)
            run.bare.append(bare)
            run.background_cores.append(busy)

    if args.profile:
        run.profile = await profile(args.profile, root, client, server, tracer, sid, args.settle)


async def profile(
    out_dir: Path,
    root: Path,
    client: AsyncClient,
    server: ServerProcess,
    tracer: trace.ProcessTracer,
    sid: str,
    settle: float,
) -> dict[str, Any]:
    """Start-up probes, import times, one resume under py-spy, and a
    standalone restore timed and under py-spy."""
    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "startup_probes_seconds": await asyncio.to_thread(trace.startup_probes),
        "import_times_run": await asyncio.to_thread(
            trace.import_times,
            "import sessiond.hydrator.cli, sessiond.hydrator.runner, claude_agent_sdk",
        ),
    }
    raw = out_dir / "resume-pyspy.txt"
    await asyncio.sleep(settle)
    with trace.pyspy(server.pid, raw):
        sample = await cold_resume(client, server, tracer, sid, "Profiled resume.")
    await client.suspend(sid)
    result["profiled_resume"] = asdict(sample)
    if raw.exists():
        result["pyspy_file"] = str(raw)
        result["pyspy"] = trace.summarize_pyspy(raw)
    # Last: a standalone restore takes a lease of its own.
    result["standalone_restore"] = await asyncio.to_thread(
        trace.standalone_restore, server.target, sid, root / "probe-restore-1"
    )
    restore_raw = out_dir / "restore-pyspy.txt"
    result["standalone_restore_pyspy"] = await asyncio.to_thread(
        trace.standalone_restore, server.target, sid, root / "probe-restore-2", restore_raw
    )
    if restore_raw.exists():
        result["restore_pyspy"] = trace.summarize_pyspy(restore_raw)
    return result


# --- CLI ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.bench_resume", description=(__doc__ or "").split("\n\n")[0]
    )
    p.add_argument("--backend", choices=("embedded", "pg-s3"), default="embedded")
    p.add_argument("--repeat", type=int, default=5, help="measured rounds (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first (default 1)")
    p.add_argument("--workspace", choices=sorted(SPECS), default="W1")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--database-url",
        default=default_database_url(),
        help="PostgreSQL for --backend pg-s3 (a fresh schema is created and dropped)",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=30.0,
        help="seconds between a suspend and the next resume (default 30)",
    )
    p.add_argument(
        "--quiet-cores",
        type=float,
        default=0.5,
        help="before each round, wait until the box is under this many busy cores (default 0.5)",
    )
    p.add_argument(
        "--quiet-wait", type=float, default=60.0, help="max seconds to wait for it (default 60)"
    )
    p.add_argument("--no-check", action="store_true", help="skip the W1 check after each resume")
    p.add_argument("--profile", type=Path, default=None, help="profile into DIR (extra resume)")
    p.add_argument("--workdir", type=Path, default=None, help="temp dir (default: a new one)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir")
    p.add_argument("--output", type=Path, default=None, help="JSON path")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be ≥ 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="sessiond-bench-resume-", dir=args.workdir))
    try:
        run = asyncio.run(run_bench(args, root))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept {root}", file=sys.stderr)
    text_out, data = report(args, run)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d-%H%M%S")
    out = args.output or RESULTS_DIR / f"resume-{stamp}-{args.backend}.json"
    write_json(out, data)
    print(text_out)
    if run.profile:
        print()
        print(profile_text(run.profile))
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
