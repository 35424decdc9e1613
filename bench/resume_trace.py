"""Where the time of a resume goes, seen from outside the server: a
``/proc`` poller that timestamps the processes a turn starts (hydrator
``restore`` / ``run``, the Claude Code CLI), interpreter start-up probes, and
a summary of a ``py-spy --subprocesses`` recording.

Nothing here touches the server: it only reads ``/proc`` and runs probes.
All times are ``CLOCK_BOOTTIME`` seconds, the clock ``/proc/<pid>/stat``
start times are counted in (resolution: one clock tick, 10 ms).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def now() -> float:
    """The benchmark's clock: comparable with process start times."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


@dataclass
class TracedProcess:
    pid: int
    ppid: int
    started: float  # from /proc/<pid>/stat (tick resolution)
    first_seen: float
    gone: float | None = None  # first poll that found it exited (or a zombie)
    argv: list[str] = field(default_factory=list)
    # restore | restore-child | run | snapshot | cli | server | other
    kind: str = "other"
    # (time, user + system CPU seconds), one entry per change of the CPU
    # time (tick resolution); a zombie's last entry is its total.
    cpu: list[tuple[float, float]] = field(default_factory=list)

    def cpu_at(self, t: float) -> float:
        """CPU seconds used up to ``t`` (the last sample at or before it)."""
        used = 0.0
        for when, value in self.cpu:
            if when > t:
                break
            used = value
        return used


def classify(argv: Sequence[str]) -> str:
    """``sessiond-hydrator <cmd>`` or ``python -m sessiond.hydrator <cmd>``
    (directly or behind the local provider's rlimit wrapper) → ``<cmd>``;
    the bundled ``claude`` binary → ``cli``."""
    for i, arg in enumerate(argv[:-1]):
        if os.path.basename(arg) == "sessiond-hydrator" or (
            arg == "sessiond.hydrator" and i > 0 and argv[i - 1] == "-m"
        ):
            return argv[i + 1]
    if argv and os.path.basename(argv[0]) == "claude":
        return "cli"
    return "other"


