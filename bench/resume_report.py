"""Results of the resume benchmark (:mod:`bench.bench_resume`): the
samples, the summary against the target, the markdown tables, the machine
description and the JSON document."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from .common import fmt, markdown_table, percentile

TARGET_SECONDS = 1.0  # cold resume ≤ bare CLI + 1 s


@dataclass
class Sample:
    """One turn, seconds from the call."""

    first_message: float
    first_type: str
    result: float
    end: float
    statuses: dict[str, float] = field(default_factory=dict)
    timeline: dict[str, float | None] = field(default_factory=dict)
    hydrated_seconds: float | None = None
    suspend_seconds: float | None = None
    machine_busy_cores: float = 0.0
    processes: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Run:
    backend: str
    cold: list[Sample] = field(default_factory=list)
    bare: list[Sample] = field(default_factory=list)
    background_cores: list[float] = field(default_factory=list)
    setup: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)


# --- report --------------------------------------------------------------------------


def _stats(values: Sequence[float | None]) -> tuple[float, float]:
    clean = sorted(v for v in values if v is not None)
    return percentile(clean, 50), percentile(clean, 90)


_COLD_CPU_PATH = (
    "cpu_restore",
    "cpu_restore_children",
    "cpu_runner_to_cli_start",
    "cpu_cli_to_first_message",
)


def _cpu_path(sample: Sample, keys: Sequence[str]) -> float | None:
    """CPU seconds the sandbox's processes used up to the first message
    (restore and its children, the runner, the CLI; the server's own is
    reported apart): the work a resume costs, which other load on the box
    barely moves, unlike wall time."""
    values = [sample.timeline.get(k) for k in keys]
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def summarize(run: Run) -> dict[str, Any]:
    cold = [s.first_message for s in run.cold]
    bare = [s.first_message for s in run.bare]
    diffs = [c - b for c, b in zip(cold, bare, strict=True)]
    med_diff, p90_diff = _stats(diffs)
    cold_cpu = [_cpu_path(s, _COLD_CPU_PATH) for s in run.cold]
    bare_cpu = [_cpu_path(s, ("cpu_cli_to_first_message",)) for s in run.bare]
    cpu_diffs = [
        None if c is None or b is None else c - b for c, b in zip(cold_cpu, bare_cpu, strict=True)
    ]
    return {
        "cold_cpu_path": _stats(cold_cpu),
        "bare_cpu_path": _stats(bare_cpu),
        "cpu_path_difference": _stats(cpu_diffs),
        "cold_first_message": _stats(cold),
        "bare_first_message": _stats(bare),
        "difference_per_round": (med_diff, p90_diff),
        "difference_of_medians": _stats(cold)[0] - _stats(bare)[0],
        "cold_result": _stats([s.result for s in run.cold]),
        "bare_result": _stats([s.result for s in run.bare]),
        "cold_end": _stats([s.end for s in run.cold]),
        "suspend": _stats([s.suspend_seconds for s in run.cold]),
        "target_met_median": med_diff <= TARGET_SECONDS,
        "target_met_p90": p90_diff <= TARGET_SECONDS,
    }


def figures_table(summary: dict[str, Any]) -> str:
    def row(name: str, key: str, signed: bool = False) -> list[str]:
        def f(v: float) -> str:
            return f"{v:+.3f}" if signed and not math.isnan(v) else fmt(v, 3)

        med, p90 = summary[key]
        return [name, f(med), f(p90)]

    ok = "✓" if summary["target_met_median"] else "✗"
    ok90 = "✓" if summary["target_met_p90"] else "✗"
    med, p90 = summary["difference_per_round"]
    rows = [
        row("cold resume: Query → first SdkMessage", "cold_first_message"),
        row("bare CLI, W1 in place: query() → first message", "bare_first_message"),
        row("difference (cold − bare, per round)", "difference_per_round", signed=True),
        [f"target: difference ≤ +{TARGET_SECONDS:.0f} s", f"{ok} {med:+.2f}", f"{ok90} {p90:+.2f}"],
        row("cold resume: Query → result", "cold_result"),
        row("bare CLI: query() → result", "bare_result"),
        row("cold resume: Query → end of stream", "cold_end"),
        row("Suspend (snapshot + destroy), for reference", "suspend"),
        row("CPU s of the sandbox's processes → first message: cold", "cold_cpu_path"),
        row("CPU s of the CLI → first message: bare", "bare_cpu_path"),
        row("CPU s difference (cold − bare, per round)", "cpu_path_difference", signed=True),
    ]
    return markdown_table(["seconds", "median", "p90"], rows)


# wall-time key → (description, CPU key or None)
_COLD_PHASES = {
    "call_to_restore_start": (
        "Query → `restore` process starts (lease, sandbox create, exec)",
        None,
    ),
    "restore_process": ("`sessiond-hydrator restore` process, start → exit", "cpu_restore"),
    "restore_children": (
        "… its child processes (the SDK project-key child), start → exit",
        "cpu_restore_children",
    ),
    "restore_end_to_runner_start": (
        "restore exit → `run` process starts (re-key, state, exec)",
        None,
    ),
    "runner_start_to_cli_start": (
        "`run` start → CLI spawned (interpreter, imports, store load)",
        "cpu_runner_to_cli_start",
    ),
    "cli_start_to_first_message": (
        "CLI spawned → first SdkMessage at the client",
        "cpu_cli_to_first_message",
    ),
}
_BARE_PHASES = {
    "call_to_cli_start": ("query() → CLI spawned", None),
    "cli_start_to_first_message": ("CLI spawned → first message", "cpu_cli_to_first_message"),
}


def phases_table(run: Run) -> str:
    """Wall seconds per phase and the CPU seconds of the process doing it
    (median; the CPU figure barely moves with other load on the box)."""

    def median(samples: Sequence[Sample], key: str | None) -> str:
        if key is None:
            return "–"
        return fmt(_stats([s.timeline.get(key) for s in samples])[0], 2)

    rows = []
    for path, samples, phases in (
        ("cold", run.cold, _COLD_PHASES),
        ("bare", run.bare, _BARE_PHASES),
    ):
        for key, (name, cpu_key) in phases.items():
            med, p90 = _stats([s.timeline.get(key) for s in samples])
            rows.append([path, name, fmt(med, 3), fmt(p90, 3), median(samples, cpu_key)])
        if path == "cold":
            extra = [
                ("server CPU, Query → restore exit", None, "cpu_server_call_to_restore_end"),
                ("server log `hydrated … seconds=` (create → ACTIVE)", "hydrated", None),
                ("Query → PHASE_RUNNING at the client", "running", None),
            ]
            for name, wall, cpu_key in extra:
                if wall == "hydrated":
                    med, p90 = _stats([s.hydrated_seconds for s in samples])
                elif wall:
                    med, p90 = _stats([s.statuses.get(wall) for s in samples])
                else:
                    med = p90 = float("nan")
                rows.append([path, name, fmt(med, 3), fmt(p90, 3), median(samples, cpu_key)])
    headers = ["path", "phase", "wall median s", "wall p90 s", "CPU median s"]
    return markdown_table(headers, rows)


def _source_tree() -> str:
    """``git`` HEAD of the checkout and whether server/hydrator/clients
    differ from it (others may be editing them while the bench runs)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "server", "hydrator", "clients"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head}{' + uncommitted changes' if dirty else ''}" if head else "unknown"