def _stat(pid: int) -> tuple[str, int, float, float] | None:
    """(state, ppid, start time, CPU seconds) of ``pid``."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK
    return fields[0], int(fields[1]), int(fields[19]) / _CLK_TCK, cpu


def _argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


class ProcessTracer:
    """Polls ``/proc`` every ``interval`` seconds on a daemon thread and
    records every descendant of ``root`` with its start and exit times.

    A process's command line is re-read during its first 2 s: right after
    ``fork`` it still shows its parent's, and the local provider's rlimit
    wrapper ``exec``s the real command. Cost per poll: one ``listdir
    /proc`` plus a ``stat`` read per live traced process.
    """

    def __init__(self, root: int, interval: float = 0.005) -> None:
        self._root = root
        self._interval = interval
        self._seen: set[int] = set()
        self._procs: dict[int, TracedProcess] = {}
        self._history: list[TracedProcess] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="proc-tracer", daemon=True)

    def start(self) -> ProcessTracer:
        self._seen = {int(p) for p in os.listdir("/proc") if p.isdigit()}
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.poll()

    def poll(self) -> None:
        t = now()
        pids = {int(p) for p in os.listdir("/proc") if p.isdigit()}
        with self._lock:
            tracked = {p.pid for p in self._procs.values() if p.gone is None} | {self._root}
            for pid in sorted(pids - self._seen):
                self._seen.add(pid)
                st = _stat(pid)
                if st is None or st[1] not in tracked:
                    continue
                proc = TracedProcess(pid=pid, ppid=st[1], started=st[2], first_seen=t)
                self._procs[pid] = proc
                self._history.append(proc)
                tracked.add(pid)
            for proc in self._procs.values():
                if proc.gone is not None:
                    continue
                st = _stat(proc.pid) if proc.pid in pids else None
                if st is None or abs(st[2] - proc.started) > 0.02:
                    proc.gone = t
                    continue
                if not proc.cpu or proc.cpu[-1][1] != st[3]:
                    proc.cpu.append((t, st[3]))
                if st[0] in ("Z", "X"):
                    proc.gone = t
                    continue
                # Re-read for a while: a fork shows its parent's command
                # line until it execs (the CLI's would read "… run …").
                if t - proc.first_seen < 2.0:
                    proc.argv = _argv(proc.pid) or proc.argv
                    proc.kind = classify(proc.argv)
                    parent = self._procs.get(proc.ppid)
                    if proc.ppid == self._root and "sessiond.server" in proc.argv:
                        proc.kind = "server"
                    elif proc.kind == "other" and parent and parent.kind == "restore":
                        proc.kind = "restore-child"  # e.g. the SDK project-key child
            # Keep the live map small; history keeps everything.
            for pid in [p.pid for p in self._procs.values() if p.gone is not None]:
                del self._procs[pid]

    def of_kind(self, kind: str) -> list[TracedProcess]:
        with self._lock:
            return [p for p in self._history if p.kind == kind]

    def started_between(self, t0: float, t1: float) -> list[TracedProcess]:
        """Processes that started in ``[t0 - one tick, t1]``, oldest first."""
        slack = 1 / _CLK_TCK
        with self._lock:
            return [p for p in self._history if t0 - slack <= p.started <= t1]


def _span(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(b - a, 4)


def resume_timeline(
    procs: Sequence[TracedProcess],
    server: TracedProcess | None,
    t0: float,
    first_message: float,
) -> dict[str, float | None]:
    """Phases of one cold resume from its processes, in wall seconds, and
    the CPU seconds spent in them (``cpu_*``); ``None`` when a process was
    not seen. ``t0`` is the Query call."""
    restore = next((p for p in procs if p.kind == "restore"), None)
    run = next((p for p in procs if p.kind == "run"), None)
    cli = next((p for p in procs if p.kind == "cli" and run and p.ppid == run.pid), None)
    kids = [p for p in procs if p.kind == "restore-child" and restore and p.ppid == restore.pid]
    r_start, r_end = (restore.started, restore.gone) if restore else (None, None)
    run_start = run.started if run else None
    cli_start = cli.started if cli else None
    out = {
        "call_to_restore_start": _span(t0, r_start),
        "restore_process": _span(r_start, r_end),
        "restore_end_to_runner_start": _span(r_end, run_start),
        "runner_start_to_cli_start": _span(run_start, cli_start),
        "cli_start_to_first_message": _span(cli_start, first_message),
        "restore_children": _span(
            min((k.started for k in kids), default=None),
            max((k.gone or first_message for k in kids), default=None),
        ),
        "cpu_restore": restore.cpu_at(float("inf")) if restore else None,
        "cpu_restore_children": round(sum(k.cpu_at(float("inf")) for k in kids), 3),
        "cpu_server_call_to_restore_end": (
            round(server.cpu_at(r_end) - server.cpu_at(t0), 3) if server and r_end else None
        ),
        "cpu_runner_to_cli_start": run.cpu_at(cli.first_seen) if run and cli else None,
        "cpu_runner_to_first_message": run.cpu_at(first_message) if run else None,
        "cpu_cli_to_first_message": cli.cpu_at(first_message) if cli else None,
    }
    return out


def bare_timeline(
    procs: Sequence[TracedProcess], t0: float, first_message: float
) -> dict[str, float | None]:
    cli = next((p for p in procs if p.kind == "cli"), None)
    return {
        "call_to_cli_start": _span(t0, cli.started if cli else None),
        "cli_start_to_first_message": _span(cli.started if cli else None, first_message),
        "cpu_cli_to_first_message": cli.cpu_at(first_message) if cli else None,
    }


def as_dicts(procs: Sequence[TracedProcess], t0: float) -> list[dict[str, Any]]:
    """Processes of interest relative to ``t0``, for the JSON."""
    out = []
    for p in procs:
        if p.kind == "other":
            continue
        d = asdict(p)
        d.pop("cpu")
        d["cpu_total"] = p.cpu[-1][1] if p.cpu else None
        d["argv"] = p.argv[:1] + [a for a in p.argv[1:4]]
        d["started"] = round(p.started - t0, 4)
        d["first_seen"] = round(p.first_seen - t0, 4)
        d["gone"] = None if p.gone is None else round(p.gone - t0, 4)
        out.append(d)
    return out


# --- start-up probes -------------------------------------------------------------

STARTUP_PROBES: dict[str, list[str]] = {
    "python -I -S -c pass (the local provider's rlimit wrapper)": ["-I", "-S", "-c", "pass"],
    "python -c pass": ["-c", "pass"],
    "import sessiond.hydrator.cli (restore, run: before any work)": [
        "-c",
        "import sessiond.hydrator.cli",
    ],
    "import sessiond.hydrator.restore": ["-c", "import sessiond.hydrator.restore"],
    "import claude_agent_sdk": ["-c", "import claude_agent_sdk"],
    "import sessiond.hydrator.cli + runner + claude_agent_sdk (run)": [
        "-c",
        "import sessiond.hydrator.cli, sessiond.hydrator.runner, claude_agent_sdk",
    ],
}


def startup_probes(repeat: int = 5) -> dict[str, float]:
    """Median wall seconds of each probe in a fresh interpreter (warm cache)."""
    out = {}
    for name, args in STARTUP_PROBES.items():
        times = []
        for _ in range(repeat + 1):
            t = time.perf_counter()
            subprocess.run([sys.executable, *args], check=True, stdin=subprocess.DEVNULL)
            times.append(time.perf_counter() - t)
        out[name] = round(statistics.median(times[1:]), 4)
    return out


def import_times(module_line: str, top: int = 12) -> list[tuple[str, float]]:
    """``-X importtime``: the slowest top-level imports (cumulative s)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", module_line],
        check=True,
        capture_output=True,
        text=True,
    )
    rows = []
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\s*)(\S+)", line)
        if m and len(m.group(2)) <= 2:  # the imports the line names and their direct ones
            rows.append((m.group(3), int(m.group(1)) / 1e6))
    rows.sort(key=lambda r: -r[1])
    return rows[:top]