def rounds_table(run: Run) -> str:
    """One row per measured round: how much the box's other load moved it."""
    rows = []
    for i, (c, b, busy) in enumerate(zip(run.cold, run.bare, run.background_cores, strict=True)):
        t = c.timeline
        rows.append(
            [
                str(i + 1),
                fmt(busy, 2),
                fmt(c.first_message, 3),
                fmt(b.first_message, 3),
                f"{c.first_message - b.first_message:+.3f}",
                fmt(t.get("restore_process"), 3),
                fmt(t.get("runner_start_to_cli_start"), 3),
                fmt(_cpu_path(c, _COLD_CPU_PATH), 2),
            ]
        )
    headers = [
        "round",
        "other load (cores)",
        "cold → 1st msg s",
        "bare → 1st msg s",
        "difference s",
        "restore process s",
        "run → CLI s",
        "cold CPU s",
    ]
    return markdown_table(headers, rows)


def machine(run: Run) -> dict[str, Any]:
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "-"

    from claude_agent_sdk._cli_version import __cli_version__

    info: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": platform.processor() or "unknown",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
        "versions": {
            **{
                d: version(d)
                for d in ("sessiond", "claude-agent-sdk", "mcp", "pydantic", "grpcio", "protobuf")
            },
            "claude-code-cli": __cli_version__,
        },
        "storage": run.setup.get("storage", {}),
        "source_tree": _source_tree(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return info


def describe(info: dict[str, Any], run: Run) -> str:
    v = info["versions"]
    ws = run.setup["workspace"]
    other = run.background_cores
    return "\n".join(
        [
            f"- date: {info['date']}; backend: `{run.backend}` ({info['storage'].get('metadata')},"
            f" {info['storage'].get('blobs')})",
            f"- nproc {info['nproc']}; CPU: {info['cpu_model']}; RAM {info['memory_gib']} GiB;"
            f" kernel {info['kernel']}; other load before each round:"
            f" {min(other, default=0):.2f}–{max(other, default=0):.2f} busy cores",
            f"- Python {info['python']}; sessiond {v['sessiond']}; claude-agent-sdk"
            f" {v['claude-agent-sdk']} (CLI {v['claude-code-cli']}); mcp {v['mcp']}; pydantic"
            f" {v['pydantic']}; grpcio {v['grpcio']}; protobuf {v['protobuf']};"
            f" source tree {info['source_tree']}",
            f"- workspace {ws['spec']}: {ws['files']} files, {ws['bytes'] / 2**20:.1f} MiB"
            f" (seeded); {len(run.cold)} measured rounds, {run.setup.get('warmup', 0)} warm-up,"
            f" {run.setup.get('settle', 0):.0f} s between a suspend and the next resume",
        ]
    )


def report(args: argparse.Namespace, run: Run) -> tuple[str, dict[str, Any]]:
    summary = summarize(run)
    info = machine(run)
    text_out = "\n\n".join(
        [
            describe(info, run),
            figures_table(summary),
            phases_table(run),
            rounds_table(run),
        ]
    )
    data = {
        "benchmark": "resume",
        "machine": info,
        "parameters": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "target_seconds": TARGET_SECONDS,
        "summary": summary,
        "setup": {k: v for k, v in run.setup.items() if k != "server_log_tail"},
        "cold": [asdict(s) for s in run.cold],
        "bare": [asdict(s) for s in run.bare],
        "background_cores": run.background_cores,
        "profile": run.profile,
    }
    return text_out, data


def profile_text(prof: dict[str, Any]) -> str:
    if not prof:
        return ""
    lines = ["Interpreter start-up probes (median wall s, fresh process each):", ""]
    lines += [f"- {name}: {secs:.3f}" for name, secs in prof["startup_probes_seconds"].items()]
    lines += ["", "Slowest imports of `run` (-X importtime, cumulative s):", ""]
    lines += [f"- {name}: {secs:.3f}" for name, secs in prof["import_times_run"]]
    for label, key in (
        ("standalone restore", "standalone_restore"),
        ("… under py-spy", "standalone_restore_pyspy"),
    ):
        r = prof.get(key)
        if r:
            lines += [
                "",
                f"{label} of the snapshot: {r['wall_seconds']:.2f} s wall, {r['cpu_seconds']:.2f}"
                f" CPU s; the restore's own seconds (after start-up and imports):"
                f" {r['restore_seconds']}",
            ]
    for title, key in (
        ("resume, server + children", "pyspy"),
        ("standalone restore", "restore_pyspy"),
    ):
        for kind, entry in prof.get(key, {}).items():
            head = f"py-spy ({title}), {kind}: {entry['cpu_seconds']:.2f} CPU s sampled; top:"
            lines += ["", head]
            lines += [f"  - {secs:.2f}  {name}" for name, secs in entry["top"]]
    return "\n".join(lines)