def standalone_restore(
    server: str, session_id: str, target: Path, pyspy_out: Path | None = None
) -> dict[str, Any]:
    """``python -m sessiond.hydrator restore`` of the session's latest
    snapshot into the fresh directory ``target``, as the server runs it
    but started from here (no rlimit wrapper; takes its own lease, so run
    it last): wall seconds, CPU seconds of the process, and the restore's
    own ``seconds`` (the work after start-up and imports). Under py-spy
    when ``pyspy_out`` is given (py-spy starts the process: no attach race)."""
    import resource

    (target / "work").mkdir(parents=True)
    (target / "config").mkdir()
    cmd = [
        sys.executable, "-m", "sessiond.hydrator", "restore",
        "--server", server, "--session", session_id,
        "--cwd", str(target / "work"), "--config-dir", str(target / "config"),
        "--progress", "none",
    ]  # fmt: skip
    if pyspy_out is not None:
        spy = ["py-spy", "record", "--rate", "200", "--format", "raw", "-o", str(pyspy_out)]
        cmd = [*spy, "--", *cmd]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"standalone restore failed: {proc.stderr[-500:]}")
    report = {}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            report = json.loads(line)
            break
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "wall_seconds": round(wall, 3),
        "cpu_seconds": round(cpu, 3),
        "restore_seconds": report.get("seconds"),
        "files": report.get("files"),
        "bytes": report.get("bytes"),
        "under_pyspy": pyspy_out is not None,
    }


# --- py-spy ---------------------------------------------------------------------


def pyspy_command(pid: int, out: Path, rate: int = 200) -> list[str]:
    """CPU samples (not idle) of the server and every child it starts."""
    where = ["--pid", str(pid), "--subprocesses", "--rate", str(rate)]
    return ["py-spy", "record", *where, "--nonblocking", "--format", "raw", "-o", str(out)]


_PROCESS_FRAME = re.compile(r'process (\d+):"(.*?)";', re.DOTALL)
# Frames every stack passes through: left out of the "top" lists.
_PLUMBING = re.compile(
    r"^(_find_and_load|_load_unlocked|_call_with_frames_removed|_handle_fromlist"
    r"|\S*exec_module|_run_module_as_main|_run_code|run \(asyncio|Runner\.run"
    r"|BaseEventLoop\.|Handle\._run|Thread\.|_worker|_WorkItem\.run|<module> \(<)"
)


def summarize_pyspy(path: Path, rate: int = 200, top: int = 12) -> dict[str, Any]:
    """Per process kind: CPU seconds sampled and the functions with the most
    inclusive samples (line numbers dropped). py-spy writes each process's
    command line as first frame, newlines included (the local provider's
    rlimit wrapper is a multi-line ``-c`` script), so records are split on
    that frame rather than on lines."""
    total: collections.Counter[str] = collections.Counter()
    incl: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    text = path.read_text(errors="replace")
    for record in re.split(r"\n(?=process \d+:\")", text.strip()):
        # The process frames come first, outermost (the server) to innermost.
        cmdline, rest = "", record
        while m := _PROCESS_FRAME.match(rest):
            cmdline, rest = m.group(2), rest[m.end() :]
        stack, _, n_text = rest.rpartition(" ")
        if last := re.fullmatch(r'process \d+:"(.*)"', stack, re.DOTALL):
            cmdline, stack = last.group(1), ""  # a sample without Python frames
        if not cmdline or not n_text.isdigit():
            continue
        kind = classify(cmdline.split())
        if kind == "other" and "sessiond.server" in cmdline:
            kind = "server"
        n = int(n_text)
        total[kind] += n
        for name in {re.sub(r":\d+\)", ")", f) for f in stack.split(";") if f}:
            if _PLUMBING.match(name):
                continue
            incl[kind][name] += n
    return {
        kind: {
            "cpu_seconds": round(total[kind] / rate, 3),
            "top": [(name, round(n / rate, 3)) for name, n in incl[kind].most_common(top)],
        }
        for kind in total
    }


@contextlib.contextmanager
def pyspy(pid: int, out: Path, rate: int = 200) -> Any:
    """Record while the block runs; stopped with SIGINT by PID (py-spy then
    writes its file)."""
    import signal

    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.with_suffix(".log").open("wb")
    cmd = pyspy_command(pid, out, rate)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    time.sleep(0.5)  # attach before the work starts
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()
